#!/usr/bin/env bash
# Re-execute every notebook under notebooks/ in place (outputs are committed), printing the time each took.
#
#   scripts/run_notebooks.sh                 # all notebooks, exercises included
#   scripts/run_notebooks.sh notebooks/04_ddim.ipynb ...   # only the ones named
#
# Run from anywhere, inside the project's environment (jupyter and the dev extra installed).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -gt 0 ]; then
    notebooks=("$@")
else
    mapfile -t notebooks < <(find notebooks -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort)
fi

total_start=$(date +%s)
for nb in "${notebooks[@]}"; do
    start=$(date +%s)
    jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 "$nb" 2>/dev/null
    end=$(date +%s)
    printf '%-60s %4ds  %6d KB\n' "$nb" $((end - start)) $(( $(wc -c < "$nb") / 1024 ))
done
echo "all ${#notebooks[@]} notebooks re-executed in $(( $(date +%s) - total_start ))s"
