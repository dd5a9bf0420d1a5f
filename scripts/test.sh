#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: set-up with the
# test-only dependencies, build, then CTest (Check unit tests and the golden
# FileCheck tests through lit), then the same suite on an ASan+UBSan build of
# the compiler, the runtime and the generated executables (tests/sanitized.sh).
#   scripts/test.sh               everything (what .ci/run runs)
#   scripts/test.sh --no-sanitize the normal build only
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
(cd build && ctest --output-on-failure -j"$(nproc)")
if [[ "${1:-}" != "--no-sanitize" ]]; then
  tests/sanitized.sh "$PWD" "$PWD/build/asan"
fi
