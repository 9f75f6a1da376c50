// What the GPU benchmarks share: device buffers, CUDA-event timing and a main that says
// "skipped" (exit 77) without a GPU.
#pragma once

#include <seqpar/cuda_check.hpp>

#include <benchmark/benchmark.h>

#include <cstdio>

namespace seqpar_bench {

//! n elements of T in device memory.
template <class T>
struct device_array {
  explicit device_array(std::size_t n) { SEQPAR_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&p), n * sizeof(T))); }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
  ~device_array() { cudaFree(p); }
  T* p = nullptr;
};

//! Times step() per iteration with CUDA events on the legacy default stream (one warm-up first).
template <class Step>
void timed_on_gpu(benchmark::State& state, Step&& step) {
  cudaEvent_t start, stop;
  SEQPAR_CUDA_TRY(cudaEventCreate(&start));
  SEQPAR_CUDA_TRY(cudaEventCreate(&stop));
  step();
  for (auto _ : state) {
    SEQPAR_CUDA_TRY(cudaEventRecord(start));
    step();
    SEQPAR_CUDA_TRY(cudaEventRecord(stop));
    SEQPAR_CUDA_TRY(cudaEventSynchronize(stop));
    float ms = 0;
    SEQPAR_CUDA_TRY(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

//! Runs the registered benchmarks when a GPU is present; otherwise says so and returns 77.
inline int run_if_gpu(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device\n");
    return 77;
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace seqpar_bench
