#!/usr/bin/env bash
# Builds the compiler again with AddressSanitizer and UndefinedBehaviorSanitizer
# and runs the golden tests that feed it bad input (malformed YAML and IR,
# verifier failures): each must end in a clean error, never in a sanitizer
# report or a crash.
#   tests/sanitized.sh SOURCE_DIR BUILD_DIR LIT_PY
set -euo pipefail
src=$1 out=$2 lit=$3
cmake -S "$src" -B "$out" -DXENTCC_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
if ! cmake --build "$out" -j2 --target xentcc xentcc-opt >"$out/build.log" 2>&1; then
  cat "$out/build.log"
  exit 1
fi
python3 "$lit" -sv "$out/tests" --filter 'frontend/|ir/|passes/verify/'
