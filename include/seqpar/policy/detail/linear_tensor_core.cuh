//! @file linear_tensor_core.cuh
//! The linear_cuda kernels on tensor cores (nvcc only; fp16 and bf16, D up to 128, any E).
//!
//! A chunk is cut into segments that run in parallel, and each segment into sub-blocks of 64
//! tokens, one 16-row slice per warp. Within a sub-block the decayed causal product is two
//! mma.sync products (S = A B^T masked by lambda^(i-j), then S V); the running fp32 state adds
//! lambda^(i+1) A state and is updated with B^T diag(lambda^(n-1-j)) V. The state stays in
//! registers in fp32; the products read it as two T parts (hi + lo), so it keeps about twice T's
//! precision; for fp16 the parts are of the state times a power of two that keeps them in range.
//! Segments start from the decayed prefix of the states of the segments before them:
//! chunk_scan(states_only) computes each segment's state, scan_segment_states turns them into
//! prefixes, and chunk_scan computes the output. chunk_scan takes its decay weights as a type:
//! constant_weights here, gate_weights (gated_tensor_core.cuh) for scalar log-gates.
#pragma once

#include <seqpar/detail/mma.cuh>
#include <seqpar/policy/detail/linear_cuda_core.cuh>
#include <seqpar/policy/detail/segment_plan.hpp>
#include <seqpar/policy/detail/shared_layout.cuh>

#include <algorithm>
#include <concepts>
#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace linear_kernels {

//! Tokens of a sub-block: four warps of 16 rows.
inline constexpr int tc_tokens = 64;
//! Columns of E (or of the output) one block computes.
inline constexpr int tc_y_tile = 64;
//! The largest D (the contracted dimension) the tensor-core kernels take.
inline constexpr int tc_max_x = 128;

//! D rounded up to the 16 of an mma k-step (the padding columns are zeros).
SEQPAR_HOST_DEVICE constexpr int tc_padded(std::int64_t x) { return static_cast<int>((x + 15) / 16 * 16); }
//! Elements between rows of a shared tile of `cols` columns (16 bytes of padding against bank conflicts).
SEQPAR_HOST_DEVICE constexpr int tc_ld(int cols) { return cols + 8; }
//! State m-tiles of 16 rows each warp owns for a padded D of Xp: 1 up to 64, 2 up to 128.
SEQPAR_HOST_DEVICE constexpr int tc_state_tiles(int Xp) { return Xp <= 64 ? 1 : 2; }

//! Shared memory of chunk_scan for padded D = Xp: A and B rows, V rows, the state's hi and lo
//! parts, the decay weights' table (`table` floats) and one float per warp.
template <class T>
struct chunk_scan_shared {
  mma::smem_tile<T> a, b, v, hi, lo;  //!< the tiles, in this order
  float* pw;                          //!< the weights' table (see each weights' table_floats)
  float* slots;                       //!< one per warp, for state_scale
  //! Takes the tiles, table and slots from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE chunk_scan_shared(Carver& carver, int Xp, int table)
      : a(mma::take_tile<T>(carver, tc_tokens, tc_ld(Xp))),
        b(mma::take_tile<T>(carver, tc_tokens, tc_ld(Xp))),
        v(mma::take_tile<T>(carver, tc_tokens, tc_ld(tc_y_tile))),
        hi(mma::take_tile<T>(carver, Xp, tc_ld(tc_y_tile))),
        lo(mma::take_tile<T>(carver, Xp, tc_ld(tc_y_tile))),
        pw(carver.template take<float>(table)),
        slots(carver.template take<float>(4)) {}
};

//! What a chunk_scan decay weight depends on: the pair of tokens (constant_weights, gate_weights),
//! or also the contracted column (column_gate_weights) or the output column (output_gate_weights).
enum class weight_kind { per_pair, per_contracted, per_output };

