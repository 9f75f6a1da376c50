//! @file linear_cuda_core.cuh
//! The linear_cuda kernels on CUDA cores (nvcc only): any element type and D, E up to 256, fp32
//! products from shared memory. They serve float, and D > 128, where the tensor-core kernels
//! (linear_tensor_core.cuh) do not; the decay table and token weights are shared by both.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/policy/linear_attention_policy.hpp>
#include <seqpar/policy/detail/linear_operations.hpp>
#include <seqpar/policy/detail/shared_layout.cuh>

#include <cstddef>
#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace linear_kernels {

//! The most heads and the largest D or E the kernels take.
inline constexpr int max_heads = 256, max_dim = 256;
//! Tokens per sub-block of the chunked product.
inline constexpr int sub_block = 16;

//! Per-head decays, passed by value to kernels.
struct decay_table {
  float lambda[max_heads];  //!< lambda of head h at [h]
};

//! How a token's weight depends on its index i in a chunk of C: lambda^(i+1) or lambda^(C-1-i).
using weight = linear_weight;

//! The weight of token i of a chunk of C (fp32 rounding of a double power).
__device__ inline float token_weight(weight w, float lambda, std::int64_t i, std::int64_t C) {
  return static_cast<float>(pow(static_cast<double>(lambda), static_cast<double>(w == weight::lq ? i + 1 : C - 1 - i)));
}

//! Shared memory of causal_decay_product for X columns of a and b, all fp32.
struct causal_decay_product_shared {
  static constexpr int y_tile = 32;  //!< columns of v and out one block computes
  float *a, *b;                      //!< [sub_block][X]: the sub-block's rows of a and b
  float* v;                          //!< [sub_block][y_tile]: its rows of v
  float* state;                      //!< [X][y_tile]: the running state
  float* scores;                     //!< [sub_block][sub_block]: the decayed causal a b^T
  float* pw;                         //!< lambda^0 .. lambda^sub_block
  //! Takes the arrays from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE causal_decay_product_shared(Carver& carver, int X)
      : a(carver.template take<float>(sub_block * X)), b(carver.template take<float>(sub_block * X)),
        v(carver.template take<float>(sub_block * y_tile)), state(carver.template take<float>(X * y_tile)),
        scores(carver.template take<float>(sub_block * sub_block)), pw(carver.template take<float>(sub_block + 1)) {}
};

//! out_i = sum_{j <= i} lambda^(i-j) (a_i . b_j) v_j for every token i of the chunk (with `reverse`,
//! time runs backwards: j >= i). a, b have X columns, v and out Y; one block per (Y tile, head, batch).
template <class T>
__global__ void causal_decay_product(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v,
                                     tensor_view<T> out, decay_table decay, bool reverse) {
  constexpr int c = sub_block, YT = causal_decay_product_shared::y_tile;
  const int X = static_cast<int>(a.head_dim()), Y = static_cast<int>(v.head_dim());
  const int y0 = blockIdx.x * YT, h = blockIdx.y, bt = blockIdx.z;
  const std::int64_t C = a.seq();
  const auto [a_s, b_s, v_s, state, A, pw] = carve_shared<causal_decay_product_shared>(X);
  const float lambda = decay.lambda[h];
  for (int k = threadIdx.x; k <= c; k += blockDim.x) pw[k] = static_cast<float>(pow(double(lambda), double(k)));
  for (int k = threadIdx.x; k < X * YT; k += blockDim.x) state[k] = 0.0f;
  auto time = [&](std::int64_t t) { return reverse ? C - 1 - t : t; };
  for (std::int64_t t0 = 0; t0 < C; t0 += c) {
    __syncthreads();
    for (int k = threadIdx.x; k < c * X; k += blockDim.x) {
      const int i = k / X, x = k % X;
      const bool ok = t0 + i < C;
      a_s[k] = ok ? to_float(a(bt, time(t0 + i), h, x)) : 0.0f;
      b_s[k] = ok ? to_float(b(bt, time(t0 + i), h, x)) : 0.0f;
    }
    for (int k = threadIdx.x; k < c * YT; k += blockDim.x) {
      const int i = k / YT, y = y0 + k % YT;
      v_s[k] = (t0 + i < C && y < Y) ? to_float(v(bt, time(t0 + i), h, y)) : 0.0f;
    }
    __syncthreads();
    for (int k = threadIdx.x; k < c * c; k += blockDim.x) {
      const int i = k / c, j = k % c;
      float dot = 0.0f;
      if (j <= i)
        for (int x = 0; x < X; ++x) dot += a_s[i * X + x] * b_s[j * X + x];
      A[k] = j <= i ? pw[i - j] * dot : 0.0f;
    }
    __syncthreads();
    for (int k = threadIdx.x; k < c * YT; k += blockDim.x) {
      const int i = k / YT, yy = k % YT;
      if (t0 + i >= C || y0 + yy >= Y) continue;
      float intra = 0.0f, inter = 0.0f;
      for (int j = 0; j <= i; ++j) intra += A[i * c + j] * v_s[j * YT + yy];
      for (int x = 0; x < X; ++x) inter += a_s[i * X + x] * state[x * YT + yy];
      out(bt, time(t0 + i), h, y0 + yy) = from_float<T>(intra + pw[i + 1] * inter);
    }
    __syncthreads();
    for (int k = threadIdx.x; k < X * YT; k += blockDim.x) {
      const int x = k / YT, yy = k % YT;
      float add = 0.0f;
      for (int j = 0; j < c; ++j) add += pw[c - 1 - j] * b_s[j * X + x] * v_s[j * YT + yy];
      state[k] = pw[c] * state[k] + add;
    }
  }
}

