//! @file gated_linear_kernels.cuh
//! The kernels of gated_linear_cuda on CUDA cores (nvcc only; the kernel-emulation tests compile
//! them as host code): one walk over a chunk with a running fp32 state decayed by per-token
//! log-gates, which serves every product of gated linear attention, and the gates' gradient, the
//! chunk's log-decay and the state update.
//!
//! Inside a sub-block of 16 tokens the walk uses log-gates summed from the sub-block's start
//! (L_i), and its state is kept as of the token before the sub-block, so every exponent is a
//! non-positive sum of at most 16 gates: no cumulative sum over a long chunk loses precision.
//! Each L_i carries the rounding error of its sum (compensated summation), so that L_i - L_j is
//! as exact as the gates between j and i: with strong gates (|g| near 14) the plain fp32 sums
//! would put errors of 1e-5 into the weights of neighbouring tokens, and the gates' gradient is
//! made of those weights only.
//!
//! A long chunk with few heads is cut into segments that walk in parallel (plan_walk_segments):
//! a states pass walks each segment from zero, scan_walk_states turns the segments' states and
//! log-decays into the state each one starts from, and the output pass walks each from it.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/policy/linear_state.hpp>
#include <seqpar/policy/detail/segment_plan.hpp>
#include <seqpar/policy/detail/shared_layout.cuh>
#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>

#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace gated_kernels {

//! Tokens per sub-block, and columns of the output one block computes.
inline constexpr int sub_block = 16, y_tile = 32;
//! The largest D or E the kernels take.
inline constexpr int max_dim = 256;

//! What one gated_walk launch computes (see gated_walk).
struct walk_mode {
  bool reverse = false;         //!< walk from the chunk's end: pairs j >= i, each step decayed by the next token's gate
  bool gate_on_output = false;  //!< the gates decay out's columns (y) rather than the contracted ones (x)
  bool intra = true;            //!< the chunk's own pairs and their share of the state (else only state_in)
  bool accumulate = false;      //!< out += rather than out =
  bool transposed_in = false;   //!< state_in read as [y][x]
  bool strict = false;          //!< pairs j < i only (j > i reverse): the diagonal left out of out
};

//! How one gated_walk launch covers the chunk: blockIdx.y is the segment s.
struct walk_segments {
  std::int64_t length = 0;     //!< tokens per segment, a multiple of sub_block (0: one segment, the whole chunk)
  bool states_pass = false;    //!< each segment walks from zero; its end state goes to state_out's batch s B + b
  bool from_prefixes = false;  //!< each segment starts from state_in's batch s B + b, read as [x][y]
  chunk_decay_view totals{};   //!< [count B, H, gate width]: each segment's summed walk-step gates (states_pass)
};

//! plan_segments for gated_walk: whole sub-blocks, segments of 64 tokens or more.
inline segment_plan plan_walk_segments(std::int64_t C, std::int64_t blocks_per_segment, int sms) {
  return plan_segments(C, blocks_per_segment, sms, sub_block, 64);
}

//! Shared memory of gated_walk for X contracted columns and Z gate columns, all fp32.
struct walk_shared {
  float *a, *b;    //!< [sub_block][X]: the sub-block's rows of a and b
  float* c;        //!< [sub_block][y_tile]: its rows of c
  float* state;    //!< [X][y_tile]: the running state, as of the token before the sub-block
  float* scores;   //!< [sub_block][sub_block]: the decayed causal a b^T
  float* L;        //!< [sub_block][Z]: log-gates summed from the sub-block's start
  float* L_error;  //!< [sub_block][Z]: what rounding left out of L
  float* total;    //!< [Z]: log-gates summed from the segment's start
  //! Takes the arrays from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE walk_shared(Carver& carver, int X, int Z)
      : a(carver.template take<float>(sub_block * X)), b(carver.template take<float>(sub_block * X)),
        c(carver.template take<float>(sub_block * y_tile)), state(carver.template take<float>(X * y_tile)),
        scores(carver.template take<float>(sub_block * sub_block)), L(carver.template take<float>(sub_block * Z)),
        L_error(carver.template take<float>(sub_block * Z)), total(carver.template take<float>(Z)) {}
};

