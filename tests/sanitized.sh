#!/usr/bin/env bash
# The whole test suite again on an AddressSanitizer + UndefinedBehaviorSanitizer
# build: the compiler, the runtime, and the executables the compiler links
# (with the runtime's -fsanitize flags, recorded in lib/xentcc_rt.link). Any
# sanitizer report fails the test it happens in. Leak reports are off for the
# compiler, which never frees its IR, and on for the generated executables.
#   tests/sanitized.sh [SOURCE_DIR [BUILD_DIR]]    (default: . and build/asan)
set -euo pipefail
src=${1:-$(cd "$(dirname "$0")/.." && pwd)}
out=${2:-$src/build/asan}
mkdir -p "$out"
start=$SECONDS
cmake -S "$src" -B "$out" -DXENTCC_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
if ! cmake --build "$out" -j"$(nproc)" >"$out/build.log" 2>&1; then
  grep -E 'error|Error' "$out/build.log" >&2 || cat "$out/build.log" >&2
  echo "sanitized: build failed; the full log is $out/build.log" >&2
  exit 1
fi
built=$SECONDS
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
cd "$out"
ctest --output-on-failure -j"$(nproc)"
echo "sanitized: build $((built - start)) s, tests $((SECONDS - built)) s"
