#!/usr/bin/env bash
# A compiled model's library (xentcc --emit=lib) against PyTorch 1.13 in
# eval mode under torch.no_grad(): single-image latency and batched
# throughput, per model. bench/library.py says how.
#
#   bench/library.sh [--models cifar10,mnist,vgg_small,allconv] [--seconds 3] [--threads 1] [--n 256] [--rounds 3]
#
# Environment: XENTCC (default build/bin/xentcc), PYTHON (default
# /usr/bin/python3). Tables go to stdout and build/bench/library.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "${PYTHON:-/usr/bin/python3}" "$root/bench/library.py" "$@"
