#!/usr/bin/env bash
# Unpacks the real data sets into build/data (never into the source tree):
# the CIFAR-10 JPEGs and the 1,600 Kaggle cat and dog photos from the
# archives in $XENTCC_SHARED_DATA (default: ../shared/data beside the clone),
# and links MNIST and Debian's Fashion-MNIST when they are there.
#
#   scripts/prepare_data.sh [OUT]      OUT defaults to build/data
#
# Idempotent: a data set already unpacked is left alone. An archive is
# unpacked into a temporary directory beside OUT's data and moved into place
# whole, so an interrupted run leaves nothing half-written. Exits 1, naming
# the missing archives and the variable to set, when an archive is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${XENTCC_SHARED_DATA:-$root/../shared/data}
out=${1:-$root/build/data}
mkdir -p "$out"

missing=()
unpack() { # archive folder marker model
  local archive=$shared/$1 dir=$out/$2 marker=$out/$3
  if [[ -e $marker ]]; then return; fi
  if [[ ! -f $archive ]]; then
    missing+=("$1 (for $4)")
    return
  fi
  if [[ -e $dir ]]; then
    echo "prepare_data: error: $dir exists but has no $3; remove it and run again" >&2
    exit 1
  fi
  echo "prepare_data: unpacking $1 into $out" >&2
  local tmp
  tmp=$(mktemp -d "$out/.prepare_data.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  tar -xzf "$archive" -C "$tmp"
  if [[ ! -e $tmp/$3 ]]; then
    echo "prepare_data: error: $archive holds no $3; is it the right archive?" >&2
    exit 1
  fi
  mv "$tmp/$2" "$dir"
  rm -rf "$tmp"
  trap - EXIT
}

unpack cifar10-jpg.tar.gz cifar10 cifar10/test models/cifar10.yaml
unpack catdog-kaggle-1600.tar.gz catdog catdog/train models/catdog.yaml
if [[ -d $shared/mnist-10k && ! -e $out/mnist ]]; then
  ln -s "$shared/mnist-10k" "$out/mnist"
fi
if [[ -d /usr/share/datasets/fashion-mnist && ! -e $out/fashion-mnist ]]; then
  ln -s /usr/share/datasets/fashion-mnist "$out/fashion-mnist"
fi

if ((${#missing[@]})); then
  {
    echo "prepare_data: error: data set archives not found in $shared:"
    printf '  %s\n' "${missing[@]}"
    echo "hint: set XENTCC_SHARED_DATA to the directory that holds them, e.g."
    echo "  XENTCC_SHARED_DATA=/path/to/data scripts/prepare_data.sh"
  } >&2
  exit 1
fi
ls "$out"
