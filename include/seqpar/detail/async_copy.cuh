//! @file async_copy.cuh
//! Asynchronous global-to-shared copies (nvcc only): cp.async of 16 bytes, grouped by
//! commit_async_copies and waited for by wait_async_copies<n>, so a kernel loads its next tile
//! while it computes on the current one. A copy's bytes are in shared memory only after a wait
//! that covers its group, and visible to the other threads of the block after a barrier.
//! A host compiler may run these under an emulated block: it defines SEQPAR_EMULATE_CP_ASYNC(dst,
//! src), SEQPAR_EMULATE_CP_ASYNC_COMMIT() and SEQPAR_EMULATE_CP_ASYNC_WAIT(n)
//! (tests/support/seqpar_test/warp_emulation.hpp).
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/detail/architecture_check.cuh>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace device {

//! Starts copying 16 bytes from `src` (global memory) to `dst` (shared memory), both 16-byte aligned.
__device__ inline void copy_async_16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(at), "l"(src) : "memory");
#elif defined(SEQPAR_EMULATE_CP_ASYNC)
  SEQPAR_EMULATE_CP_ASYNC(dst, src);  // a host emulation of the block, for tests
#else
  (void)dst, (void)src;
  __trap();  // cp.async needs sm_80 or newer
#endif
}

//! Closes the group of this thread's copies started since the last commit.
__device__ inline void commit_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(SEQPAR_EMULATE_CP_ASYNC)
  SEQPAR_EMULATE_CP_ASYNC_COMMIT();
#endif
}

//! Waits until at most `pending` of this thread's committed groups are still in flight (0: all done).
template <int pending>
__device__ inline void wait_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
#elif defined(SEQPAR_EMULATE_CP_ASYNC)
  SEQPAR_EMULATE_CP_ASYNC_WAIT(pending);
#endif
}

}  // namespace device
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