//! What one chunk_scan launch computes, beside its decay weights.
struct scan_mode {
  bool reverse = false;      //!< time runs backwards: token C - 1 - t at time t
  bool states_only = false;  //!< no output: each segment's own state (from zero) into `states`
  bool strict = false;       //!< pairs j < i only: the diagonal left out of out
  bool accumulate = false;   //!< out += rather than out =
  bool intra = true;         //!< the chunk's own pairs and their share of the state (else only the prefix's term)
};

//! The decay weights of chunk_scan for one constant decay lambda per head: w(i, j) = lambda^(i-j)
//! between tokens of a sub-block, lambda^(i+1) from the state before it to token i, and the
//! state decays by lambda^n over n tokens. A block's weights (start()) read a table of
//! lambda^0 .. lambda^tc_tokens in shared memory.
struct constant_weights {
  decay_table decay;  //!< lambda per head
  //! One weight per pair of tokens.
  static constexpr weight_kind kind = weight_kind::per_pair;
  //! Floats of its shared table.
  SEQPAR_HOST_DEVICE static constexpr int table_floats(int) { return 2 * tc_tokens; }

  //! One block's weights: the table's powers.
  struct block {
    const float* pw;  //!< lambda^0 .. lambda^tc_tokens (shared)
    //! Nothing to read per sub-block.
    __device__ void load(std::int64_t, int) {}
    //! Nothing to prepare per sub-block.
    __device__ void prepare() {}
    //! Weight of the pair (i, j), j <= i, of a sub-block.
    __device__ float pair(int i, int j) const { return pw[i - j]; }
    //! Weight of the state before the sub-block at its token i.
    __device__ float into(int i) const { return pw[i + 1]; }
    //! Decay of the state's element (x, y) over the sub-block's n tokens (the same for every x, y).
    __device__ float through(int n, int, int) const { return pw[n]; }
    //! Weight of token j's share of the state's row x after the sub-block's n tokens (the same for every x).
    __device__ float tail(int n, int j, int) const { return pw[n - 1 - j]; }
    //! Nothing to write when a segment ends.
    __device__ void finish(std::int64_t, bool) const {}
  };
  //! Fills the table for head h (the first barrier of the sub-block loop publishes it). const, so
  //! a kernel reads the table of lambdas where it was passed rather than from a local copy.
  __device__ block start(float* table, std::int64_t, std::int64_t h, std::int64_t, bool, int) const {
    const double lambda = decay.lambda[h];
    for (int k = threadIdx.x; k <= tc_tokens; k += blockDim.x) table[k] = static_cast<float>(pow(lambda, double(k)));
    return {table};
  }
};

//! Shared memory of rows_times_state for padded D = Xp: the token rows, the state's two parts and
//! one float per warp.
template <class T>
struct rows_times_state_shared {
  mma::smem_tile<T> a, hi, lo;  //!< the tiles, in this order
  float* slots;                 //!< one per warp, for state_scale
  //! Takes the tiles and slots from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE rows_times_state_shared(Carver& carver, int Xp)
      : a(mma::take_tile<T>(carver, tc_tokens, tc_ld(Xp))), hi(mma::take_tile<T>(carver, Xp, tc_ld(tc_y_tile))),
        lo(mma::take_tile<T>(carver, Xp, tc_ld(tc_y_tile))), slots(carver.template take<float>(4)) {}
};

//! plan_segments for chunk_scan: whole 64-token sub-blocks, segments of 256 tokens or more.
inline segment_plan plan_segments(std::int64_t C, std::int64_t blocks_per_segment, int sms) {
  return detail::plan_segments(C, blocks_per_segment, sms, tc_tokens, 256);
}

