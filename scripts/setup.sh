#!/usr/bin/env bash
# Installs what seqpar's build, tests, examples and benchmarks need from Debian's packages, when
# missing, and configures the build folder (default: build/). Reuses both on a second run.
# The CUDA toolkit (nvcc, CCCL, NCCL) is expected at /usr/local/cuda; without nvcc the host parts
# still build and test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SEQPAR_BUILD_DIR:-$root/build}

packages=(cmake g++ ninja-build doctest-dev libbenchmark-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${SEQPAR_CMAKE_ARGS:-} >/dev/null
echo "setup: configured $build"
