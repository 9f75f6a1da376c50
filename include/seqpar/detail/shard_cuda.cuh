//! @file shard_cuda.cuh
//! The copy kernel of seq_shard and seq_unshard on device memory (nvcc only): one launch per copy, no
//! per-token copies.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/detail/vector_copy.cuh>
#include <seqpar/shard.hpp>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace device {

//! Copies between rank `rank`'s shard and its tokens of the global tensor, V elements per step.
template <bool to_shard, class T, int V>
__global__ void shard_copy_kernel(seq_partition part, int rank, tensor_view<T> global, tensor_view<T> shard) {
  const std::int64_t D = shard.head_dim(), H = shard.heads(), B = shard.batch();
  const std::int64_t n = shard.size();
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x * V;
  for (std::int64_t e = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; e < n; e += step) {
    const std::int64_t d = e % D, h = (e / D) % H, s = (e / (D * H)) % shard.seq(), b = e / (D * H * shard.seq());
    T* g = &global(b, part.global(rank, s), h, d);
    T* l = &shard(b, s, h, d);
    if constexpr (to_shard) *reinterpret_cast<vec<T, V>*>(l) = *reinterpret_cast<const vec<T, V>*>(g);
    else *reinterpret_cast<vec<T, V>*>(g) = *reinterpret_cast<const vec<T, V>*>(l);
  }
  (void)B;
}

//! Launches shard_copy_kernel on `stream`, with 16-byte vectors when both views allow them.
template <bool to_shard, class T>
void launch_shard_copy(const seq_partition& part, int rank, tensor_view<T> global, tensor_view<T> shard,
                       stream_t stream) {
  if (shard.size() == 0) return;
  if (rows_are_vectorizable(global) && rows_are_vectorizable(shard)) {
    constexpr int V = vec16<T>;
    shard_copy_kernel<to_shard, T, V><<<grid_for(shard.size() / V, 1), 256, 0, stream>>>(part, rank, global, shard);
  } else {
    shard_copy_kernel<to_shard, T, 1><<<grid_for(shard.size(), 1), 256, 0, stream>>>(part, rank, global, shard);
  }
  SEQPAR_CUDA_TRY(cudaGetLastError());
}

}  // namespace device
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
