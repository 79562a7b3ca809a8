#!/usr/bin/env bash
# The test command (README, .ci/run): set-up, build, then every test suite through CTest.
# Tests read the real models and data in ../shared (FLEXQUANT_SHARED overrides the location).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
ctest --test-dir build --output-on-failure
