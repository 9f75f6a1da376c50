//! @file stream_fork.hpp
//! A side stream that work can fork onto and join back from (device memory only; a no-op on host).
#pragma once

#include <seqpar/memory_space.hpp>
#include <seqpar/cuda_check.hpp>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! Owns a non-blocking side stream and two events, made on first use, so a primitive can run
//! small dependent work (a state chain) beside long independent work (the intra-chunk product).
class stream_fork {
 public:
  stream_fork() = default;
  stream_fork(const stream_fork&) = delete;
  stream_fork& operator=(const stream_fork&) = delete;
  ~stream_fork() {
    if (side_) cudaStreamDestroy(side_);
    if (forked_) cudaEventDestroy(forked_);
    if (joined_) cudaEventDestroy(joined_);
    if (marked_) cudaEventDestroy(marked_);
  }

  //! Returns the stream to run the side work on: `main` itself on the host, else the side stream,
  //! ordered after everything already enqueued on `main`.
  stream_t fork(memory_space where, stream_t main) {
    if (where == memory_space::host) return main;
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

  //! Orders `main` after everything enqueued on the side stream.
  void join(memory_space where, stream_t main) {
    if (where == memory_space::host) return;
    SEQPAR_CUDA_TRY(cudaEventRecord(joined_, side_));
    SEQPAR_CUDA_TRY(cudaStreamWaitEvent(main, joined_, 0));
  }

  //! Marks what is enqueued on the side stream so far (after a fork), for a later wait_for_mark.
  void mark(memory_space where) {
    if (where == memory_space::host) return;
    SEQPAR_CUDA_TRY(cudaEventRecord(marked_, side_));
  }
  //! Orders `main` after the side stream's work up to the last mark (not what was enqueued since).
  void wait_for_mark(memory_space where, stream_t main) {
    if (where == memory_space::host) return;
    SEQPAR_CUDA_TRY(cudaStreamWaitEvent(main, marked_, 0));
  }

 private:
  cudaStream_t side_ = nullptr;
  cudaEvent_t forked_ = nullptr, joined_ = nullptr, marked_ = nullptr;
};

}  // namespace detail
SEQPAR_NAMESPACE_END