//! Gate columns a walk keeps per token: 1 for a scalar gate, else the gated dim's (X, or y_tile).
SEQPAR_HOST_DEVICE int walk_gate_columns(std::int64_t gate_width, int X, bool gate_on_output) {
  return gate_width == 1 ? 1 : gate_on_output ? y_tile : X;
}

//! With G the chunk's cumulative log-gates (one column per gated dim, or one for all), every token
//! i of the chunk in walk order gets, forward (pairs j <= i):
//!   gates on x: out_i[y] = sum_{j<=i} (sum_x a_i[x] b_j[x] e^(G_i[x]-G_j[x])) c_j[y]
//!                          + sum_x a_i[x] e^(G_i[x]) S_in[x][y]
//!   gates on y: out_i[y] = sum_{j<=i} (a_i . b_j) c_j[y] e^(G_i[y]-G_j[y])
//!                          + e^(G_i[y]) sum_x a_i[x] S_in[x][y]
//! and state_out = the state after the last token, S = diag(e^(g_t)) S + b_t c_t^T per token (on x
//! or y). Reverse, pairs j >= i and e^(G_j - G_i): the walk runs from the last token and decays by
//! the gate of the token after, so S_in enters token i with e^(G_{C-1} - G_i), and state_out
//! includes token 0's own gate (sum_i e^(G_i) b_i c_i^T). Without `intra` only S_in's term is
//! computed (b and c unread); with `strict`, out leaves out the pair j = i. out may be empty
//! (state_out only; Y is then state_out's). Segments (`seg`) walk their own tokens only, from
//! state_in's or from zero. One block per (y tile, segment, batch x head).
template <class T, class O>
__global__ void gated_walk(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> c,
                           tensor_view<const float> g, tensor_view<O> out, const_state_view state_in,
                           state_view state_out, walk_mode mode, walk_segments seg) {
  constexpr int cb = sub_block, YT = y_tile;
  const int X = static_cast<int>(a.head_dim());
  const int Y = static_cast<int>(out.size() ? out.head_dim() : state_out.extent(3));
  const int y0 = blockIdx.x * YT;
  const std::int64_t s = blockIdx.y, h = blockIdx.z % a.heads(), bt = blockIdx.z / a.heads();
  const std::int64_t C = a.seq(), begin = s * seg.length,
                     end = seg.length && begin + seg.length < C ? begin + seg.length : C;
  const std::int64_t sb = s * a.batch() + bt;  // the batch index of this segment's state
  const bool vec = g.head_dim() != 1, on_y = mode.gate_on_output, with_out = out.size() != 0;
  const int Z = walk_gate_columns(g.head_dim(), X, on_y);
  const auto [a_s, b_s, c_s, state, A, L, L_error, total] = carve_shared<walk_shared>(X, Z);
  // sum of the log-gates of sub-block tokens j+1..i in gate column z
  auto span = [&](int i, int j, int z) {
    return (L[i * Z + z] - L[j * Z + z]) + (L_error[i * Z + z] - L_error[j * Z + z]);
  };
  // the gate column of gated index z (x, or y0 + z); -1 past Y
  auto column = [&](int z) { return !vec ? 0 : on_y ? (y0 + z < Y ? y0 + z : -1) : z; };
  // the gate of walk step t (0 past the segment, and at a reverse walk's first step)
  auto gate = [&](std::int64_t t, int z) {
    const int col = column(z);
    if (t >= end || col < 0 || (mode.reverse && t == 0)) return 0.0f;
    return g(bt, mode.reverse ? C - t : t, h, col);
  };
  auto time = [&](std::int64_t t) { return mode.reverse ? C - 1 - t : t; };
  for (int k = threadIdx.x; k < X * YT; k += blockDim.x) {
    const int x = k / YT, y = y0 + k % YT;
    float start = 0.0f;
    if (seg.from_prefixes && y < Y) start = state_in(sb, h, x, y);
    else if (!seg.states_pass && state_in.size() && y < Y)
      start = mode.transposed_in ? state_in(bt, h, y, x) : state_in(bt, h, x, y);
    state[k] = start;
  }
  for (int z = threadIdx.x; z < Z; z += blockDim.x) total[z] = 0.0f;
  for (std::int64_t t0 = begin; t0 < end; t0 += cb) {
    __syncthreads();
    for (int k = threadIdx.x; k < cb * X; k += blockDim.x) {
      const int i = k / X, x = k % X;
      const bool ok = t0 + i < end;
      a_s[k] = ok && with_out ? to_float(a(bt, time(t0 + i), h, x)) : 0.0f;
      b_s[k] = ok && mode.intra ? to_float(b(bt, time(t0 + i), h, x)) : 0.0f;
    }
    for (int k = threadIdx.x; k < cb * YT; k += blockDim.x) {
      const int i = k / YT, y = y0 + k % YT;
      c_s[k] = t0 + i < end && y < Y && mode.intra ? to_float(c(bt, time(t0 + i), h, y)) : 0.0f;
    }
    for (int k = threadIdx.x; k < cb * Z; k += blockDim.x) L[k] = gate(t0 + k / Z, k % Z);
    __syncthreads();  // then each gate column sums its sub-block's gates in place
    for (int z = threadIdx.x; z < Z; z += blockDim.x) {
      float sum = 0.0f, error = 0.0f;
#pragma unroll 1
      for (int i = 0; i < cb; ++i) {
        const float x = L[i * Z + z], next = sum + x, x_part = next - sum;
        error += (sum - (next - x_part)) + (x - x_part);  // what next = sum + x rounded away
        L[i * Z + z] = sum = next;
        L_error[i * Z + z] = error;
      }
      total[z] += sum;
    }
    __syncthreads();
    if (mode.intra && with_out)
      for (int k = threadIdx.x; k < cb * cb; k += blockDim.x) {
        const int i = k / cb, j = k % cb;
        float dot = 0.0f;
        if (j < i || (j == i && !mode.strict)) {
          if (vec && !on_y)
            for (int x = 0; x < X; ++x) dot += a_s[i * X + x] * b_s[j * X + x] * expf(span(i, j, x));
          else
            for (int x = 0; x < X; ++x) dot += a_s[i * X + x] * b_s[j * X + x];
          if (!vec && !on_y) dot *= expf(span(i, j, 0));
        }
        A[k] = dot;
      }
    __syncthreads();
    if (with_out)
      for (int k = threadIdx.x; k < cb * YT; k += blockDim.x) {
        const int i = k / YT, yy = k % YT;
        if (t0 + i >= end || y0 + yy >= Y) continue;
        const int zo = vec ? yy : 0;  // the output column's gate, gates on y
        float intra = 0.0f, inter = 0.0f;
        if (mode.intra)
          for (int j = 0; j <= i; ++j)
            intra += A[i * cb + j] * c_s[j * YT + yy] * (on_y ? expf(span(i, j, zo)) : 1.0f);
        if (on_y || !vec) {
          for (int x = 0; x < X; ++x) inter += a_s[i * X + x] * state[x * YT + yy];
          inter *= expf(L[i * Z + (on_y ? zo : 0)]);
        } else {
          for (int x = 0; x < X; ++x) inter += a_s[i * X + x] * expf(L[i * Z + x]) * state[x * YT + yy];
        }
        O& o = out(bt, time(t0 + i), h, y0 + yy);
        o = from_float<O>((mode.accumulate ? to_float(o) : 0.0f) + intra + inter);
      }
    __syncthreads();
    for (int k = threadIdx.x; k < X * YT; k += blockDim.x) {
      const int x = k / YT, yy = k % YT;
      const int z = !vec ? 0 : on_y ? yy : x;
      float add = 0.0f;
      if (mode.intra)
        for (int j = 0; j < cb; ++j) add += expf(span(cb - 1, j, z)) * b_s[j * X + x] * c_s[j * YT + yy];
      state[k] = expf(L[(cb - 1) * Z + z]) * state[k] + add;
    }
  }
  if (state_out.size() == 0) return;
  __syncthreads();
  if (seg.states_pass) {  // the segment's own state and log-decay, as they are
    for (int k = threadIdx.x; k < X * YT; k += blockDim.x)
      if (y0 + k % YT < Y) state_out(sb, h, k / YT, y0 + k % YT) = state[k];
    for (int z = threadIdx.x; z < Z; z += blockDim.x)
      if (column(z) >= 0 && ((vec && on_y) || blockIdx.x == 0)) seg.totals(sb, h, column(z)) = total[z];
    return;
  }
  for (int k = threadIdx.x; k < X * YT; k += blockDim.x) {
    const int x = k / YT, y = y0 + k % YT, col = column(!vec ? 0 : on_y ? k % YT : x);
    if (y >= Y) continue;
    const float first = mode.reverse && C > 0 && col >= 0 ? expf(g(bt, 0, h, col)) : 1.0f;
    state_out(bt, h, x, y) = first * state[k];
  }
}

