//! @file flash_tiles.cuh
//! What the flash_attention kernels share (nvcc only): the tile geometry, loading token rows of a
//! strided view into a shared-memory tile, and the score mask.
#pragma once

#include <seqpar/detail/async_copy.cuh>
#include <seqpar/detail/mma.cuh>
#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/policy/detail/shared_layout.cuh>

#include <cmath>
#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace flash_kernels {

//! Threads per block of every flash kernel: four warps, each owning 16 rows of the block's tile.
inline constexpr int threads = 128;
//! Rows each warp owns (the M of mma m16n8k16).
inline constexpr int warp_rows = 16;
//! Rows of a block's own tile (query rows in forward and dQ, key rows in dK/dV).
inline constexpr int block_rows = threads / 32 * warp_rows;

//! Elements between consecutive rows of a shared tile of head dim D: 16 bytes of padding shift
//! each row by four banks, so the fragment loads of a quad's eight rows hit distinct banks.
template <int D>
inline constexpr int tile_ld = D + 8;

//! A shared tile of `rows` token rows of head dim D, the next array of `carver` (shared_layout.cuh).
template <class T, int D, class Carver>
SEQPAR_HOST_DEVICE mma::smem_tile<T> take_rows(Carver& carver, int rows) {
  return mma::take_tile<T>(carver, rows, tile_ld<D>);
}

//! Copies tokens row0 .. row0 + rows - 1 of head h, batch b of x into tile s (rows past the end of
//! the sequence become zeros). With `vec`, 16-byte loads (see rows_are_vectorizable).
template <int D, class T>
__device__ inline void load_rows(mma::smem_tile<T> s, const tensor_view<const T>& x, std::int64_t b, std::int64_t h,
                                 std::int64_t row0, int rows, bool vec) {
  constexpr int V = 16 / sizeof(T);
  for (int idx = threadIdx.x; idx < rows * (D / V); idx += blockDim.x) {
    const int r = idx / (D / V), c = idx % (D / V) * V;
    const std::int64_t i = row0 + r;
    T* dst = &s(r, c);
    if (i >= x.seq()) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    } else if (vec) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(&x(b, i, h, c));
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) dst[e] = x(b, i, h, c + e);
    }
  }
}

//! As load_rows, but the 16-byte vectors of a `vec` view start as cp.async copies: they are in the
//! tile after the wait that covers the caller's next commit_async_copies(). Rows past the sequence
//! (zeros) and the element-wise path of other views are stored at once.
template <int D, class T>
__device__ inline void load_rows_async(mma::smem_tile<T> s, const tensor_view<const T>& x, std::int64_t b,
                                       std::int64_t h, std::int64_t row0, int rows, bool vec) {
  if (!vec) {
    load_rows<D>(s, x, b, h, row0, rows, false);
    return;
  }
  constexpr int V = 16 / sizeof(T);
  for (int idx = threadIdx.x; idx < rows * (D / V); idx += blockDim.x) {
    const int r = idx / (D / V), c = idx % (D / V) * V;
    const std::int64_t i = row0 + r;
    T* dst = &s(r, c);
    if (i >= x.seq()) *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    else device::copy_async_16(dst, &x(b, i, h, c));
  }
}

//! log2(e) and ln(2): the kernels scale scores by scale * log2(e), so that each exponential is one
//! ex2 of a fused multiply-add (as FlashAttention-2 does), and turn the result back with ln(2).
inline constexpr float log2_e = 1.4426950408889634f;
inline constexpr float ln_2 = 0.6931471805599453f;

//! 2^x by the hardware's approximate ex2 (what __expf runs after its own multiply by log2(e)).
__device__ inline float exp2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

//! Where a kernel's rows sit in the sequence: query row i is position q_first + i (q_rows rows), key
//! row j position kv_first + j (kv_rows rows); under `causal` a key past its query is hidden. A
//! whole-sequence call has both firsts 0; a block pair of ring attention has its own positions.
struct score_positions {
  std::int64_t q_rows = 0;    //!< query rows
  std::int64_t kv_rows = 0;   //!< key rows
  std::int64_t q_first = 0;   //!< position of query row 0
  std::int64_t kv_first = 0;  //!< position of key row 0
  bool causal = false;        //!< hide keys past their query
  document_ids documents{};   //!< hide keys of other documents (by global position)

