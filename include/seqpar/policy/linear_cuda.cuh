//! @file linear_cuda.cuh
//! linear_cuda: the CUDA linear-attention policy (nvcc only). The chunk is processed in sub-blocks
//! of 16 tokens with a running fp32 D x E state, so work grows linearly with the chunk length;
//! products accumulate in fp32 on CUDA cores. Three kernels serve all seven operations.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/lasp/linear_attention_policy.hpp>

#include <algorithm>
#include <cstdint>

SEQPAR_KERNEL_NAMESPACE_BEGIN
namespace linear_kernels {

//! The most heads and the largest D or E the kernels take.
inline constexpr int max_heads = 256, max_dim = 256;
//! Tokens per sub-block of the chunked product.
inline constexpr int sub_block = 16;

//! Per-head decays, passed by value to kernels.
struct decay_table {
  float lambda[max_heads];
};

//! How a token's weight depends on its index i in a chunk of C: lambda^(i+1) or lambda^(C-1-i).
enum class weight { lq, lk };

__device__ inline float token_weight(weight w, float lambda, std::int64_t i, std::int64_t C) {
  return static_cast<float>(pow(static_cast<double>(lambda), static_cast<double>(w == weight::lq ? i + 1 : C - 1 - i)));
}

//! out_i = sum_{j <= i} lambda^(i-j) (a_i . b_j) v_j for every token i of the chunk (with `reverse`,
//! time runs backwards: j >= i). a, b have X columns, v and out Y; one block per (Y tile, head, batch).
template <class T>
__global__ void causal_decay_product(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v,
                                     tensor_view<T> out, decay_table decay, bool reverse) {
  constexpr int c = sub_block, YT = 32;
  extern __shared__ float smem[];
  const int X = static_cast<int>(a.head_dim()), Y = static_cast<int>(v.head_dim());
  const int y0 = blockIdx.x * YT, h = blockIdx.y, bt = blockIdx.z;
  const std::int64_t C = a.seq();
  float* a_s = smem;              // [c][X]
  float* b_s = a_s + c * X;       // [c][X]
  float* v_s = b_s + c * X;       // [c][YT]
  float* state = v_s + c * YT;    // [X][YT]
  float* A = state + X * YT;      // [c][c]
  float* pw = A + c * c;          // lambda^0 .. lambda^c
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

//! m[x][y] = sum_i w(i) a_i[x] b_i[y] over the chunk; one block per 16 x 16 tile of (x, y), head, batch.
template <class T>
__global__ void weighted_outer_sum(tensor_view<const T> a, tensor_view<const T> b, state_view m, decay_table decay,
                                   weight w) {
  constexpr int tile = 16, tokens = 64;
  __shared__ float a_s[tokens][tile], b_s[tokens][tile], w_s[tokens];
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

//! out_i[y] += w(i) sum_x a_i[x] S[x][y] (S read transposed, S[y][x], with `transposed`); one
//! block per (Y tile of 32, batch * head) and a grid-stride walk over tiles of 32 tokens.
template <class T>
__global__ void add_rows_times_state(tensor_view<const T> a, const_state_view s, bool transposed, tensor_view<T> out,
                                     decay_table decay, weight w) {
  constexpr int YT = 32, tokens = 32;
  extern __shared__ float smem[];
  const int X = static_cast<int>(a.head_dim()), Y = static_cast<int>(out.head_dim());
  const int H = static_cast<int>(a.heads());
  const int y0 = blockIdx.x * YT, h = blockIdx.z % H, bt = blockIdx.z / H;
  const std::int64_t C = a.seq();
  float* s_s = smem;            // [X][YT]
  float* a_s = s_s + X * YT;    // [tokens][X]
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
__global__ void state_update_kernel(decay_table decay, std::int64_t n, const_state_view in, const_state_view m,
                                    state_view out) {
  const std::int64_t total = out.size(), per_head = out.extent(2) * out.extent(3), H = out.extent(1);
  for (std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t h = (k / per_head) % H;
    const float scale = static_cast<float>(pow(static_cast<double>(decay.lambda[h]), static_cast<double>(n)));
    out.data_handle()[k] = (in.size() ? scale * in.data_handle()[k] : 0.0f) + m.data_handle()[k];
  }
}

}  // namespace linear_kernels

//! The CUDA linear-attention policy: any element type, D and E up to 256, up to 256 heads;
//! device memory, every operation on the stream it is given.
struct linear_cuda {
  //! Opts into seqpar::linear_attention_policy.
  using policy_concept = linear_attention_policy_tag;

  //! Device memory.
  memory_space memory() const { return memory_space::device; }
  //! D and E up to 256.
  bool supports(dtype, std::int64_t D, std::int64_t E) const {
    return D >= 1 && E >= 1 && D <= linear_kernels::max_dim && E <= linear_kernels::max_dim;
  }

  //! o = ((Q K^T) * M) V
  template <class T>
  void forward_intra(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                     std::span<const float> decay, tensor_view<T> o, stream_t stream = nullptr) const {
    product(q, k, v, o, decay, false, stream);
  }
  //! m = K^T LK V
  template <class T>
  void state_contribution(tensor_view<const T> k, tensor_view<const T> v, std::span<const float> decay, state_view m,
                          stream_t stream = nullptr) const {
    outer_sum(k, v, m, decay, linear_kernels::weight::lk, stream);
  }
  //! o += LQ Q KV
  template <class T>
  void forward_inter(tensor_view<const T> q, std::span<const float> decay, const_state_view kv, tensor_view<T> o,
                     stream_t stream = nullptr) const {
    add_rows(q, kv, false, o, decay, linear_kernels::weight::lq, stream);
  }
  //! out = lambda^n in + m
  void state_update(std::span<const float> decay, std::int64_t n, const_state_view in, const_state_view m,
                    state_view out, stream_t stream = nullptr) const {
    if (out.size() == 0) return;
    const auto table = make_table(decay);
    const unsigned blocks = static_cast<unsigned>(std::min<std::int64_t>((out.size() + 255) / 256, 4096));
    linear_kernels::state_update_kernel<<<blocks, 256, 0, stream>>>(table, n, in, m, out);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }
  //! dq = A K; dk = A^T Q; dv = ((Q K^T) * M)^T dO, with A = (dO V^T) * M
  template <class T>
  void backward_intra(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                      tensor_view<const T> dout, std::span<const float> decay, tensor_view<T> dq, tensor_view<T> dk,
                      tensor_view<T> dv, stream_t stream = nullptr) const {
    product(dout, v, k, dq, decay, false, stream);  // dq_i = sum_{j<=i} w (do_i . v_j) k_j
    product(v, dout, q, dk, decay, true, stream);   // dk_j = sum_{i>=j} w (v_j . do_i) q_i
    product(k, q, dout, dv, decay, true, stream);   // dv_j = sum_{i>=j} w (k_j . q_i) do_i
  }
  //! g = Q^T LQ dO
  template <class T>
  void backward_state_contribution(tensor_view<const T> q, tensor_view<const T> dout, std::span<const float> decay,
                                   state_view g, stream_t stream = nullptr) const {
    outer_sum(q, dout, g, decay, linear_kernels::weight::lq, stream);
  }
  //! dq += LQ dO KV^T; dk += LK V G^T; dv += LK K G
  template <class T>
  void backward_inter(tensor_view<const T>, tensor_view<const T> k, tensor_view<const T> v, tensor_view<const T> dout,
                      std::span<const float> decay, const_state_view kv, const_state_view g, tensor_view<T> dq,
                      tensor_view<T> dk, tensor_view<T> dv, stream_t stream = nullptr) const {
    add_rows(dout, kv, true, dq, decay, linear_kernels::weight::lq, stream);
    add_rows(v, g, true, dk, decay, linear_kernels::weight::lk, stream);
    add_rows(k, g, false, dv, decay, linear_kernels::weight::lk, stream);
  }

 private:
  static linear_kernels::decay_table make_table(std::span<const float> decay) {
    if (decay.size() > static_cast<std::size_t>(linear_kernels::max_heads))
      SEQPAR_FAIL(errc::unsupported, "decay: linear_cuda takes up to " << linear_kernels::max_heads << " heads, got "
                                                                       << decay.size());
    linear_kernels::decay_table t{};
    for (std::size_t h = 0; h < decay.size(); ++h) t.lambda[h] = decay[h];
    return t;
  }

  template <class Kernel>
  static void allow_shared(Kernel kernel, std::size_t bytes) {
    if (bytes > 48 * 1024)
      SEQPAR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }

  template <class T>
  static void product(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v, tensor_view<T> out,
                      std::span<const float> decay, bool reverse, stream_t stream) {
    if (out.size() == 0) return;
    constexpr int c = linear_kernels::sub_block, YT = 32;
    const std::int64_t X = a.head_dim();
    const std::size_t bytes = sizeof(float) * (2 * c * X + c * YT + X * YT + c * c + c + 1);
    allow_shared(linear_kernels::causal_decay_product<T>, bytes);
    const dim3 grid(static_cast<unsigned>((out.head_dim() + YT - 1) / YT), static_cast<unsigned>(a.heads()),
                    static_cast<unsigned>(a.batch()));
    linear_kernels::causal_decay_product<T><<<grid, 128, bytes, stream>>>(a, b, v, out, make_table(decay), reverse);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }

  template <class T>
  static void outer_sum(tensor_view<const T> a, tensor_view<const T> b, state_view m, std::span<const float> decay,
                        linear_kernels::weight w, stream_t stream) {
    if (m.size() == 0) return;
    const unsigned tiles = static_cast<unsigned>(((a.head_dim() + 15) / 16) * ((b.head_dim() + 15) / 16));
    const dim3 grid(tiles, static_cast<unsigned>(a.heads()), static_cast<unsigned>(a.batch()));
    linear_kernels::weighted_outer_sum<T><<<grid, 256, 0, stream>>>(a, b, m, make_table(decay), w);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }

  template <class T>
  static void add_rows(tensor_view<const T> a, const_state_view s, bool transposed, tensor_view<T> out,
                       std::span<const float> decay, linear_kernels::weight w, stream_t stream) {
    if (out.size() == 0) return;
    constexpr int YT = 32, tokens = 32;
    const std::int64_t X = a.head_dim();
    const std::size_t bytes = sizeof(float) * (X * YT + tokens * X);
    allow_shared(linear_kernels::add_rows_times_state<T>, bytes);
    const dim3 grid(static_cast<unsigned>((out.head_dim() + YT - 1) / YT),
                    static_cast<unsigned>(std::min<std::int64_t>((a.seq() + tokens - 1) / tokens, 65535)),
                    static_cast<unsigned>(a.batch() * a.heads()));
    linear_kernels::add_rows_times_state<T><<<grid, 128, bytes, stream>>>(a, s, transposed, out, make_table(decay), w);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }
};

static_assert(linear_attention_policy<linear_cuda>);

SEQPAR_KERNEL_NAMESPACE_END
