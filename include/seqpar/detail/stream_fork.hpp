//! @file stream_fork.hpp
//! A side stream that work can fork onto and join back from (device memory only; a no-op on host),
//! and the one other CUDA call a layer makes itself, a zero fill: the stream work of a layer that
//! is neither a kernel (its policy's launcher) nor a message (its communicator).
#pragma once

#include <seqpar/memory_space.hpp>
#include <seqpar/cuda_check.hpp>

#include <concepts>
#include <cstddef>
#include <memory>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! Owns a non-blocking side stream and three events, made on first use, so a layer can run small
//! dependent work (a state chain, the next message) beside long independent work (the intra-chunk
//! product, a block pair). On host memory every call is a no-op or runs at once. A derived class
//! may replace the device calls (a host-side recording of the stream order does).
class stream_fork {
 public:
  stream_fork() = default;
  stream_fork(const stream_fork&) = delete;
  stream_fork& operator=(const stream_fork&) = delete;
  virtual ~stream_fork() {
    if (side_) cudaStreamDestroy(side_);
    if (forked_) cudaEventDestroy(forked_);
    if (joined_) cudaEventDestroy(joined_);
    if (marked_) cudaEventDestroy(marked_);
  }

  //! Returns the stream to run the side work on: `main` itself on the host, else the side stream,
  //! ordered after everything already enqueued on `main`.
  stream_t fork(memory_space where, stream_t main) { return where == memory_space::host ? main : fork_device(main); }
  //! Orders `main` after everything enqueued on the side stream.
  void join(memory_space where, stream_t main) {
    if (where != memory_space::host) join_device(main);
  }
  //! Marks what is enqueued on the side stream so far (after a fork), for a later wait_for_mark.
  void mark(memory_space where) {
    if (where != memory_space::host) mark_device();
  }
  //! Orders `main` after the side stream's work up to the last mark (not what was enqueued since).
  void wait_for_mark(memory_space where, stream_t main) {
    if (where != memory_space::host) wait_for_mark_device(main);
  }
  //! Sets `floats` floats at `p` to zero: at once on the host, else ordered on `stream`.
  void zero(float* p, std::size_t floats, memory_space where, stream_t stream) {
    if (floats == 0) return;
    if (where == memory_space::host) {
      for (std::size_t i = 0; i < floats; ++i) p[i] = 0.0f;
      return;
    }
    zero_device(p, floats, stream);
  }

 protected:
  virtual stream_t fork_device(stream_t main) {
    if (!side_) {
      SEQPAR_CUDA_TRY(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
      SEQPAR_CUDA_TRY(cudaEventCreateWithFlags(&forked_, cudaEventDisableTiming));
      SEQPAR_CUDA_TRY(cudaEventCreateWithFlags(&joined_, cudaEventDisableTiming));
      SEQPAR_CUDA_TRY(cudaEventCreateWithFlags(&marked_, cudaEventDisableTiming));
    }
    SEQPAR_CUDA_TRY(cudaEventRecord(forked_, main));
    SEQPAR_CUDA_TRY(cudaStreamWaitEvent(side_, forked_, 0));
    return side_;
  }
  virtual void join_device(stream_t main) {
    SEQPAR_CUDA_TRY(cudaEventRecord(joined_, side_));
    SEQPAR_CUDA_TRY(cudaStreamWaitEvent(main, joined_, 0));
  }
  virtual void mark_device() { SEQPAR_CUDA_TRY(cudaEventRecord(marked_, side_)); }
  virtual void wait_for_mark_device(stream_t main) { SEQPAR_CUDA_TRY(cudaStreamWaitEvent(main, marked_, 0)); }
  virtual void zero_device(float* p, std::size_t floats, stream_t stream) {
    SEQPAR_CUDA_TRY(cudaMemsetAsync(p, 0, floats * sizeof(float), stream));
  }

 private:
  cudaStream_t side_ = nullptr;
  cudaEvent_t forked_ = nullptr, joined_ = nullptr, marked_ = nullptr;
};

//! A launcher that names the stream work of the layers whose policy it starts kernels for:
//! `make_stream_fork()` (a recording of the stream order on the host does).
template <class Launcher>
concept names_stream_fork = requires(const Launcher& l) {
  { l.make_stream_fork() } -> std::same_as<std::unique_ptr<stream_fork>>;
};

//! The stream fork of a layer over `policy`: its launcher's own when that names one, else CUDA's.
template <class Policy>
std::unique_ptr<stream_fork> stream_fork_for(const Policy& policy) {
  if constexpr (requires { requires names_stream_fork<decltype(policy.launcher)>; })
    return policy.launcher.make_stream_fork();
  else
    return std::make_unique<stream_fork>();
}

}  // namespace detail
SEQPAR_NAMESPACE_END
