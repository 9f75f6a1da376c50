//! @file launcher.cuh
//! How the CUDA policies start their kernels. A policy's host code plans every launch (grid, block,
//! dynamic shared memory, arguments) and hands it to its launcher, an object with
//! - launcher(kernel, grid, block, shared_bytes, stream, args...): runs kernel(args...);
//! - launcher.device(): the device_info the planning reads;
//! - launcher.workspace(floats, stream): fp32 scratch for the kernels, an object with data() that
//!   frees it when destroyed;
//! - launcher.order(waiting, after): work enqueued on stream `waiting` from now on runs after the
//!   work already enqueued on stream `after`;
//! - launcher.to_host(dst, src, floats, stream): copies kernel results (workspace floats) to host
//!   memory once `stream` has run them;
//! - optionally launcher.make_stream_fork(): the side stream, waits and zero fills of the layers
//!   over the policy (detail/stream_fork.hpp; CUDA's when it has none).
//! The layers start their own kernels (the Ulysses packs) with their policy's launcher too
//! (launcher_of), so that one launcher sees a layer's whole device path.
//! cuda_launcher (nvcc only) does this on the current CUDA device. The kernel-emulation tests give
//! the policies a launcher that runs the kernels on the host, so they check the shipped planning.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/memory_space.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! What launch planning reads of the device a launcher runs kernels on.
struct device_info {
  int multiprocessors;  //!< streaming multiprocessors
  int major;            //!< major compute capability (8: tensor-core mma.sync m16n8k16)
};

}  // namespace detail
SEQPAR_NAMESPACE_END

#if SEQPAR_CUDA_COMPILER
SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! The launcher of the CUDA policies: the current CUDA device, kernels started with <<<>>>.
struct cuda_launcher {
  //! kernel<<<grid, block, shared_bytes, stream>>>(args...), first raising the kernel's dynamic
  //! shared memory limit when it asks for more than the default 48 KiB; throws seqpar::error when
  //! the launch fails.
  template <class... Params, class... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, stream_t stream,
                  Args&&... args) const {
    if (shared_bytes > 48 * 1024)
      SEQPAR_CUDA_TRY(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
    kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }

  //! The current device's multiprocessor count and compute capability.
  device_info device() const {
    int dev = 0;
    device_info d{};
    SEQPAR_CUDA_TRY(cudaGetDevice(&dev));
    SEQPAR_CUDA_TRY(cudaDeviceGetAttribute(&d.multiprocessors, cudaDevAttrMultiProcessorCount, dev));
    SEQPAR_CUDA_TRY(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev));
    return d;
  }

  //! fp32 device memory allocated and freed in stream order (null when empty).
  class device_workspace {
   public:
    //! Allocates `floats` on `stream`.
    device_workspace(std::int64_t floats, stream_t stream) : stream_(stream) {
      if (floats > 0) detail::keep_pool_memory(default_memory_resource{}.pool_release_threshold);
      if (floats > 0)
        SEQPAR_CUDA_TRY(cudaMallocAsync(reinterpret_cast<void**>(&data_), sizeof(float) * floats, stream_));
    }
    device_workspace(const device_workspace&) = delete;
    device_workspace& operator=(const device_workspace&) = delete;
    ~device_workspace() {
      if (data_) (void)cudaFreeAsync(data_, stream_);
    }
    //! The first float.
    float* data() const { return data_; }

   private:
    float* data_ = nullptr;
    stream_t stream_;
  };

  //! `floats` of device memory for kernels on `stream`, freed in stream order.
  device_workspace workspace(std::int64_t floats, stream_t stream) const { return {floats, stream}; }

  //! Copies `floats` from device memory `src` to host memory `dst` after the work on `stream`, and waits.
  void to_host(float* dst, const float* src, std::int64_t floats, stream_t stream) const {
    if (floats <= 0) return;
    SEQPAR_CUDA_TRY(cudaMemcpyAsync(dst, src, sizeof(float) * floats, cudaMemcpyDeviceToHost, stream));
    SEQPAR_CUDA_TRY(cudaStreamSynchronize(stream));
  }

  //! Orders what is enqueued on `waiting` from now on after what is already enqueued on `after`.
  void order(stream_t waiting, stream_t after) const {
    if (waiting == after) return;
    cudaEvent_t done = nullptr;
    SEQPAR_CUDA_TRY(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    SEQPAR_CUDA_TRY(cudaEventRecord(done, after));
    SEQPAR_CUDA_TRY(cudaStreamWaitEvent(waiting, done, 0));
    SEQPAR_CUDA_TRY(cudaEventDestroy(done));  // released once the recorded work completes
  }
};

SEQPAR_DETAIL_KERNEL_NAMESPACE_END
#endif

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
//! Stands for no launcher: a file no CUDA compiler builds, whose policy has no launcher of its own.
struct no_launcher {};

//! The launcher for a file's own kernels when no policy names one: cuda_launcher under nvcc.
inline auto default_launcher() {
#if SEQPAR_CUDA_COMPILER
  return cuda_launcher{};
#else
  return no_launcher{};
#endif
}

//! The launcher a layer starts its own kernels with: its policy's (`policy.launcher`) when the
//! policy has one, else default_launcher().
template <class Policy>
auto launcher_of(const Policy& policy) {
  if constexpr (requires { policy.launcher.device(); })
    return policy.launcher;
  else
    return default_launcher();
}

//! True when `Launcher` starts kernels (device memory can be served).
template <class Launcher>
inline constexpr bool starts_kernels = !std::is_same_v<Launcher, no_launcher>;
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
