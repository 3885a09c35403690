#!/usr/bin/env bash
# Build the browsable book (notebooks + docs, one static HTML site) into _build/book (or the folder given).
#
#   scripts/build_book.sh              # -> _build/book/book/index.html
#   scripts/build_book.sh /tmp/site    # another output folder
#
# Sphinx + myst-nb (configuration: book/conf.py). The notebooks are read in place and not executed: the book
# shows their committed outputs. Formulas are rendered by MathJax, shipped inside the site (no network needed).
# Needs the dev extra (pip install -e ".[dev]"). Warnings are printed (tests/test_book.py fails on those about
# missing link targets, images or documents).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-_build/book}"
python -m sphinx -b html -c book -q . "$out"
echo "book built: $out/book/index.html"
