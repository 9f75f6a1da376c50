//! @file buffers.hpp
//! Test buffers that live in host or device memory, with upload, download and per-rank streams.
#pragma once

#include <seqpar/comm/communicator.hpp>
#include <seqpar/cuda_check.hpp>

#include <cstddef>
#include <span>
#include <vector>

namespace seqpar_test {

//! A buffer of n elements in host or device memory; `values()` reads it back to the host.
template <class T>
class buffer {
 public:
  buffer(seqpar::memory_space where, const std::vector<T>& init) : where_(where), size_(init.size()) {
    if (where_ == seqpar::memory_space::host) {
      host_ = init;
      return;
    }
    SEQPAR_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&device_), size_ * sizeof(T) + 1));
    SEQPAR_CUDA_TRY(cudaMemcpy(device_, init.data(), size_ * sizeof(T), cudaMemcpyHostToDevice));
    // A pageable upload may still be in flight when cudaMemcpy returns, and the ranks' streams are
    // non-blocking: wait for it before any stream reads the buffer.
    SEQPAR_CUDA_TRY(cudaDeviceSynchronize());
  }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  ~buffer() {
    if (device_) cudaFree(device_);
  }
  T* data() { return where_ == seqpar::memory_space::host ? host_.data() : device_; }
  std::span<T> span() { return {data(), size_}; }
  std::span<const T> cspan() { return {data(), size_}; }
  std::vector<T> values() const {
    if (where_ == seqpar::memory_space::host) return host_;
    std::vector<T> out(size_);
    SEQPAR_CUDA_TRY(cudaMemcpy(out.data(), device_, size_ * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  seqpar::memory_space where_;
  std::size_t size_;
  std::vector<T> host_;
  T* device_ = nullptr;
};

//! A stream of a rank's own on the device (null for host memory), synchronised on destruction.
class rank_stream {
 public:
  explicit rank_stream(seqpar::memory_space where) {
    if (where == seqpar::memory_space::device) SEQPAR_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  rank_stream(const rank_stream&) = delete;
  rank_stream& operator=(const rank_stream&) = delete;
  ~rank_stream() {
    if (stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }
  operator seqpar::stream_t() const { return stream_; }
  //! Waits for everything enqueued so far.
  void sync() const {
    if (stream_) SEQPAR_CUDA_TRY(cudaStreamSynchronize(stream_));
  }

 private:
  seqpar::stream_t stream_ = nullptr;
};

}  // namespace seqpar_test