//! Turns the end states of a states pass (`states`, [count B, H, X, Y], each segment walked from
//! zero, and their log-decays `totals`) into the states the segments start from, in place:
//! P_0 = state_in (as gated_walk reads it; zero if empty), P_{s+1} = diag(e^(totals_s)) P_s + m_s,
//! the diag on x or, gates on y, on y. Writes the state after the chunk, P_count, to state_out (if
//! not empty), times e^(g_0) for a reverse walk as gated_walk does. One thread per (b, h, x, y).
[[maybe_unused]] static __global__ void scan_walk_states(state_view states, const_chunk_decay_view totals, int count,
                                                         const_state_view state_in, tensor_view<const float> g,
                                                         state_view state_out, walk_mode mode) {
  const std::int64_t B = states.extent(0) / count, H = states.extent(1), X = states.extent(2), Y = states.extent(3);
  const std::int64_t W = totals.extent(2), n_all = B * H * X * Y;
  for (std::int64_t n = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; n < n_all;
       n += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t y = n % Y, x = n / Y % X, h = n / Y / X % H, bt = n / Y / X / H;
    const std::int64_t col = W == 1 ? 0 : mode.gate_on_output ? y : x;
    float P = !state_in.size() ? 0.0f : mode.transposed_in ? state_in(bt, h, y, x) : state_in(bt, h, x, y);
    for (std::int64_t s = 0; s < count; ++s) {
      float& m = states(s * B + bt, h, x, y);
      const float own = m;
      m = P;
      P = expf(totals(s * B + bt, h, col)) * P + own;
    }
    if (state_out.size() == 0) continue;
    const float first = mode.reverse && g.seq() > 0 ? expf(g(bt, 0, h, col)) : 1.0f;
    state_out(bt, h, x, y) = first * P;
  }
}