//! Copies `n` token rows, in time order t0, t0 + 1, ... (token C - 1 - t when `reverse`), columns
//! col0 .. col0 + width - 1 of head h, batch b of x into the first rows of s; rows past n and
//! columns past x's head dim are zeros. With `vec` (rows_are_vectorizable), 16-byte loads.
template <class T>
__device__ inline void load_token_rows(mma::smem_tile<T> s, const tensor_view<const T>& x, std::int64_t b,
                                       std::int64_t h, std::int64_t t0, int n, int col0, int width, bool reverse,
                                       bool vec) {
  const int cols = static_cast<int>(x.head_dim());
  for (int idx = threadIdx.x; idx < tc_tokens * (width / 8); idx += blockDim.x) {
    const int r = idx / (width / 8), c = idx % (width / 8) * 8;
    T* dst = &s(r, c);
    const int first = col0 + c;
    if (r >= n || first >= cols) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      continue;
    }
    const std::int64_t i = reverse ? x.seq() - 1 - (t0 + r) : t0 + r;
    if (vec && first + 8 <= cols) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(&x(b, i, h, first));
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = first + e < cols ? x(b, i, h, first + e) : from_float<T>(0.0f);
    }
  }
}

//! The power of two the state is multiplied by before it is split into T parts: for fp16, one that
//! brings the block's largest |value| (`local` is this thread's) under 2^14, so the hi part cannot
//! overflow; 1 for bf16, whose range is float's. `slots`: one float per warp in shared memory.
//! Every thread of the block calls it and gets the same value.
template <class T>
__device__ inline float state_scale(float local, float* slots) {
  if constexpr (!std::same_as<T, __half>) {
    (void)local, (void)slots;
    return 1.0f;
  } else {
    for (int mask = 16; mask >= 1; mask /= 2) local = fmaxf(local, __shfl_xor_sync(0xffffffffu, local, mask));
    if (threadIdx.x % 32 == 0) slots[threadIdx.x / 32] = local;
    __syncthreads();
    const float largest = fmaxf(fmaxf(slots[0], slots[1]), fmaxf(slots[2], slots[3]));
    __syncthreads();  // the slots are free again
    return largest > 16384.0f ? exp2f(-ceilf(log2f(largest / 16384.0f))) : 1.0f;
  }
}

//! Writes fp32 value v at (r, c) of the state's two T parts: hi = T(v), lo = T(v - hi).
template <class T>
__device__ inline void split_store(mma::smem_tile<T> hi, mma::smem_tile<T> lo, int r, int c, float v) {
  const T h = from_float<T>(v);
  hi(r, c) = h;
  lo(r, c) = from_float<T>(v - to_float(h));
}

//! acc += A times the state (hi + lo), 64 columns, A's 16 rows and k_steps x 16 columns given by
//! load_a_fragment(af, kk), a fragment per k-step kk.
template <class T, class LoadA>
__device__ inline void times_state(float (&acc)[8][4], const LoadA& load_a_fragment, mma::smem_tile<T> hi,
                                   mma::smem_tile<T> lo, int k_steps) {
  for (int kk = 0; kk < k_steps; ++kk) {
    std::uint32_t af[4];
    load_a_fragment(af, kk);
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      std::uint32_t bf[2];
      mma::load_b(bf, hi, kk * 16, n * 8);
      mma::mma_16x8x16<T>(acc[n], af, bf);
      mma::load_b(bf, lo, kk * 16, n * 8);
      mma::mma_16x8x16<T>(acc[n], af, bf);
    }
  }
}

//! acc += rows row0 .. row0 + 15 of `a` (k_steps x 16 columns) times the state (hi + lo), 64 columns.
template <class T>
__device__ inline void times_state(float (&acc)[8][4], mma::smem_tile<T> a, int row0, mma::smem_tile<T> hi,
                                   mma::smem_tile<T> lo, int k_steps) {
  times_state(
      acc, [&](std::uint32_t(&af)[4], int kk) { mma::load_a(af, a, row0, kk * 16); }, hi, lo, k_steps);
}

//! The A fragment of the 16 x 16 matrix A[r][c] = at(r, c) (fp32, rounded to T), element by element.
template <class T, class At>
__device__ inline void a_fragment(std::uint32_t (&a)[4], const At& at) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  a[0] = mma::pack<T>(at(g, 2 * t), at(g, 2 * t + 1));
  a[1] = mma::pack<T>(at(g + 8, 2 * t), at(g + 8, 2 * t + 1));
  a[2] = mma::pack<T>(at(g, 2 * t + 8), at(g, 2 * t + 9));
  a[3] = mma::pack<T>(at(g + 8, 2 * t + 8), at(g + 8, 2 * t + 9));
}

