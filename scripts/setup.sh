#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test xentcc, then
# configures and builds it in build/. Idempotent, and quiet when all is there.
#   scripts/setup.sh          build dependencies + build
#   scripts/setup.sh --test   also the test-only dependencies (python3-torch, rsvg-convert)
#   scripts/setup.sh --fuzz   also clang-19 and libFuzzer, for scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config libyaml-dev llvm-19-dev llvm-19-tools libomp-19-dev
          lld-19 check libjpeg-dev libpng-dev zlib1g-dev python3 dataset-fashion-mnist graphviz
          libopenmpi-dev openmpi-bin)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(python3-torch python3-numpy python3-pil python3-yaml librsvg2-bin)
fi
if [[ "${1:-}" == "--fuzz" ]]; then
  packages+=(clang-19 libfuzzer-19-dev libclang-rt-19-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
if ! cmake --build build -j"$(nproc)" >build/build.log 2>&1; then
  grep -E 'error|Error' build/build.log >&2 || cat build/build.log >&2
  echo "setup: build failed; the full log is build/build.log" >&2
  exit 1
fi
