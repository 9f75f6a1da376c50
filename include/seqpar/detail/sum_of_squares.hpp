//! @file sum_of_squares.hpp
//! The sum of the squares of n floats, in double: a host loop for host memory, or
//! cub::DeviceReduce::TransformReduce on a stream for device memory (result left in device memory).
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/error.hpp>
#include <seqpar/memory_space.hpp>

#if SEQPAR_CUDA_COMPILER
#include <cub/device/device_reduce.cuh>
#include <cuda/std/functional>
#endif

#include <cstddef>
#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! x * x in double.
struct square_in_double {
  //! The square of x.
  SEQPAR_HOST_DEVICE double operator()(float x) const { return static_cast<double>(x) * x; }
};

//! *out = the sum of x[i]^2 for i < n, with `out` in the same memory as `x`. Device memory needs the
//! calling file compiled by nvcc (a host compiler throws errc::unsupported); the scratch comes
//! from the stream-ordered pool and the result is ready when `stream` reaches it.
inline void sum_of_squares(memory_space where, const float* x, std::int64_t n, double* out, stream_t stream) {
  if (where == memory_space::host) {
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
    *out = sum;
    return;
  }
#if SEQPAR_CUDA_COMPILER
  std::size_t bytes = 0;
  SEQPAR_CUDA_TRY(cub::DeviceReduce::TransformReduce(nullptr, bytes, x, out, n, ::cuda::std::plus<double>{},
                                                     square_in_double{}, 0.0, stream));
  void* scratch = nullptr;
  SEQPAR_CUDA_TRY(cudaMallocAsync(&scratch, bytes, stream));
  const cudaError_t status = cub::DeviceReduce::TransformReduce(scratch, bytes, x, out, n, ::cuda::std::plus<double>{},
                                                                square_in_double{}, 0.0, stream);
  cudaFreeAsync(scratch, stream);
  SEQPAR_CUDA_TRY(status);
#else
  (void)x, (void)n, (void)out, (void)stream;
  SEQPAR_FAIL(errc::unsupported, "device memory: a reduction needs the calling file compiled by nvcc");
#endif
}

SEQPAR_DETAIL_KERNEL_NAMESPACE_END
