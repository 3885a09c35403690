#!/bin/bash
# The first-stage configurations, one after another (one thread each, nice 5).
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
nice -n 5 $PY prototypes/shapes/ae_gate.py --f 4 --z 4 --loss mse --kl 0 --steps 1200 --eval-every 200 --save /tmp/shapes_ae_f4z4.pt > prototypes/shapes/logs/ae_f4_z4_mse_det.log 2>&1
nice -n 5 $PY prototypes/shapes/ae_gate.py --f 4 --z 8 --loss mse --kl 0 --steps 1200 --eval-every 200 --save /tmp/shapes_ae_f4z8.pt > prototypes/shapes/logs/ae_f4_z8_mse_det.log 2>&1
nice -n 5 $PY prototypes/shapes/ae_gate.py --f 2 --z 4 --loss mse --kl 0 --steps 900 --eval-every 150 --save /tmp/shapes_ae_f2z4.pt > prototypes/shapes/logs/ae_f2_z4_mse_det.log 2>&1
