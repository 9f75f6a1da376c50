//! @file for_each_index.hpp
//! One element-wise body, two executors: op(i) for every i < n, as a host loop for host memory or
//! as cub::DeviceFor::Bulk on a stream for device memory (or by a launcher that says how, with
//! launch.for_each_index(n, op, stream)). The bodies are SEQPAR_HOST_DEVICE functors, so the host
//! tests run the very code the device runs.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/error.hpp>
#include <seqpar/memory_space.hpp>
#include <seqpar/policy/detail/launcher.cuh>

#if SEQPAR_CUDA_COMPILER
#include <cub/device/device_for.cuh>
#endif

#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! Runs op(i) for i in [0, n): a loop on the calling thread for host memory; for device memory
//! launch.for_each_index(n, op, stream) when `launch` has it, else cub::DeviceFor::Bulk on `stream`
//! (nvcc only; a host compiler throws errc::unsupported).
template <class Op, class Launcher = decltype(default_launcher())>
void for_each_index(memory_space where, std::int64_t n, const Op& op, stream_t stream,
                    const Launcher& launch = default_launcher()) {
  if (n <= 0) return;
  if (where == memory_space::host) {
    for (std::int64_t i = 0; i < n; ++i) op(i);
    return;
  }
  if constexpr (requires { launch.for_each_index(n, op, stream); }) {
    launch.for_each_index(n, op, stream);
    return;
  }
#if SEQPAR_CUDA_COMPILER
  SEQPAR_CUDA_TRY(cub::DeviceFor::Bulk(n, op, stream));
#else
  (void)stream, (void)launch;
  SEQPAR_FAIL(errc::unsupported, "device memory: element-wise work needs the calling file compiled by nvcc");
#endif
}

//! Writes `value` to p[0, n).
struct fill_floats {
  float* p;     //!< the first float
  float value;  //!< what to write
  //! p[i] = value.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t i) const { p[i] = value; }
};

//! Adds from[0, n) to to[0, n).
struct add_floats {
  float* to;          //!< the accumulator
  const float* from;  //!< what to add
  //! to[i] += from[i].
  SEQPAR_HOST_DEVICE void operator()(std::int64_t i) const { to[i] += from[i]; }
};

SEQPAR_DETAIL_KERNEL_NAMESPACE_END
