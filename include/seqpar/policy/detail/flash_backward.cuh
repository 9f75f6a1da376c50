//! @file flash_backward.cuh
//! The flash_attention backward kernels (nvcc only). Two kernels recompute P = exp(scale q k - lse)
//! tile by tile from the saved log-sum-exp: one owns query rows and writes dQ, the other owns key
//! rows and writes dK and dV summed over the query heads of its kv head. Neither needs atomics or
//! atomics, so results are deterministic. Both read the row dots rowsum(dO * O): for a whole
//! sequence a first kernel computes them once into fp32 scratch, and a block pair of ring attention
//! is given them. The same kernels compute that block pair: gradients of type T are written (the
//! whole sequence), fp32 gradients are accumulators the pair adds to. Each loop step's tiles load
//! by cp.async while the step before computes (two buffers).
#pragma once

#include <seqpar/detail/vector_copy.cuh>
#include <seqpar/policy/detail/flash_tiles.cuh>

#include <cmath>
#include <cstdint>
#include <type_traits>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace flash_kernels {

//! Rows of the other operand per step of a backward loop (keys for dQ, queries for dK/dV).
inline constexpr int backward_step_rows = 32;

//! Shared memory of the dQ kernel: query and dO tiles, then two key and two value tiles (one pair
//! computed on while the next step's loads).
template <class T, int D>
struct dq_shared {
  mma::smem_tile<T> q, dout, k[2], v[2];  //!< the tiles, in this order
  //! Takes the tiles from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE explicit dq_shared(Carver& carver)
      : q(take_rows<T, D>(carver, block_rows)), dout(take_rows<T, D>(carver, block_rows)),
        k{take_rows<T, D>(carver, backward_step_rows), take_rows<T, D>(carver, backward_step_rows)},
        v{take_rows<T, D>(carver, backward_step_rows), take_rows<T, D>(carver, backward_step_rows)} {}
};

//! Shared memory of the dK/dV kernel: key and value tiles; then, twice (the step computed on and
//! the next one loading), query and dO tiles, the log-sum-exps and the row dots of a step.
template <class T, int D>
struct dkdv_shared {
  mma::smem_tile<T> k, v, q[2], dout[2];  //!< the tiles, in this order
  float *lse[2], *delta[2];               //!< log-sum-exp (log2 units) and dO_r . O_r of a step's query rows
  //! Takes the tiles, the log-sum-exps and the row dots from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE explicit dkdv_shared(Carver& carver)
      : k(take_rows<T, D>(carver, block_rows)), v(take_rows<T, D>(carver, block_rows)),
        q{take_rows<T, D>(carver, backward_step_rows), take_rows<T, D>(carver, backward_step_rows)},
        dout{take_rows<T, D>(carver, backward_step_rows), take_rows<T, D>(carver, backward_step_rows)},
        lse{carver.template take<float>(backward_step_rows), carver.template take<float>(backward_step_rows)},
        delta{carver.template take<float>(backward_step_rows), carver.template take<float>(backward_step_rows)} {}
};

//! Whether gradients of type G are fp32 accumulators of a block pair (added to) rather than a whole
//! sequence's gradients of the input type (written).
template <class G>
inline constexpr bool accumulates = std::is_same_v<G, float>;

//! Stores scale * acc, the 16 x D block of this warp, at rows row0.. of head h, batch b of x: added
//! to an fp32 accumulator, written to any other type.
template <int d_tiles, class T>
__device__ inline void store_rows(const tensor_view<T>& x, std::int64_t b, std::int64_t h, std::int64_t row0,
                                  const float (&acc)[d_tiles][4], float scale) {
#pragma unroll
  for (int dn = 0; dn < d_tiles; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const std::int64_t i = row0 + mma::c_row(e);
      if (i >= x.seq()) continue;
      T& out = x(b, i, h, dn * 8 + mma::c_col(e));
      if constexpr (accumulates<T>) out += scale * acc[dn][e];
      else out = from_float<T>(scale * acc[dn][e]);
    }
}

//! Threads that share one row of the row-dots kernel, each summing every 8th 16-byte vector.
inline constexpr int row_dot_lanes = 8;

//! dots(b, h, i) = dO_i . O_i in fp32 for every row of o and dout (same extents): groups of
//! row_dot_lanes threads per row, 16-byte loads with `vec`, the lanes' sums added by shuffles.
template <class T, int D>
__global__ void __launch_bounds__(threads)
    backward_row_dots(tensor_view<const T> o, tensor_view<const T> dout, lse_view dots, bool vec) {
  constexpr int V = 16 / sizeof(T), vectors = D / V;
  const int lane = static_cast<int>(threadIdx.x) % row_dot_lanes;
  const std::int64_t S = o.seq(), H = o.heads(), rows = o.batch() * H * S;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / row_dot_lanes) +
                           static_cast<std::int64_t>(threadIdx.x) / row_dot_lanes;
  float sum = 0.0f;
  const std::int64_t i = row % S, h = row / S % H, b = row / S / H;  // dots' own order: [B, H, S]
  if (row < rows)
    for (int v = lane; v < vectors; v += row_dot_lanes) {
      const T* x = &o(b, i, h, v * V);
      const T* y = &dout(b, i, h, v * V);
      if (vec) {
        const device::vec<T, V> xv = *reinterpret_cast<const device::vec<T, V>*>(x),
                                yv = *reinterpret_cast<const device::vec<T, V>*>(y);
#pragma unroll
        for (int e = 0; e < V; ++e) sum += to_float(xv.x[e]) * to_float(yv.x[e]);
      } else {
        const std::int64_t stride = o.stride(axis::head_dim), dstride = dout.stride(axis::head_dim);
#pragma unroll
        for (int e = 0; e < V; ++e) sum += to_float(x[e * stride]) * to_float(y[e * dstride]);
      }
    }
