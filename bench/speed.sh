#!/usr/bin/env bash
# xentcc's speed against PyTorch 1.13 in one run on this machine: the FMA
# peak, the seed nets and two modern small CNNs (training and evaluation),
# and a sweep of single convolution layers. bench/speed.py says how.
#
#   bench/speed.sh [--threads N] [--pairs N] [--seconds S] [--quick] [--only seeds|cnns|sweep]
#                  [--isa native|avx2] [--out DIR]
#
# Environment: XENTCC (default build/bin/xentcc), CC (default cc), PYTHON
# (default /usr/bin/python3). Tables go to stdout and build/bench/speed.md
# (DIR/speed.md with --out DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "${PYTHON:-/usr/bin/python3}" "$root/bench/speed.py" "$@"
