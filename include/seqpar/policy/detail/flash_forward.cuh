//! @file flash_forward.cuh
//! The flash_attention forward kernel (nvcc only): FlashAttention-2 on mma.sync tensor cores.
#pragma once

#include <seqpar/policy/detail/flash_tiles.cuh>

#include <cmath>
#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace flash_kernels {

//! Key rows per step of the forward loop.
inline constexpr int forward_key_rows = 64;

//! Shared memory of the forward kernel: the query tile, then two key and two value tiles (one
//! pair computed on while the next is loaded).
template <class T, int D>
struct forward_shared {
  mma::smem_tile<T> q, k[2], v[2];  //!< the tiles, in this order
  //! Takes the tiles from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE explicit forward_shared(Carver& carver)
      : q(take_rows<T, D>(carver, block_rows)),
        k{take_rows<T, D>(carver, forward_key_rows), take_rows<T, D>(carver, forward_key_rows)},
        v{take_rows<T, D>(carver, forward_key_rows), take_rows<T, D>(carver, forward_key_rows)} {}
};

//! One block per (64 query rows, query head, batch); each warp owns 16 query rows and keeps them in
//! registers. For every 64-key tile: S = Q K^T on tensor cores, online softmax in fp32 (running row
//! max m and sum l, the accumulators rescaled when m grows), O += P V with P reused from the S
//! accumulators. The next key and value tiles load by cp.async while the current ones compute.
//! Scores are kept in log2 units (scale * log2(e) folded in), so each exponential is
//! one ex2. Writes O = acc / l (as T for a whole sequence, fp32 for a block pair's partial) and
//! lse = (m + log2 l) ln 2; a row that sees no key gets O = 0 and lse = -inf. S x S is never stored.
template <class T, int D, class O>
__global__ void __launch_bounds__(threads)
    forward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, gqa_map map, float scale,
            score_positions pos, tensor_view<O> o, lse_view lse, bool vec) {
  constexpr int Bc = forward_key_rows, n_tiles = Bc / 8, d_tiles = D / 8, k_steps = D / 16;
  const forward_shared<T, D> tiles = carve_shared<forward_shared<T, D>>();
  const mma::smem_tile<T> q_s = tiles.q;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * block_rows, h = blockIdx.y, b = blockIdx.z;
  const std::int64_t S = pos.q_rows;
  const int kh = map.kv_head(static_cast<int>(h));
  const float scale_log2 = scale * log2_e;

  const key_steps<D, T> steps{k, v, b, kh, vec, pos, q0, pos.key_end(q0 + block_rows < S ? q0 + block_rows : S), Bc};
  std::int64_t j0 = steps.from(0);
  if (j0 < steps.end) steps.load(j0, tiles.k[0], tiles.v[0]);
  load_rows<D>(q_s, q, b, h, q0, block_rows, vec);
  __syncthreads();
  std::uint32_t qa[k_steps][4];
#pragma unroll
  for (int kk = 0; kk < k_steps; ++kk) mma::load_a(qa[kk], q_s, warp * warp_rows, kk * 16);

  // This lane's two rows: r = 0 for quad row g, r = 1 for g + 8.
  const std::int64_t row[2] = {q0 + warp * warp_rows + lane / 4, q0 + warp * warp_rows + lane / 4 + 8};
  float acc[d_tiles][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  mma::zero(acc);
  for (int buffer = 0; j0 < steps.end; buffer ^= 1) {
    const std::int64_t j1 = steps.from(j0 + Bc);
    if (j1 < steps.end) steps.load(j1, tiles.k[buffer ^ 1], tiles.v[buffer ^ 1]);  // tiles freed last step
    wait_for_step(j1 < steps.end);
    const mma::smem_tile<T> k_s = tiles.k[buffer], v_s = tiles.v[buffer];

    float s[n_tiles][4];
    mma::zero(s);
#pragma unroll
    for (int kk = 0; kk < k_steps; ++kk)
#pragma unroll
      for (int n = 0; n < n_tiles; n += 2) {
        std::uint32_t kb[4];
        mma::load_b_transposed_pair(kb, k_s, kk * 16, n * 8);
        mma::mma_16x8x16<T>(s[n], qa[kk], {kb[0], kb[1]});
        mma::mma_16x8x16<T>(s[n + 1], qa[kk], {kb[2], kb[3]});
      }

    // The warp's 16 rows against this key tile: unmasked when every pair is visible (uniform per warp).
    const std::int64_t w_row = q0 + warp * warp_rows;
    const bool whole = pos.all_visible(w_row, w_row + warp_rows, j0, j0 + Bc);
    float tile_max[2] = {m[0], m[1]};
#pragma unroll
    for (int n = 0; n < n_tiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        s[n][e] = whole || pos.visible(row[r], j0 + n * 8 + mma::c_col(e)) ? s[n][e] * scale_log2 : -INFINITY;
        tile_max[r] = fmaxf(tile_max[r], s[n][e]);
      }
    float shift[2], rescale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = mma::quad_reduce(tile_max[r], [](float x, float y) { return fmaxf(x, y); });
      shift[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet stays at zero
      rescale[r] = exp2_approx(m[r] - shift[r]);
      m[r] = m_new;
      l[r] *= rescale[r];
    }
#pragma unroll
    for (int n = 0; n < n_tiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2_approx(s[n][e] - shift[e / 2]);
        l[e / 2] += s[n][e];  // this lane's part of the row sum; the quad is summed at the end
      }
#pragma unroll
    for (int dn = 0; dn < d_tiles; ++dn)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[dn][e] *= rescale[e / 2];

    product_from_accumulators<Bc / 16>(acc, s, v_s);  // O += P V
    __syncthreads();  // every warp is done with these tiles before the next step refills them
    j0 = j1;
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) l[r] = mma::quad_reduce(l[r], [](float x, float y) { return x + y; });
#pragma unroll
  for (int dn = 0; dn < d_tiles; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e / 2;
      if (row[r] < S) o(b, row[r], h, dn * 8 + mma::c_col(e)) = from_float<O>(l[r] > 0.0f ? acc[dn][e] / l[r] : 0.0f);
    }
  if (lane % 4 == 0)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (row[r] < S) lse(b, h, row[r]) = l[r] > 0.0f ? m[r] * ln_2 + logf(l[r]) : -INFINITY;
}

}  // namespace flash_kernels
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