//! The A fragment of A[x][j] = w(j, x0 + x) s(j, x0 + x) for j in 16kk .. 16kk + 15: rows of s
//! transposed and weighted, w = weight for the sub-block's n tokens (0 past them).
template <class T, class Weight>
__device__ inline void load_a_weighted_transposed(std::uint32_t (&a)[4], mma::smem_tile<T> s, int x0, int kk,
                                                  const Weight& weight, int n) {
  a_fragment<T>(a, [&](int x, int j) {
    j += 16 * kk;
    return j < n ? weight(j, x0 + x) * to_float(s(j, x0 + x)) : 0.0f;
  });
}

//! The A fragment of A[r][x] = w(row0 + r, col0 + x) s(row0 + r, col0 + x): load_a, weighted.
template <class T, class Weight>
__device__ inline void load_a_weighted(std::uint32_t (&a)[4], mma::smem_tile<T> s, int row0, int col0,
                                       const Weight& weight) {
  a_fragment<T>(a, [&](int r, int x) { return weight(row0 + r, col0 + x) * to_float(s(row0 + r, col0 + x)); });
}

//! The B fragment of the 16 x 8 matrix B[k][n] = at(k, n) (fp32, rounded to T), element by element.
template <class T, class At>
__device__ inline void b_fragment(std::uint32_t (&b)[2], const At& at) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  b[0] = mma::pack<T>(at(2 * t, g), at(2 * t + 1, g));
  b[1] = mma::pack<T>(at(2 * t + 8, g), at(2 * t + 9, g));
}

//! The B fragment for B[k][n] = w(n0 + n, k0 + k) s(n0 + n, k0 + k): load_b_transposed, weighted.
template <class T, class Weight>
__device__ inline void load_b_weighted_transposed(std::uint32_t (&b)[2], mma::smem_tile<T> s, int k0, int n0,
                                                  const Weight& weight) {
  b_fragment<T>(b, [&](int k, int n) { return weight(n0 + n, k0 + k) * to_float(s(n0 + n, k0 + k)); });
}

//! The B fragment for B[k][n] = w(k0 + k, n0 + n) s(k0 + k, n0 + n): load_b, weighted.
template <class T, class Weight>
__device__ inline void load_b_weighted(std::uint32_t (&b)[2], mma::smem_tile<T> s, int k0, int n0,
                                       const Weight& weight) {
  b_fragment<T>(b, [&](int k, int n) { return weight(k0 + k, n0 + n) * to_float(s(k0 + k, n0 + n)); });
}

//! The masked-off S = A B^T of a warp's 16 rows row0.. (tokens i) against the sub-block's 64 tokens j
//! with a weight per contracted column, w(i, j, x) = weights.factor(i, j, x) (column_gate_weights):
//! the slices before the warp's on tensor cores, their operands weighted through the token before
//! the warp's slice (a_i by w(i, row0 - 1, x), b_j by w(row0 - 1, j, x): each at most 1), and the
//! pairs within the slice (j <= i) on CUDA cores; the rest stays 0.
template <class T, class Weights>
__device__ inline void column_weighted_scores(float (&s)[8][4], mma::smem_tile<T> a, mma::smem_tile<T> b, int row0,
                                              int X, const Weights& weights) {
  const int ref = row0 - 1;
  if (row0 > 0)
    for (int kk = 0; kk < tc_padded(X) / 16; ++kk) {
      std::uint32_t af[4];
      load_a_weighted<T>(af, a, row0, kk * 16, [&](int i, int x) { return weights.factor(i, ref, x); });
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (8 * j > ref) continue;
        std::uint32_t bf[2];
        load_b_weighted_transposed<T>(bf, b, kk * 16, j * 8, [&](int jj, int x) { return weights.factor(ref, jj, x); });
        mma::mma_16x8x16<T>(s[j], af, bf);
      }
    }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (8 * j < row0 || 8 * j >= row0 + 16) continue;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = row0 + mma::c_row(e), jj = 8 * j + mma::c_col(e);
      float dot = 0.0f;
      for (int x = 0; jj <= i && x < X; ++x) dot += to_float(a(i, x)) * to_float(b(jj, x)) * weights.factor(i, jj, x);
      s[j][e] = dot;
    }
  }
}