  //! Whether query row i may attend key row j.
  SEQPAR_HOST_DEVICE bool visible(std::int64_t i, std::int64_t j) const {
    return i < q_rows && j < kv_rows && !(causal && kv_first + j > q_first + i) &&
           documents.same(q_first + i, kv_first + j);
  }
  //! Whether query rows [i0, i1) and key rows [j0, j1) (clipped to the rows there are) share a
  //! document: a tile pair that does not is skipped.
  SEQPAR_HOST_DEVICE bool share_document(std::int64_t i0, std::int64_t i1, std::int64_t j0, std::int64_t j1) const {
    i1 = i1 < q_rows ? i1 : q_rows;
    j1 = j1 < kv_rows ? j1 : kv_rows;
    return i0 >= i1 || j0 >= j1 || documents.overlap(q_first + i0, q_first + i1 - 1, kv_first + j0, kv_first + j1 - 1);
  }
  //! Whether every query row of [i0, i1) sees every key row of [j0, j1): the rows exist, no key
  //! lies past any of the queries, and one document holds them all (document ids grow with the
  //! position, so equal ids at the lowest and highest positions mean one document). Such a tile,
  //! every tile off the diagonal of a whole sequence, skips the per-element mask.
  SEQPAR_HOST_DEVICE bool all_visible(std::int64_t i0, std::int64_t i1, std::int64_t j0, std::int64_t j1) const {
    if (i1 > q_rows || j1 > kv_rows) return false;
    if (causal && kv_first + j1 - 1 > q_first + i0) return false;
    const std::int64_t lo = q_first + i0 < kv_first + j0 ? q_first + i0 : kv_first + j0;
    const std::int64_t hi = q_first + i1 - 1 > kv_first + j1 - 1 ? q_first + i1 - 1 : kv_first + j1 - 1;
    return documents.same(lo, hi);
  }
  //! One past the last key row that any of query rows [0, i_end) sees.
  SEQPAR_HOST_DEVICE std::int64_t key_end(std::int64_t i_end) const {
    if (!causal) return kv_rows;
    const std::int64_t e = q_first + i_end - kv_first;
    return e < 0 ? 0 : e > kv_rows ? kv_rows : e;
  }
  //! The first query row that sees key row j.
  SEQPAR_HOST_DEVICE std::int64_t query_begin(std::int64_t j) const {
    const std::int64_t i = kv_first + j - q_first;
    return !causal || i < 0 ? 0 : i;
  }
};

//! The double-buffered steps over keys of a query block: tiles of `rows` keys, from key 0 to `end`,
//! skipping those that share no document with the block's queries [q0, q0 + block_rows) (the same
//! for every thread of the block).
template <int D, class T>
struct key_steps {
  tensor_view<const T> k, v;  //!< the keys and values
  std::int64_t b;             //!< batch
  int kh;                     //!< kv head
  bool vec;                   //!< 16-byte vectors (see rows_are_vectorizable)
  score_positions pos;        //!< where the rows sit
  std::int64_t q0, end;       //!< the block's first query row; one past the last key any of them sees
  int rows;                   //!< keys per step
  //! The first step at or after key j, or `end`.
  __device__ std::int64_t from(std::int64_t j) const {
    while (j < end && !pos.share_document(q0, q0 + block_rows, j, j + rows)) j += rows;
    return j;
  }
  //! Starts loading the keys and values of the step at j into k_s and v_s, as one cp.async group.
  __device__ void load(std::int64_t j, mma::smem_tile<T> k_s, mma::smem_tile<T> v_s) const {
    load_rows_async<D>(k_s, k, b, kh, j, rows, vec);
    load_rows_async<D>(v_s, v, b, kh, j, rows, vec);
    device::commit_async_copies();
  }
};

//! Makes a step's buffers ready: waits for this thread's copies of the step (all groups but the
//! next step's when `next_loading`, else all), then a barrier so every thread's copies are visible.
__device__ inline void wait_for_step(bool next_loading) {
  if (next_loading) device::wait_async_copies<1>();
  else device::wait_async_copies<0>();
  __syncthreads();
}

// The tile products live in mma.cuh, shared with the linear-attention kernels.
using mma::product_from_accumulators;
using mma::product_transposed;

}  // namespace flash_kernels
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
