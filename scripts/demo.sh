#!/usr/bin/env bash
# Sets up, builds and runs the demonstration.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SEQPAR_BUILD_DIR:-$root/build}
"$root/scripts/setup.sh"
cmake --build "$build" --target seqpar_demo
"$build/examples/seqpar_demo"