//! Shared memory of weighted_outer_sum, all fp32.
struct weighted_outer_sum_shared {
  static constexpr int tile = 16;    //!< rows and columns of m one block computes
  static constexpr int tokens = 64;  //!< tokens per step
  float (*a)[tile], (*b)[tile];      //!< [tokens][tile]: the step's columns of a and b
  float* w;                          //!< [tokens]: the step's token weights
  //! Takes the arrays from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE explicit weighted_outer_sum_shared(Carver& carver)
      : a(carver.template take<float[tile]>(tokens)), b(carver.template take<float[tile]>(tokens)),
        w(carver.template take<float>(tokens)) {}
};

//! m[x][y] = sum_i w(i) a_i[x] b_i[y] over the chunk; one block per 16 x 16 tile of (x, y), head, batch.
template <class T>
__global__ void weighted_outer_sum(tensor_view<const T> a, tensor_view<const T> b, state_view m, decay_table decay,
                                   weight w) {
  constexpr int tile = weighted_outer_sum_shared::tile, tokens = weighted_outer_sum_shared::tokens;
  const auto [a_s, b_s, w_s] = carve_shared<weighted_outer_sum_shared>();
  const int X = static_cast<int>(a.head_dim()), Y = static_cast<int>(b.head_dim());
  const int tiles_y = (Y + tile - 1) / tile;
  const int x0 = (blockIdx.x / tiles_y) * tile, y0 = (blockIdx.x % tiles_y) * tile, h = blockIdx.y, bt = blockIdx.z;
  const int tx = threadIdx.x / tile, ty = threadIdx.x % tile;
  const std::int64_t C = a.seq();
  float acc = 0.0f;
  for (std::int64_t t0 = 0; t0 < C; t0 += tokens) {
    __syncthreads();
    for (int k = threadIdx.x; k < tokens * tile; k += blockDim.x) {
      const int i = k / tile, col = k % tile;
      const bool ok = t0 + i < C;
      a_s[i][col] = ok && x0 + col < X ? to_float(a(bt, t0 + i, h, x0 + col)) : 0.0f;
      b_s[i][col] = ok && y0 + col < Y ? to_float(b(bt, t0 + i, h, y0 + col)) : 0.0f;
    }
    for (int i = threadIdx.x; i < tokens; i += blockDim.x)
      w_s[i] = t0 + i < C ? token_weight(w, decay.lambda[h], t0 + i, C) : 0.0f;
    __syncthreads();
    for (int i = 0; i < tokens; ++i) acc += w_s[i] * a_s[i][tx] * b_s[i][ty];
  }
  if (x0 + tx < X && y0 + ty < Y) m(bt, h, x0 + tx, y0 + ty) = acc;
}

//! Shared memory of add_rows_times_state for X columns of a, all fp32.
struct add_rows_times_state_shared {
  static constexpr int y_tile = 32;  //!< columns of out one block computes
  static constexpr int tokens = 32;  //!< tokens per step
  float* state;                      //!< [X][y_tile]: the block's columns of S
  float* a;                          //!< [tokens][X]: the step's rows of a
  //! Takes the arrays from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE add_rows_times_state_shared(Carver& carver, int X)
      : state(carver.template take<float>(X * y_tile)), a(carver.template take<float>(tokens * X)) {}
};