#pragma unroll
  for (int mask = row_dot_lanes / 2; mask > 0; mask /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, mask);
  if (row < rows && lane == 0) dots(b, h, i) = sum;
}

//! delta[r] of query rows row0 .. row0 + rows - 1 (of S) of head h, batch b, from `dots` (0 past S).
//! The caller synchronizes the block before reading delta.
__device__ inline void row_terms(float* delta, const const_lse_view& dots, std::int64_t b, std::int64_t h,
                                 std::int64_t row0, int rows, std::int64_t S) {
  for (int r = threadIdx.x; r < rows; r += blockDim.x) delta[r] = row0 + r < S ? dots(b, h, row0 + r) : 0.0f;
}

//! One block per (64 query rows, query head, batch): dQ = scale sum_j P_ij (dO_i . v_j - delta_i) k_j
//! with delta_i = dO_i . O_i from `dots`, over 32-key steps.
template <class T, int D, class G>
__global__ void __launch_bounds__(threads)
    backward_dq(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, const_lse_view lse,
                const_lse_view dots, tensor_view<const T> dout, gqa_map map, float scale, score_positions pos,
                tensor_view<G> dq, bool vec) {
  constexpr int Bc = backward_step_rows, n_tiles = Bc / 8, d_tiles = D / 8, k_steps = D / 16;
  const dq_shared<T, D> tiles = carve_shared<dq_shared<T, D>>();
  const mma::smem_tile<T> q_s = tiles.q, do_s = tiles.dout;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * block_rows, h = blockIdx.y, b = blockIdx.z;
  const std::int64_t S = pos.q_rows;
  const int kh = map.kv_head(static_cast<int>(h));
  const key_steps<D, T> steps{k, v, b, kh, vec, pos, q0, pos.key_end(q0 + block_rows < S ? q0 + block_rows : S), Bc};
  std::int64_t j0 = steps.from(0);
  if (j0 < steps.end) steps.load(j0, tiles.k[0], tiles.v[0]);
  load_rows<D>(q_s, q, b, h, q0, block_rows, vec);
  load_rows<D>(do_s, dout, b, h, q0, block_rows, vec);

  const int w0 = warp * warp_rows;
  const std::int64_t row[2] = {q0 + w0 + lane / 4, q0 + w0 + lane / 4 + 8};
  const float scale_log2 = scale * log2_e;
  float row_lse[2], row_delta[2];  // the log-sum-exp in log2 units
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_lse[r] = row[r] < S ? lse(b, h, row[r]) * log2_e : -INFINITY;
    row_delta[r] = row[r] < S ? dots(b, h, row[r]) : 0.0f;
  }
  float acc[d_tiles][4];
  mma::zero(acc);
  for (int buffer = 0; j0 < steps.end; buffer ^= 1) {
    const std::int64_t j1 = steps.from(j0 + Bc);
    if (j1 < steps.end) steps.load(j1, tiles.k[buffer ^ 1], tiles.v[buffer ^ 1]);  // tiles freed last step
    wait_for_step(j1 < steps.end);
    const mma::smem_tile<T> k_s = tiles.k[buffer], v_s = tiles.v[buffer];
    float s[n_tiles][4], dp[n_tiles][4];
    mma::zero(s);
    mma::zero(dp);
    product_transposed<k_steps>(s, q_s, w0, k_s);
    product_transposed<k_steps>(dp, do_s, w0, v_s);
    const bool whole = pos.all_visible(q0 + w0, q0 + w0 + warp_rows, j0, j0 + Bc);  // the warp's rows: unmasked
#pragma unroll
    for (int n = 0; n < n_tiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const bool on = (whole || pos.visible(row[r], j0 + n * 8 + mma::c_col(e))) && row_lse[r] != -INFINITY;
        const float p = on ? exp2_approx(fmaf(s[n][e], scale_log2, -row_lse[r])) : 0.0f;
        s[n][e] = p * (dp[n][e] - row_delta[r]);  // dS
      }
    product_from_accumulators<Bc / 16>(acc, s, k_s);
    __syncthreads();  // every warp is done with these tiles before the next step refills them
    j0 = j1;
  }
  store_rows(dq, b, h, q0 + w0, acc, scale);
}