//! Per token and head, the parts of dq and dk one term gives (fp32 pq, pk) written (intra, with
//! the diagonal pair the strict walks leave out added back: dq_t = pq_t + k_t (dO_t . v_t), dk_t =
//! pk_t + q_t (dO_t . v_t)) or added (inter) into dq and dk; and, in place of pq and pk's column w
//! (of each gate column w: d = w, or 0 for a scalar gate), what that gate column's gradient sums
//! over tokens: u_t = sum_{d of w} (q_t[d] pq_t[d] - k_t[d] pk_t[d], intra; q_t[d] pq_t[d], inter)
//! into pq, and w_t = sum_{d of w} k_t[d] pk_t[d] into pk. One thread per (batch, token, head).
template <class T>
__global__ void gate_gradient_rows(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> dout,
                                   tensor_view<const T> v, tensor_view<float> pq, tensor_view<float> pk,
                                   std::int64_t W, tensor_view<T> dq, tensor_view<T> dk, bool inter) {
  const std::int64_t C = q.seq(), H = q.heads(), D = q.head_dim(), n_all = q.batch() * C * H;
  for (std::int64_t n = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; n < n_all;
       n += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t h = n % H, t = n / H % C, bt = n / H / C;
    float diagonal = 0.0f;  // dO_t . v_t
    for (std::int64_t e = 0; !inter && e < v.head_dim(); ++e)
      diagonal += to_float(dout(bt, t, h, e)) * to_float(v(bt, t, h, e));
    float u = 0.0f, w = 0.0f;
    for (std::int64_t d = 0; d < D; ++d) {
      const float qd = to_float(q(bt, t, h, d)), kd = to_float(k(bt, t, h, d));
      const float part_q = pq(bt, t, h, d), part_k = pk(bt, t, h, d);
      u += qd * part_q - (inter ? 0.0f : kd * part_k);
      w += kd * part_k;
      T &gq = dq(bt, t, h, d), &gk = dk(bt, t, h, d);
      gq = from_float<T>((inter ? to_float(gq) : 0.0f) + part_q + kd * diagonal);
      gk = from_float<T>((inter ? to_float(gk) : 0.0f) + part_k + qd * diagonal);
      if (W == 1) continue;
      pq(bt, t, h, d) = u, pk(bt, t, h, d) = w;
      u = w = 0.0f;
    }
    if (W == 1) pq(bt, t, h, 0) = u, pk(bt, t, h, 0) = w;
  }
}

