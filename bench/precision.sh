#!/usr/bin/env bash
# float32, bf16 and fp16 training side by side: speed, activation memory
# (the training step's workspace) and where the time goes, per model.
# bench/precision.py says how.
#
#   bench/precision.sh [--models cifar10,vgg_small,allconv] [--rounds 3] [--seconds 4] [--threads 2]
#
# Environment: XENTCC (default build/bin/xentcc), PYTHON (default
# /usr/bin/python3). Tables go to stdout and build/bench/precision.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "${PYTHON:-/usr/bin/python3}" "$root/bench/precision.py" "$@"