//! One block per (64 key rows, kv head, batch): for every query head that reads this kv head and
//! every 32-query step, P^T and dS^T = P^T * (V dO^T - delta) from the key side, then
//! dV += P^T dO and dK += scale dS^T Q (delta from `dots`).
template <class T, int D, class G>
__global__ void __launch_bounds__(threads)
    backward_dkdv(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, const_lse_view lse,
                  const_lse_view dots, tensor_view<const T> dout, gqa_map map, float scale, score_positions pos,
                  tensor_view<G> dk, tensor_view<G> dv, bool vec) {
  constexpr int Br = backward_step_rows, n_tiles = Br / 8, d_tiles = D / 8, k_steps = D / 16;
  const dkdv_shared<T, D> tiles = carve_shared<dkdv_shared<T, D>>();
  const mma::smem_tile<T> k_s = tiles.k, v_s = tiles.v;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * block_rows, b = blockIdx.z;
  const int kh = static_cast<int>(blockIdx.y);
  const std::int64_t S = pos.q_rows, H = q.heads();
  const std::int64_t first = pos.query_begin(j0) / Br * Br;  // earlier queries see none of these keys

  // The steps: every query head h that reads this kv head, and its 32-query steps from `first`
  // that share a document with the block's keys. step_from(h, i0) is the first at or after (h, i0)
  // (h = H: none left); load_step starts loading one into a buffer.
  struct step {
    std::int64_t h, i0;
  };
  auto step_from = [&](std::int64_t h, std::int64_t i0) {
    for (; h < H; ++h, i0 = first) {
      if (map.kv_head(static_cast<int>(h)) != kh) continue;
      for (; i0 < S; i0 += Br)
        if (pos.share_document(i0, i0 + Br, j0, j0 + block_rows)) return step{h, i0};
    }
    return step{H, 0};
  };
  auto load_step = [&](step at, int buffer) {
    load_rows_async<D>(tiles.q[buffer], q, b, at.h, at.i0, Br, vec);
    load_rows_async<D>(tiles.dout[buffer], dout, b, at.h, at.i0, Br, vec);
    device::commit_async_copies();
    float* lse_s = tiles.lse[buffer];
    for (int r = threadIdx.x; r < Br; r += blockDim.x)
      lse_s[r] = at.i0 + r < S ? lse(b, at.h, at.i0 + r) * log2_e : -INFINITY;
    row_terms(tiles.delta[buffer], dots, b, at.h, at.i0, Br, S);
  };
  step now = step_from(0, first);
  if (now.h < H) load_step(now, 0);
  load_rows<D>(k_s, k, b, kh, j0, block_rows, vec);
  load_rows<D>(v_s, v, b, kh, j0, block_rows, vec);
  const int w0 = warp * warp_rows;
  const std::int64_t key[2] = {j0 + w0 + lane / 4, j0 + w0 + lane / 4 + 8};
  float dk_acc[d_tiles][4], dv_acc[d_tiles][4];
  mma::zero(dk_acc);
  mma::zero(dv_acc);
  const float scale_log2 = scale * log2_e;
  for (int buffer = 0; now.h < H; buffer ^= 1) {
    const step next = step_from(now.h, now.i0 + Br);
    if (next.h < H) load_step(next, buffer ^ 1);  // into the buffers every warp finished with last step
    wait_for_step(next.h < H);
    const mma::smem_tile<T> q_s = tiles.q[buffer], do_s = tiles.dout[buffer];
    const float *lse_s = tiles.lse[buffer], *delta_s = tiles.delta[buffer];
    const std::int64_t i0 = now.i0;
    float pt[n_tiles][4], dst[n_tiles][4];
    mma::zero(pt);
    mma::zero(dst);
    product_transposed<k_steps>(pt, k_s, w0, q_s);    // S^T = K Q^T
    product_transposed<k_steps>(dst, v_s, w0, do_s);  // dP^T = V dO^T
    const bool whole = pos.all_visible(i0, i0 + Br, j0 + w0, j0 + w0 + warp_rows);  // the warp's keys: unmasked
#pragma unroll
    for (int n = 0; n < n_tiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + mma::c_col(e);
        const bool on = (whole || pos.visible(i0 + c, key[e / 2])) && lse_s[c] != -INFINITY;
        const float p = on ? exp2_approx(fmaf(pt[n][e], scale_log2, -lse_s[c])) : 0.0f;
        pt[n][e] = p;
        dst[n][e] = p * (dst[n][e] - delta_s[c]);
      }
    product_from_accumulators<Br / 16>(dv_acc, pt, do_s);
    product_from_accumulators<Br / 16>(dk_acc, dst, q_s);
    __syncthreads();  // every warp is done with this step's buffers before the next step refills them
    now = next;
  }
  store_rows(dk, b, kh, j0 + w0, dk_acc, scale);
  store_rows(dv, b, kh, j0 + w0, dv_acc, 1.0f);
}

}  // namespace flash_kernels
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
