#!/usr/bin/env bash
# Sets up, builds everything and runs every test. GPU tests report "skipped" without a GPU. Then
# the sanitizer lanes: the host tests and a smoke subset of the kernel emulation built again with
# AddressSanitizer + UndefinedBehaviorSanitizer, then with ThreadSanitizer (the in-process
# communicator runs ranks as threads), each in a build folder of its own beside the main one.
# SEQPAR_SANITIZERS="" skips the lanes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SEQPAR_BUILD_DIR:-$root/build}
"$root/scripts/setup.sh"
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure

for lane in ${SEQPAR_SANITIZERS-address,undefined thread}; do
  dir=$build-sanitize-${lane%%,*}
  echo "test: sanitizer lane -fsanitize=$lane in $dir"
  SEQPAR_BUILD_DIR=$dir SEQPAR_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Sanitize -DSEQPAR_SANITIZE=$lane \
    -DSEQPAR_ENABLE_CUDA=OFF -DSEQPAR_ENABLE_MPI=OFF -DSEQPAR_BUILD_BENCHMARKS=OFF -DSEQPAR_BUILD_EXAMPLES=OFF \
    -DSEQPAR_INSTALL=OFF" "$root/scripts/setup.sh"
  cmake --build "$dir"
  ctest --test-dir "$dir" --output-on-failure
done
