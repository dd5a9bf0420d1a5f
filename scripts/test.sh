#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: set-up with the
# test-only dependencies, build, then CTest (Check unit tests and the golden
# FileCheck tests through lit).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
cd build
ctest --output-on-failure -j"$(nproc)"