//! acc[i][y] += sum_{j <= i} s_ij v_j[y] w(i, j, y) for a warp's 16 rows row0.. (tokens i) with a
//! weight per output column of the block's tile, w(i, j, y) = weights.factor(i, j, y)
//! (output_gate_weights), s the masked scores: the slices before the warp's on tensor cores, v_j
//! weighted by w(r, j, y) and the product by w(i, r, y), r = row0 - 1 (each at most 1); the pairs
//! within the slice on CUDA cores, its 16 x 16 scores through the warp's shared scratch, w as a
//! product of the steps' e^(gate) (weights.step<MT>, MT the kernel's state tiles). Every warp of
//! the block calls it.
template <class T, int MT, class Weights>
__device__ inline void output_weighted_product(float (&acc)[8][4], const float (&s)[8][4], mma::smem_tile<T> v,
                                               int row0, const Weights& weights) {
  const int ref = row0 - 1, slice = row0 / 16;
  if (row0 > 0) {
    float part[8][4];
    mma::zero(part);
#pragma unroll
    for (int kk = 0; kk < tc_tokens / 16; ++kk) {
      if (kk >= slice) continue;
      std::uint32_t af[4];
      mma::a_from_accumulators<T>(af, s, kk);
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        std::uint32_t bf[2];
        load_b_weighted<T>(bf, v, kk * 16, n * 8, [&](int j, int y) { return weights.factor(ref, j, y); });
        mma::mma_16x8x16<T>(part[n], af, bf);
      }
    }
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        acc[n][e] += part[n][e] * weights.factor(row0 + mma::c_row(e), ref, 8 * n + mma::c_col(e));
  }
  float* own = weights.scratch(threadIdx.x / 32);  // [16][16]: the slice's scores
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (j / 2 == slice)
#pragma unroll
      for (int e = 0; e < 4; ++e) own[mma::c_row(e) * 16 + 8 * (j % 2) + mma::c_col(e)] = s[j][e];
  __syncthreads();  // every warp of the block comes here
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = mma::c_row(e), y = 8 * n + mma::c_col(e);
      float sum = 0.0f, w = 1.0f;  // w = factor(row0 + i, row0 + j, y), from j = i down
      for (int j = i; j >= 0; --j) {
        sum += own[i * 16 + j] * to_float(v(row0 + j, y)) * w;
        w *= weights.template step<MT>(row0 + j, y);
      }
      acc[n][e] += sum;
    }
  __syncthreads();  // the scratch is free again
}