//! out_i[y] += w(i) sum_x a_i[x] S[x][y] (S read transposed, S[y][x], with `transposed`); one
//! block per (Y tile of 32, batch * head) and a grid-stride walk over tiles of 32 tokens.
template <class T>
__global__ void add_rows_times_state(tensor_view<const T> a, const_state_view s, bool transposed, tensor_view<T> out,
                                     decay_table decay, weight w) {
  constexpr int YT = add_rows_times_state_shared::y_tile, tokens = add_rows_times_state_shared::tokens;
  const int X = static_cast<int>(a.head_dim()), Y = static_cast<int>(out.head_dim());
  const int H = static_cast<int>(a.heads());
  const int y0 = blockIdx.x * YT, h = blockIdx.z % H, bt = blockIdx.z / H;
  const std::int64_t C = a.seq();
  const auto [s_s, a_s] = carve_shared<add_rows_times_state_shared>(X);
  for (int k = threadIdx.x; k < X * YT; k += blockDim.x) {
    const int x = k / YT, y = y0 + k % YT;
    s_s[k] = y < Y ? (transposed ? s(bt, h, y, x) : s(bt, h, x, y)) : 0.0f;
  }
  for (std::int64_t t0 = static_cast<std::int64_t>(blockIdx.y) * tokens; t0 < C;
       t0 += static_cast<std::int64_t>(gridDim.y) * tokens) {
    __syncthreads();
    for (int k = threadIdx.x; k < tokens * X; k += blockDim.x) {
      const int i = k / X, x = k % X;
      a_s[k] = t0 + i < C ? to_float(a(bt, t0 + i, h, x)) : 0.0f;
    }
    __syncthreads();
    for (int k = threadIdx.x; k < tokens * YT; k += blockDim.x) {
      const int i = k / YT, yy = k % YT;
      if (t0 + i >= C || y0 + yy >= Y) continue;
      float sum = 0.0f;
      for (int x = 0; x < X; ++x) sum += a_s[i * X + x] * s_s[x * YT + yy];
      T& o = out(bt, t0 + i, h, y0 + yy);
      o = from_float<T>(to_float(o) + token_weight(w, decay.lambda[h], t0 + i, C) * sum);
    }
  }
}

//! out = lambda^n in + m, element-wise (in empty: out = m).
// static: a kernel defined in a header gets internal linkage, so several .cu files may include it.
[[maybe_unused]] static __global__ void state_update_kernel(decay_table decay, std::int64_t n, const_state_view in,
                                                            const_state_view m, state_view out) {
  const std::int64_t total = out.size(), per_head = out.extent(2) * out.extent(3), H = out.extent(1);
  for (std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t h = (k / per_head) % H;
    const float scale = static_cast<float>(pow(static_cast<double>(decay.lambda[h]), static_cast<double>(n)));
    out.data_handle()[k] = (in.size() ? scale * in.data_handle()[k] : 0.0f) + m.data_handle()[k];
  }
}

//! Grid, threads and dynamic shared memory of one launch.
struct launch_shape {
  dim3 grid;                  //!< blocks
  unsigned threads;           //!< threads per block
  std::size_t shared_bytes;   //!< dynamic shared memory per block
};

//! causal_decay_product for out = product(a, b, v) with v's head dim Y.
template <class T>
launch_shape causal_decay_product_shape(const tensor_view<const T>& a, std::int64_t Y) {
  constexpr int YT = causal_decay_product_shared::y_tile;
  return {dim3(static_cast<unsigned>((Y + YT - 1) / YT), static_cast<unsigned>(a.heads()),
               static_cast<unsigned>(a.batch())),
          128, shared_bytes<causal_decay_product_shared>(static_cast<int>(a.head_dim()))};
}

//! weighted_outer_sum of a (X columns) and b (Y columns).
template <class T>
launch_shape weighted_outer_sum_shape(const tensor_view<const T>& a, std::int64_t Y) {
  constexpr int tile = weighted_outer_sum_shared::tile;
  const unsigned tiles = static_cast<unsigned>(((a.head_dim() + tile - 1) / tile) * ((Y + tile - 1) / tile));
  return {dim3(tiles, static_cast<unsigned>(a.heads()), static_cast<unsigned>(a.batch())), tile * tile,
          shared_bytes<weighted_outer_sum_shared>()};
}

//! add_rows_times_state for rows of a into an output of Y columns.
template <class T>
launch_shape add_rows_times_state_shape(const tensor_view<const T>& a, std::int64_t Y) {
  constexpr int YT = add_rows_times_state_shared::y_tile, tokens = add_rows_times_state_shared::tokens;
  const std::int64_t token_tiles = (a.seq() + tokens - 1) / tokens;
  return {dim3(static_cast<unsigned>((Y + YT - 1) / YT), static_cast<unsigned>(token_tiles < 65535 ? token_tiles : 65535),
               static_cast<unsigned>(a.batch() * a.heads())),
          128, shared_bytes<add_rows_times_state_shared>(static_cast<int>(a.head_dim()))};
}

}  // namespace linear_kernels
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
