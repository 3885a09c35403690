#!/bin/bash
# After the f=4, z=4 deterministic MSE first stage (ae_gate.py, 1200 steps) finished: the UNet + text stage.
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1

nice -n 5 /work/main/.venv/bin/python prototypes/shapes/stage2.py --vae /tmp/shapes_ae_f4z4.pt --f 4 --z 4 --steps 650 \
  --batch 64 --eval-n 100 --eval-steps 20 --sampler dpmpp_2m > prototypes/shapes/logs/stage2_f4_z4_650.log 2>&1