//! One segment of out_i = sum_{j <= i} w(i, j) (a_i . b_j) v_j + w(i) a_i S (time running
//! backwards with `reverse`: token C - 1 - t at time t), S the state before the segment, w the
//! decay weights (constant_weights, or a gated kind); columns 64 blockIdx.x.., segment blockIdx.y
//! of `segment_length` tokens, batch * head blockIdx.z. The segment starts from the fp32 state in
//! `states` (null: zero). With `states_only`, no output: the segment's own state (from zero) is
//! written to `states` instead. States are [segment][batch * head][D][Y], Y out's columns (v's
//! with states_only). MT: tc_state_tiles(Xp). Without `intra`, b and v are not read. Weights with a
//! weight per contracted column weight a_i and b_j column by column instead, and the state's rows
//! (see column_weighted_scores); with a weight per output column, v_j and the output's columns, and
//! the state's columns (see output_weighted_product).
template <class T, int MT, class Weights, class O = T>
__global__ void __launch_bounds__(128)
    chunk_scan(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v, tensor_view<O> out,
               float* states, std::int64_t segment_length, Weights decay_weights, scan_mode mode, bool vec) {
  const bool reverse = mode.reverse, states_only = mode.states_only;
  const int X = static_cast<int>(a.head_dim()), Xp = tc_padded(X);
  const int Y = static_cast<int>(states_only ? v.head_dim() : out.head_dim());
  const int H = static_cast<int>(a.heads()), y0 = blockIdx.x * tc_y_tile, warp = threadIdx.x / 32;
  const std::int64_t bh = blockIdx.z, bt = bh / H, h = bh % H, C = a.seq();
  const std::int64_t begin = blockIdx.y * segment_length, end = C < begin + segment_length ? C : begin + segment_length;
  const std::int64_t BH = a.batch() * H;
  const auto [a_s, b_s, v_s, hi, lo, pw, slots] = carve_shared<chunk_scan_shared<T>>(Xp, Weights::table_floats(Xp));
  constexpr bool per_column = Weights::kind == weight_kind::per_contracted;
  constexpr bool per_output = Weights::kind == weight_kind::per_output;
  auto weights = decay_weights.start(pw, bt, h, C, reverse, Xp);

  // state[i][n][e]: row 16 (warp + 4 i) + c_row(e), column 8 n + c_col(e) of this block's tile.
  float state[MT][8][4];
  auto state_at = [&](int i, int n, int e, std::int64_t& offset) {
    const int x = 16 * (warp + 4 * i) + mma::c_row(e), y = y0 + 8 * n + mma::c_col(e);
    offset = ((blockIdx.y * BH + bh) * X + x) * Y + y;
    return x < X && y < Y;
  };
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        std::int64_t offset;
        state[i][n][e] = !states_only && states && state_at(i, n, e, offset) ? states[offset] : 0.0f;
      }
  float unscale = 1.0f;  // hi + lo = the state / unscale
  auto publish_state = [&] {
    float largest = 0.0f;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) largest = fmaxf(largest, fabsf(state[i][n][e]));
    const float scale = state_scale<T>(largest, slots);
    unscale = 1.0f / scale;
