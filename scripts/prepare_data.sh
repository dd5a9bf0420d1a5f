#!/usr/bin/env bash
# Unpacks the real data sets from ../shared/data into build/data (never into
# the source tree). Idempotent: an archive already unpacked is left alone.
# Prints what it has; exits 0 even when ../shared/data is absent, so callers
# can skip what they lack.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${XENTCC_SHARED_DATA:-$root/../shared/data}
out=${1:-$root/build/data}
mkdir -p "$out"

unpack() { # archive marker
  local archive=$shared/$1 marker=$out/$2
  if [[ -e $marker ]]; then return; fi
  if [[ ! -f $archive ]]; then
    echo "prepare_data: $archive not found; skipping" >&2
    return
  fi
  echo "prepare_data: unpacking $1 into $out" >&2
  tar -xzf "$archive" -C "$out"
}

unpack cifar10-jpg.tar.gz cifar10/test
unpack catdog-kaggle-1600.tar.gz catdog/train
if [[ -d $shared/mnist-10k && ! -e $out/mnist ]]; then
  ln -s "$shared/mnist-10k" "$out/mnist"
fi
if [[ -d /usr/share/datasets/fashion-mnist && ! -e $out/fashion-mnist ]]; then
  ln -s /usr/share/datasets/fashion-mnist "$out/fashion-mnist"
fi
ls "$out"