//! Shared memory of gate_gradient_scan: four floats per thread.
struct gate_scan_shared {
  float *later, *earlier;  //!< each thread's run sums of u and w, then the sums of the runs after and before it
  float *log_decay, *row;  //!< each thread's share of G_{C-1} and of rowdot(kv, gs), then (first) their totals
  //! Takes the arrays from `carver`.
  template <class Carver>
  SEQPAR_HOST_DEVICE gate_scan_shared(Carver& carver, int threads)
      : later(carver.template take<float>(threads)), earlier(carver.template take<float>(threads)),
        log_decay(carver.template take<float>(threads)), row(carver.template take<float>(threads)) {}
};

//! dg of each gate column (batch, head, w) from gate_gradient_rows' sums u and w, with G_{C-1} the
//! column's summed log-gates and rowdot over the column's key dims:
//! - intra: dg_s = sum_{i >= s} u_i (written);
//! - inter: dg_s += e^(G_{C-1}) rowdot(kv, gs) + sum_{i >= s} u_i + sum_{i < s} w_i.
//! Sums of large terms that cancel would lose the small result in fp32, so each dg_s is formed from
//! the sums that do not cancel. One block per column, each thread a run of consecutive tokens.
[[maybe_unused]] static __global__ void gate_gradient_scan(tensor_view<const float> u, tensor_view<const float> w,
                                                           tensor_view<const float> g, const_state_view kv,
                                                           const_state_view gs, tensor_view<float> dg, bool inter) {
  const std::int64_t C = g.seq(), H = g.heads(), W = g.head_dim(), D = u.head_dim();
  const std::int64_t wc = blockIdx.x % W, h = blockIdx.x / W % H, bt = blockIdx.x / W / H;
  const int me = threadIdx.x, threads = blockDim.x;
  const std::int64_t run = (C + threads - 1) / threads, t0 = me * run, t1 = t0 + run < C ? t0 + run : C;
  const auto [later, earlier, log_decay, row] = carve_shared<gate_scan_shared>(threads);
  float su = 0.0f, sw = 0.0f, sg = 0.0f, sr = 0.0f;
  for (std::int64_t t = t0; t < t1; ++t) {
    su += u(bt, t, h, wc);
    if (inter) sw += w(bt, t, h, wc), sg += g(bt, t, h, wc);
  }
  if (inter && kv.size() && gs.size()) {
    const std::int64_t d0 = W == 1 ? 0 : wc, dims = W == 1 ? D : 1, E = kv.extent(3);
    for (std::int64_t n = me; n < dims * E; n += threads)
      sr += kv(bt, h, d0 + n / E, n % E) * gs(bt, h, d0 + n / E, n % E);
  }
  later[me] = su, earlier[me] = sw, log_decay[me] = sg, row[me] = sr;
  __syncthreads();
  if (me == 0) {  // a few hundred runs: one thread scans them
    float after = 0.0f, before = 0.0f, G = 0.0f, R = 0.0f;
    for (int i = threads - 1; i >= 0; --i) {
      const float own = later[i];
      later[i] = after;
      after += own;
    }
    for (int i = 0; i < threads; ++i) {
      const float own = earlier[i];
      earlier[i] = before;
      before += own;
      G += log_decay[i], R += row[i];
    }
    log_decay[0] = G, row[0] = R;
  }
  __syncthreads();
  if (inter) {
    const float through = expf(log_decay[0]) * row[0];
    float before = earlier[me];
    for (std::int64_t t = t0; t < t1; ++t) {
      dg(bt, t, h, wc) += through + before;
      before += w(bt, t, h, wc);
    }
  }
  float after = later[me];
  for (std::int64_t t = t1 - 1; t >= t0; --t) {
    after += u(bt, t, h, wc);
    float& out = dg(bt, t, h, wc);
    out = (inter ? out : 0.0f) + after;
  }
}