#pragma unroll
    for (int i = 0; i < MT; ++i)
      if (16 * (warp + 4 * i) < Xp)
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            split_store(hi, lo, 16 * (warp + 4 * i) + mma::c_row(e), 8 * n + mma::c_col(e), scale * state[i][n][e]);
  };
  if (!states_only) publish_state();

  for (std::int64_t t0 = begin; t0 < end; t0 += tc_tokens) {
    const int n = end - t0 < tc_tokens ? static_cast<int>(end - t0) : tc_tokens;
    __syncthreads();  // the last sub-block's readers are done
    if (!states_only) load_token_rows(a_s, a, bt, h, t0, n, 0, Xp, reverse, vec);
    if (mode.intra) {
      load_token_rows(b_s, b, bt, h, t0, n, 0, Xp, reverse, vec);
      load_token_rows(v_s, v, bt, h, t0, n, y0, tc_y_tile, reverse, vec);
    }
    weights.load(t0, n);
    __syncthreads();
    weights.prepare();
    mma::smem_tile<T> v_update = v_s;  // v as the state update reads it
    if constexpr (per_output)
      if (mode.intra) v_update = weights.template weigh_values<MT>(v_s, n);
    if (!states_only) {
      const int row0 = 16 * warp;
      float s[8][4], acc[8][4];
      mma::zero(s);
      if constexpr (per_column) {
        if (mode.intra) column_weighted_scores<T>(s, a_s, b_s, row0, X, weights);
      } else if (mode.intra)
        for (int kk = 0; kk < Xp / 16; ++kk) {
          std::uint32_t af[4];
          mma::load_a(af, a_s, row0, kk * 16);
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            std::uint32_t bf[2];
            mma::load_b_transposed(bf, b_s, kk * 16, j * 8);
            mma::mma_16x8x16<T>(s[j], af, bf);
          }
        }
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = row0 + mma::c_row(e), c = 8 * j + mma::c_col(e);
          float w = 1.0f;
          if constexpr (Weights::kind == weight_kind::per_pair) w = weights.pair(r, c);
          s[j][e] = c < r || (c == r && !mode.strict) ? w * s[j][e] : 0.0f;
        }
      // acc = w(r) a_r . state, then += (masked S) V
      mma::zero(acc);
      if constexpr (per_column) {
        const auto into = [&](int i, int x) { return weights.factor(i, -1, x); };
        times_state<T>(
            acc, [&](std::uint32_t(&af)[4], int kk) { load_a_weighted<T>(af, a_s, row0, kk * 16, into); }, hi, lo,
            Xp / 16);
      } else {
        times_state(acc, a_s, row0, hi, lo, Xp / 16);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float w = unscale;
          if constexpr (per_output) w *= weights.factor(row0 + mma::c_row(e), -1, 8 * j + mma::c_col(e));
          else if constexpr (!per_column) w *= weights.into(row0 + mma::c_row(e));
          acc[j][e] *= w;
        }
      if constexpr (per_output) {
        if (mode.intra) output_weighted_product<T, MT>(acc, s, v_s, row0, weights);
      } else if (mode.intra) {
        mma::product_from_accumulators<tc_tokens / 16>(acc, s, v_s);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = row0 + mma::c_row(e), y = y0 + 8 * j + mma::c_col(e);
          if (r >= n || y >= Y) continue;
          O& o = out(bt, reverse ? C - 1 - (t0 + r) : t0 + r, h, y);
          o = from_float<O>((mode.accumulate ? to_float(o) : 0.0f) + acc[j][e]);
        }
    }
    // state = w(n) state + B^T diag(w(n-1-j)) V
    const auto tail = [&](int j, int x) { return weights.tail(n, j, x); };
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const int x0 = 16 * (warp + 4 * i);
      if (x0 >= Xp) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) state[i][j][e] *= weights.through(n, x0 + mma::c_row(e), 8 * j + mma::c_col(e));
      if (!mode.intra) continue;
#pragma unroll
      for (int kk = 0; kk < tc_tokens / 16; ++kk) {
        std::uint32_t af[4];
        load_a_weighted_transposed<T>(af, b_s, x0, kk, tail, n);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          std::uint32_t bf[2];
          mma::load_b(bf, v_update, kk * 16, j * 8);
          mma::mma_16x8x16<T>(state[i][j], af, bf);
        }
      }
    }
    if (!states_only) {
      __syncthreads();  // every warp has read the old state
      publish_state();
    }
  }
  if (states_only)
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          std::int64_t offset;
          if (state_at(i, n, e, offset)) states[offset] = state[i][n][e];
        }
  weights.finish(blockIdx.y * a.batch() + bt, states_only);
}

//! Turns the segment states [segments][batch * head][D][E] of a chunk of C tokens (segments of
//! `segment_length`) into exclusive decayed prefixes, a thread per state element: P_0 = 0,
//! P_(s+1) = lambda^(length of s) P_s + m_s. With `total` non-null, total = scale * P_segments,
//! scale = lambda with `times_lambda`, else 1.
// static: a kernel defined in a header gets internal linkage, so several .cu files may include it.
[[maybe_unused]] static __global__ void scan_segment_states(float* states, int segments, std::int64_t segment_length,
                                                            std::int64_t C, std::int64_t BH, int H,
                                                            std::int64_t per_head, decay_table decay, float* total,
                                                            bool times_lambda) {
  const std::int64_t n = BH * per_head;
  for (std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double lambda = decay.lambda[(k / per_head) % H];
    const float full = static_cast<float>(pow(lambda, double(segment_length)));
    const float last = static_cast<float>(pow(lambda, double(C - (segments - 1) * segment_length)));
    float prefix = 0.0f;
    for (int s = 0; s < segments; ++s) {
      const float m = states[s * n + k];
      states[s * n + k] = prefix;
      prefix = (s + 1 == segments ? last : full) * prefix + m;
    }
    if (total) total[k] = (times_lambda ? static_cast<float>(lambda) : 1.0f) * prefix;
  }
}

