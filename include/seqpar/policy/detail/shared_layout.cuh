//! @file shared_layout.cuh
//! The dynamic shared memory of a kernel, described once. A layout is a struct whose constructor
//! takes its arrays, in order, with take<U>(n) from a carver (plus the kernel's own sizes): the host
//! runs it over a shared_counter to size the launch (shared_bytes), the kernel over a shared_carver
//! of the block's memory to get the pointers (carve_shared). Arrays follow one another without
//! padding, so a layout orders them to start each one aligned for its type (shared_bytes checks).
//! A host compiler may run kernels under an emulated block: it defines SEQPAR_EMULATE_SHARED as
//! the memory that stands for the block's shared memory.
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/error.hpp>

#include <cstddef>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! Counts the bytes of the arrays a layout takes, on the host.
struct shared_counter {
  std::size_t bytes = 0;  //!< bytes taken so far
  bool aligned = true;    //!< every array started aligned for its type

  //! Counts n elements of U; there is no memory behind them (null).
  template <class U>
  SEQPAR_HOST_DEVICE U* take(int n) {
    aligned = aligned && bytes % alignof(U) == 0;
    bytes += n * sizeof(U);
    return nullptr;
  }
};

//! Hands out consecutive arrays of a block's dynamic shared memory, in a kernel.
struct shared_carver {
  unsigned char* next;  //!< where the next array starts

  //! The next n elements of U.
  template <class U>
  SEQPAR_HOST_DEVICE U* take(int n) {
    U* const first = reinterpret_cast<U*>(next);
    next = reinterpret_cast<unsigned char*>(first + n);
    return first;
  }
};

//! Bytes of dynamic shared memory that Layout(carver, args...) takes: what a launch asks for.
template <class Layout, class... Args>
std::size_t shared_bytes(const Args&... args) {
  shared_counter counter;
  (void)Layout(counter, args...);
  SEQPAR_EXPECTS(counter.aligned, "shared-memory layout: an array starts misaligned for its element type");
  return counter.bytes;
}

//! The block's dynamic shared memory, 16-byte aligned.
__device__ inline unsigned char* block_shared_memory() {
#if defined(SEQPAR_EMULATE_SHARED)
  return SEQPAR_EMULATE_SHARED;  // a host emulation of the block, for tests
#else
  extern __shared__ __align__(16) unsigned char block_shared[];
  return block_shared;
#endif
}

//! Layout(carver, args...) over the block's dynamic shared memory.
template <class Layout, class... Args>
__device__ inline Layout carve_shared(const Args&... args) {
  shared_carver carver{block_shared_memory()};
  return Layout(carver, args...);
}

SEQPAR_DETAIL_KERNEL_NAMESPACE_END
