#!/usr/bin/env bash
# Everything that needs a GPU, in one run that fits a short loan of one H100/H200: each part runs
# under its own time limit, and the limits add up to 9 minutes (540 s), inside one 10-minute command:
#   1. the cuda, nccl and cudnn tests (their executables, so a build folder carried from another path works);
#   2. compute-sanitizer memcheck over the cuda tests, and racecheck over the tensor-core kernels'
#      and the pack kernels' tests (shared-memory hazards);
#   3. every GPU benchmark, with the PyTorch comparisons (SDPA, chunked linear attention) in the
#      same run when torch sees the GPU;
# and writes OUT/gpu_check.md: one table (part, command, result, seconds) under the date, the
# device and the commit, with each part's log and each benchmark's JSON beside it.
#
# Usage: scripts/gpu_check.sh OUT [BUILD]
#   OUT    folder for the results (created)
#   BUILD  a build folder to reuse (default build-gpu). Build it where compiling is cheap (sm_90,
#          Release) and carry its executables: tests/cuda/seqpar_{cuda,nccl}_tests and
#          bench/seqpar_*_gpu, bench/seqpar_traffic_bench_nccl (about 15 MiB), with .deps from
#          prepare-deps.sh for libbenchmark. Without them, the script configures and builds BUILD on the
#          spot (-DCMAKE_PREFIX_PATH=.deps/usr, NCCL from NCCL_ROOT or torch's wheel): minutes of the loan.
# Without a GPU it says so and exits 77 (skipped).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: scripts/gpu_check.sh OUT [BUILD]}
build=${2:-$root/build-gpu}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no GPU on this machine (nvidia-smi -L failed); nothing was run"
  exit 77
fi
device=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
table="$out/gpu_check.md"
{
  echo "# gpu_check: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Device: $device. Commit: $commit. Command: scripts/gpu_check.sh $*"
  echo
  echo "| part | command | result | seconds |"
  echo "|---|---|---|---|"
} >"$table"
failures=0

# run NAME LIMIT COMMAND...: runs COMMAND under a time limit, logs it to OUT/NAME.log and adds a row.
run() {
  local name=$1 limit=$2
  shift 2
  local start end rc result
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  end=$(date +%s)
  case $rc in
    0) result=passed ;;
    77) result=skipped ;;
    124 | 137) result="TIMED OUT after ${limit} s" failures=$((failures + 1)) ;;
    *) result="FAILED (exit $rc)" failures=$((failures + 1)) ;;
  esac
  echo "| $name | \`$*\` | $result | $((end - start)) |" >>"$table"
  echo "gpu_check: $name: $result ($((end - start)) s)"
}

# NCCL from NCCL_ROOT or torch's wheel; doctest and Google Benchmark from .deps (prepare-deps.sh).
nccl=${NCCL_ROOT:-$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null || true)}
export LD_LIBRARY_PATH="$root/.deps/usr/lib/x86_64-linux-gnu${nccl:+:$nccl/lib}:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -f "$build/CMakeCache.txt" ] && [ ! -x "$build/tests/cuda/seqpar_cuda_tests" ]; then
  run configure 300 cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCMAKE_PREFIX_PATH="$root/.deps/usr" ${nccl:+-DNCCL_ROOT="$nccl"}
  run build 600 cmake --build "$build" -j "$(nproc)"
fi

cuda_tests=$build/tests/cuda/seqpar_cuda_tests
# 1. Every GPU test (NCCL at one rank: it refuses two ranks on one GPU).
run cuda_tests 90 "$cuda_tests"
run nccl_tests 10 "$build/tests/cuda/seqpar_nccl_tests"
if [ -x "$build/tests/cuda/seqpar_cudnn_tests" ]; then  # built when the cuDNN frontend was found
  run cudnn_tests 20 "$build/tests/cuda/seqpar_cudnn_tests"
fi
# 2. The sanitizers. memcheck over every cuda test; racecheck (far slower) over the kernels that
# share memory between threads: flash, linear_cuda and the all_to_all_heads packing.
if command -v compute-sanitizer >/dev/null; then
  run memcheck 100 compute-sanitizer --tool memcheck --error-exitcode 1 "$cuda_tests"
  run racecheck 50 compute-sanitizer --tool racecheck --error-exitcode 1 "$cuda_tests" \
    '--test-case=flash_attention equals the device reference*,lasp_attention with linear_cuda: o*,all_to_all_heads on the GPU: every element*'
else
  echo "| sanitizers | compute-sanitizer | not found | 0 |" >>"$table"
fi
# 3. The benchmarks, each beside its PyTorch comparison.
bench() {  # bench NAME LIMIT EXECUTABLE [ARGS...]
  local name=$1 limit=$2 exe=$3
  shift 3
  if [ -x "$exe" ]; then
    run "$name" "$limit" "$exe" --benchmark_min_time=0.05 --benchmark_out="$out/$name.json" \
      --benchmark_out_format=json "$@"
  else
    echo "| $name | $exe | not built | 0 |" >>"$table"
  fi
}
bench pack 35 "$build/bench/seqpar_pack_bench_gpu"
bench flash 70 "$build/bench/seqpar_flash_bench_gpu"
bench lasp 35 "$build/bench/seqpar_lasp_bench_gpu"
bench traffic 35 "$build/bench/seqpar_traffic_bench_gpu" '--benchmark_filter=H:8/D:64'
bench traffic_nccl 20 "$build/bench/seqpar_traffic_bench_nccl"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  run torch_sdpa 45 python3 "$root/bench/sdpa_bench.py" --json "$out/torch_sdpa.json"
  run torch_lasp 30 python3 "$root/bench/lasp_torch.py"
else
  echo "| torch | python3 -c 'import torch' | torch without CUDA: comparisons not run | 0 |" >>"$table"
fi

echo >>"$table"
echo "Logs and benchmark JSON: $out. Failed parts: $failures." >>"$table"
cat "$table"
[ "$failures" -eq 0 ]