//! out_i[y] += w(i) sum_x a_i[x] S[x][y] (S[y][x] with `transposed`) on tensor cores, the fp32
//! state as hi + lo parts. Columns 64 blockIdx.y.., batch * head blockIdx.z, and a grid-stride
//! walk over tiles of 64 tokens along x.
template <class T>
__global__ void __launch_bounds__(128)
    rows_times_state(tensor_view<const T> a, const_state_view s, bool transposed, tensor_view<T> out,
                     decay_table decay, weight w, bool vec) {
  const int X = static_cast<int>(a.head_dim()), Y = static_cast<int>(out.head_dim()), Xp = tc_padded(X);
  const int H = static_cast<int>(a.heads()), y0 = blockIdx.y * tc_y_tile, row0 = 16 * (threadIdx.x / 32);
  const std::int64_t bt = blockIdx.z / H, h = blockIdx.z % H, C = a.seq();
  const auto [a_s, hi, lo, slots] = carve_shared<rows_times_state_shared<T>>(Xp);
  auto state_at = [&](int k) {
    const int x = k / tc_y_tile, y = k % tc_y_tile;
    return x < X && y0 + y < Y ? (transposed ? s(bt, h, y0 + y, x) : s(bt, h, x, y0 + y)) : 0.0f;
  };
  float largest = 0.0f;
  for (int k = threadIdx.x; k < Xp * tc_y_tile; k += blockDim.x) largest = fmaxf(largest, fabsf(state_at(k)));
  const float scale = state_scale<T>(largest, slots), unscale = 1.0f / scale;
  for (int k = threadIdx.x; k < Xp * tc_y_tile; k += blockDim.x)
    split_store(hi, lo, k / tc_y_tile, k % tc_y_tile, scale * state_at(k));
  for (std::int64_t t0 = blockIdx.x * std::int64_t{tc_tokens}; t0 < C; t0 += std::int64_t{gridDim.x} * tc_tokens) {
    const int n = C - t0 < tc_tokens ? static_cast<int>(C - t0) : tc_tokens;
    __syncthreads();
    load_token_rows(a_s, a, bt, h, t0, n, 0, Xp, false, vec);
    __syncthreads();
    float acc[8][4];
    mma::zero(acc);
    times_state(acc, a_s, row0, hi, lo, Xp / 16);
    float weight_of[2];  // the two rows this lane holds
#pragma unroll
    for (int half = 0; half < 2; ++half)
      weight_of[half] = token_weight(w, decay.lambda[h], t0 + row0 + mma::c_row(2 * half), C);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = row0 + mma::c_row(e), y = y0 + 8 * j + mma::c_col(e);
        if (r >= n || y >= Y) continue;
        T& o = out(bt, t0 + r, h, y);
        o = from_float<T>(to_float(o) + weight_of[e / 2] * unscale * acc[j][e]);
      }
  }
}

//! One chunk_scan launch of 128-thread blocks over `grid` (y tiles, segments, batch x head), with
//! its shared memory and state tiles for the padded contracted dim of a and b.
template <class Weights, class T, class O, class Launcher>
void launch_chunk_scan(const Launcher& launcher, dim3 grid, tensor_view<const T> a, tensor_view<const T> b,
                       tensor_view<const T> v, tensor_view<O> out, float* states, std::int64_t segment_length,
                       const Weights& weights, scan_mode mode, bool vec, stream_t stream) {
  const int Xp = tc_padded(b.head_dim());
  const std::size_t bytes = shared_bytes<chunk_scan_shared<T>>(Xp, Weights::table_floats(Xp));
  auto run = [&](auto kernel) {
    launcher(kernel, grid, dim3(128), bytes, stream, a, b, v, out, states, segment_length, weights, mode, vec);
  };
  if (tc_state_tiles(Xp) == 1) run(chunk_scan<T, 1, Weights, O>);
  else run(chunk_scan<T, 2, Weights, O>);
}

}  // namespace linear_kernels
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
