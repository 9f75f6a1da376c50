#!/usr/bin/env bash
# Sets up, builds everything and runs every test. GPU tests report "skipped" without a GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SEQPAR_BUILD_DIR:-$root/build}
"$root/scripts/setup.sh"
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure
