#!/usr/bin/env bash
# Installs what seqpar's build, tests, examples and benchmarks need from Debian's packages, when
# missing, and configures the build folder (default: build/). Reuses both on a second run.
# The CUDA toolkit (nvcc, CCCL, NCCL) is expected at /usr/local/cuda; without nvcc the host parts
# still build and test. Prints one line per step; what apt-get and cmake say goes to
# <build>/setup.log, whose last lines are shown when a step fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SEQPAR_BUILD_DIR:-$root/build}
mkdir -p "$build"
log=$build/setup.log
: >"$log"

# Runs a command with its output appended to the log; on failure names the log, shows its tail and exits.
logged() {
  if ! "$@" >>"$log" 2>&1; then
    echo "setup: failed: $* (full output in $log); its last lines:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}

packages=(cmake g++ ninja-build doctest-dev libbenchmark-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} ..."
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  logged $sudo apt-get update -qq
  logged $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
# shellcheck disable=SC2086  # SEQPAR_CMAKE_ARGS holds several arguments
# Tests, benchmarks and MPI asked for by name: a missing dependency stops here instead of leaving them out.
logged cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQPAR_BUILD_TESTS=ON \
  -DSEQPAR_BUILD_BENCHMARKS=ON -DSEQPAR_ENABLE_MPI=ON ${SEQPAR_CMAKE_ARGS:-}
echo "setup: configured $build"
