#!/usr/bin/env bash
# Sets up, builds and runs the demonstration.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SEQPAR_BUILD_DIR:-$root/build}
"$root/scripts/setup.sh"
cmake --build "$build" --target exchange_demo
"$build/examples/exchange_demo"