//! total(b, h, d) = sum_t g(b, t, h, d) (a scalar gate's one column for every d): the log of the
//! chunk's decay. One thread per (batch, head, d).
// static: a kernel defined in a header gets internal linkage, so several .cu files may include it.
[[maybe_unused]] static __global__ void gate_totals(tensor_view<const float> g, chunk_decay_view total) {
  const std::int64_t H = total.extent(1), D = total.extent(2), n_all = total.size();
  for (std::int64_t n = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; n < n_all;
       n += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t d = n % D, h = n / D % H, bt = n / D / H;
    float sum = 0.0f;
    for (std::int64_t t = 0; t < g.seq(); ++t) sum += g(bt, t, h, g.head_dim() == 1 ? 0 : d);
    total(bt, h, d) = sum;
  }
}

//! out = diag(e^total) in + m, element-wise (in empty: out = m).
[[maybe_unused]] static __global__ void gated_state_update(const_chunk_decay_view total, const_state_view in,
                                                           const_state_view m, state_view out) {
  const std::int64_t n_all = out.size(), E = out.extent(3), D = out.extent(2), H = out.extent(1);
  for (std::int64_t n = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; n < n_all;
       n += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t d = n / E % D, h = n / E / D % H, bt = n / E / D / H;
    const float kept = in.size() ? expf(total(bt, h, d)) * in.data_handle()[n] : 0.0f;
    out.data_handle()[n] = kept + m.data_handle()[n];
  }
}

//! Per thread, the first logical index n (over batch, token, head and gate column, in that order)
//! of the entries of g it visits that are not a finite log-gate <= 0, and that entry: found[3 m]
//! = n / 2^24, found[3 m + 1] = n % 2^24 (both -1 when none), found[3 m + 2] = the value; m is the
//! thread's index in the grid, whose threads stride over n.
[[maybe_unused]] static __global__ void find_bad_gate(tensor_view<const float> g, float* found) {
  const std::int64_t W = g.head_dim(), H = g.heads(), C = g.seq(), n_all = g.size();
  const std::int64_t me = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t first = -1;
  float value = 0.0f;
  for (std::int64_t n = me; n < n_all && first < 0; n += stride) {
    const float x = g(n / W / H / C, n / W / H % C, n / W % H, n % W);
    if (!(x <= 0.0f && x > -INFINITY)) first = n, value = x;
  }
  found[3 * me] = first < 0 ? -1.0f : static_cast<float>(first >> 24);
  found[3 * me + 1] = first < 0 ? -1.0f : static_cast<float>(first & 0xFFFFFF);
  found[3 * me + 2] = value;
}

}  // namespace gated_kernels
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
