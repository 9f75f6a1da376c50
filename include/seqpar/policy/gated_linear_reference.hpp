//! @file gated_linear_reference.hpp
//! gated_linear_reference: the chunk algebra of linear attention with a data-dependent decay per
//! token (Mamba-2 / gated RetNet: one log-gate per head and token; GLA: one per key dimension), as
//! plain host loops in double: the forward operations a LASP chain or all-gather needs and a
//! chunk's backward with the gates' gradients, the oracle for faster policies.
//!
//! The recurrence, per batch and head: M_t = diag(exp(g_t)) M_{t-1} + k_t v_t^T and o_t = q_t^T M_t,
//! with log-gates g_t <= 0 (fp32) of D entries, or one entry standing for all D. Over a chunk of C
//! tokens with incoming state M_in and cumulative log-gates G_i = g_0 + ... + g_i (per key dim d):
//! - intra:        o_i  = sum_{j <= i} (sum_d q_i[d] k_j[d] exp(G_i[d] - G_j[d])) v_j
//! - inter:        o_i += (q_i * exp(G_i))^T M_in
//! - contribution: m    = sum_j diag(exp(G_{C-1} - G_j)) k_j v_j^T
//! - update:       M_out = diag(exp(G_{C-1})) M_in + m
//! Only differences G_i - G_j with j <= i (never positive) and G_i itself are exponentiated, so a
//! long chunk cannot overflow. A constant decay lambda is the gate g = log(lambda).
#pragma once

#include <seqpar/policy/linear_state.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! The log of a chunk's total decay per batch, head and key dim, [B, H, D] (fp32): G_{C-1}.
using chunk_decay_view = cuda::std::mdspan<float, cuda::std::dextents<std::int64_t, 3>>;
//! Read-only chunk_decay_view.
using const_chunk_decay_view = cuda::std::mdspan<const float, cuda::std::dextents<std::int64_t, 3>>;

//! Plain loops in double over host memory; any element type, D and E. Gates are fp32 views
//! [B, C, H, 1] (a scalar per head and token) or [B, C, H, D] (a vector per key dim).
struct gated_linear_reference {
  //! o = intra-chunk attention with the gates' decays
  template <class T>
  void forward_intra(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                     tensor_view<const float> g, tensor_view<T> o) const {
    const std::int64_t C = q.seq(), D = q.head_dim(), E = v.head_dim();
    for_each_head(q, [&](std::int64_t b, std::int64_t h) {
      const auto G = cumulative(g, b, h, D);
      std::vector<double> row(E);
      for (std::int64_t i = 0; i < C; ++i) {
        std::fill(row.begin(), row.end(), 0.0);
        for (std::int64_t j = 0; j <= i; ++j) {
          double a = 0;
          for (std::int64_t d = 0; d < D; ++d)
            a += x(q, b, i, h, d) * x(k, b, j, h, d) * std::exp(G[i * D + d] - G[j * D + d]);
          for (std::int64_t e = 0; e < E; ++e) row[e] += a * x(v, b, j, h, e);
        }
        for (std::int64_t e = 0; e < E; ++e) o(b, i, h, e) = from_float<T>(static_cast<float>(row[e]));
      }
    });
  }

  //! m = sum_j diag(exp(G_{C-1} - G_j)) k_j v_j^T
  template <class T>
  void state_contribution(tensor_view<const T> k, tensor_view<const T> v, tensor_view<const float> g,
                          state_view m) const {
    const std::int64_t C = k.seq(), D = k.head_dim(), E = v.head_dim();
    for_each_head(k, [&](std::int64_t b, std::int64_t h) {
      const auto G = cumulative(g, b, h, D);
      std::vector<double> sum(D * E, 0.0);  // token by token, each k_j decayed to the chunk's end
      for (std::int64_t j = 0; j < C; ++j)
        for (std::int64_t d = 0; d < D; ++d) {
          const double kd = std::exp(G[(C - 1) * D + d] - G[j * D + d]) * x(k, b, j, h, d);
          for (std::int64_t e = 0; e < E; ++e) sum[d * E + e] += kd * x(v, b, j, h, e);
        }
      for (std::int64_t d = 0; d < D; ++d)
        for (std::int64_t e = 0; e < E; ++e) m(b, h, d, e) = static_cast<float>(sum[d * E + e]);
    });
  }

  //! o += (q_i * exp(G_i))^T kv
  template <class T>
  void forward_inter(tensor_view<const T> q, tensor_view<const float> g, const_state_view kv, tensor_view<T> o) const {
    const std::int64_t C = q.seq(), D = q.head_dim(), E = o.head_dim();
    for_each_head(q, [&](std::int64_t b, std::int64_t h) {
      const auto G = cumulative(g, b, h, D);
      for (std::int64_t i = 0; i < C; ++i)
        for (std::int64_t e = 0; e < E; ++e) {
          double sum = 0;
          for (std::int64_t d = 0; d < D; ++d) sum += x(q, b, i, h, d) * std::exp(G[i * D + d]) * kv(b, h, d, e);
          o(b, i, h, e) = from_float<T>(static_cast<float>(x(o, b, i, h, e) + sum));
        }
    });
  }

  //! total(b, h, d) = G_{C-1}[d], the log of the chunk's decay (what an all-gather carries with m).
  void chunk_decay(tensor_view<const float> g, std::int64_t D, chunk_decay_view total) const {
    for (std::int64_t b = 0; b < g.batch(); ++b)
      for (std::int64_t h = 0; h < g.heads(); ++h) {
        const auto G = cumulative(g, b, h, D);
        for (std::int64_t d = 0; d < D; ++d)
          total(b, h, d) = g.seq() ? static_cast<float>(G[(g.seq() - 1) * D + d]) : 0.0f;
      }
  }

  //! out = diag(exp(total)) in + m (in empty: out = m); out may alias in.
  void state_update(const_chunk_decay_view total, const_state_view in, const_state_view m, state_view out) const {
    for (std::int64_t b = 0; b < out.extent(0); ++b)
      for (std::int64_t h = 0; h < out.extent(1); ++h)
        for (std::int64_t d = 0; d < out.extent(2); ++d) {
          const double scale = std::exp(double(total(b, h, d)));
          for (std::int64_t e = 0; e < out.extent(3); ++e)
            out(b, h, d, e) = static_cast<float>((in.size() ? scale * in(b, h, d, e) : 0.0) + m(b, h, d, e));
        }
  }

  //! The gradients of one chunk, given dO (of o = intra + inter) and dm_out (of the state the chunk
  //! passes on, M_out; empty: none): dq, dk, dv, the log-gates' dg (the gate's shape: [B, C, H, 1]
  //! sums over d) and dkv_in, the incoming state's gradient (written when not empty). kv_in is
  //! the incoming state (empty: zero).
  template <class T>
  void chunk_backward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                      tensor_view<const float> g, tensor_view<const T> dout, const_state_view kv_in,
                      const_state_view dm_out, tensor_view<T> dq, tensor_view<T> dk, tensor_view<T> dv,
                      tensor_view<float> dg, state_view dkv_in) const {
    const std::int64_t C = q.seq(), D = q.head_dim(), E = v.head_dim();
    for_each_head(q, [&](std::int64_t b, std::int64_t h) {
      const auto G = cumulative(g, b, h, D);
      auto in = [&](std::int64_t d, std::int64_t e) { return kv_in.size() ? double(kv_in(b, h, d, e)) : 0.0; };
      auto dm = [&](std::int64_t d, std::int64_t e) { return dm_out.size() ? double(dm_out(b, h, d, e)) : 0.0; };
      auto dot_e = [&](auto&& a, auto&& c) {  // sum over e of a(e) c(e)
        double sum = 0;
        for (std::int64_t e = 0; e < E; ++e) sum += a(e) * c(e);
        return sum;
      };
      std::vector<double> gq(C * D, 0.0), gk(C * D, 0.0), gv(C * E, 0.0), gG(C * D, 0.0), gin(D * E, 0.0);
      const std::int64_t last = C - 1;
      for (std::int64_t i = 0; i < C; ++i) {
        auto dout_i = [&](std::int64_t e) { return x(dout, b, i, h, e); };
        for (std::int64_t j = 0; j <= i; ++j) {  // intra: query i, key j
          const double vd = dot_e([&](std::int64_t e) { return x(v, b, j, h, e); }, dout_i);
          double score = 0;
          for (std::int64_t d = 0; d < D; ++d) {
            const double w = std::exp(G[i * D + d] - G[j * D + d]), term = x(q, b, i, h, d) * x(k, b, j, h, d) * w;
            score += term;
            gq[i * D + d] += x(k, b, j, h, d) * w * vd;
            gk[j * D + d] += x(q, b, i, h, d) * w * vd;
            gG[i * D + d] += term * vd;
            gG[j * D + d] -= term * vd;
          }
          for (std::int64_t e = 0; e < E; ++e) gv[j * E + e] += score * dout_i(e);
        }
        for (std::int64_t d = 0; d < D; ++d) {  // inter: (q_i * exp(G_i))^T M_in
          const double w = std::exp(G[i * D + d]);
          const double md = dot_e([&](std::int64_t e) { return in(d, e); }, dout_i);
          gq[i * D + d] += w * md;
          gG[i * D + d] += x(q, b, i, h, d) * w * md;
          for (std::int64_t e = 0; e < E; ++e) gin[d * E + e] += x(q, b, i, h, d) * w * dout_i(e);
        }
      }
      for (std::int64_t d = 0; d < D; ++d) {  // M_out = diag(exp(G_last)) M_in + sum_j ... k_j v_j^T
        const double w_in = std::exp(G[last * D + d]);
        const double through =
            dot_e([&](std::int64_t e) { return in(d, e); }, [&](std::int64_t e) { return dm(d, e); });
        gG[last * D + d] += w_in * through;
        for (std::int64_t e = 0; e < E; ++e) gin[d * E + e] += w_in * dm(d, e);
        for (std::int64_t j = 0; j < C; ++j) {
          const double w = std::exp(G[last * D + d] - G[j * D + d]);
          const double vm =
              dot_e([&](std::int64_t e) { return x(v, b, j, h, e); }, [&](std::int64_t e) { return dm(d, e); });
          const double term = w * x(k, b, j, h, d) * vm;
          gk[j * D + d] += w * vm;
          gG[last * D + d] += term;
          gG[j * D + d] -= term;
          for (std::int64_t e = 0; e < E; ++e) gv[j * E + e] += w * x(k, b, j, h, d) * dm(d, e);
        }
      }
      // g_s enters every G_i with i >= s: dg_s = sum_{i >= s} dG_i (summed over d for a scalar gate).
      const bool scalar = dg.head_dim() == 1;
      for (std::int64_t s = C - 1; s >= 0; --s) {
        if (s + 1 < C)
          for (std::int64_t d = 0; d < D; ++d) gG[s * D + d] += gG[(s + 1) * D + d];
        double total = 0;
        for (std::int64_t d = 0; d < D; ++d) total += gG[s * D + d];
        for (std::int64_t d = 0; d < (scalar ? 1 : D); ++d)
          dg(b, s, h, d) = static_cast<float>(scalar ? total : gG[s * D + d]);
      }
      for (std::int64_t i = 0; i < C; ++i) {
        for (std::int64_t d = 0; d < D; ++d) {
          dq(b, i, h, d) = from_float<T>(static_cast<float>(gq[i * D + d]));
          dk(b, i, h, d) = from_float<T>(static_cast<float>(gk[i * D + d]));
        }
        for (std::int64_t e = 0; e < E; ++e) dv(b, i, h, e) = from_float<T>(static_cast<float>(gv[i * E + e]));
      }
      if (dkv_in.size())
        for (std::int64_t d = 0; d < D; ++d)
          for (std::int64_t e = 0; e < E; ++e) dkv_in(b, h, d, e) = static_cast<float>(gin[d * E + e]);
    });
  }

 private:
  template <class T>
  static double x(const tensor_view<T>& t, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
    return static_cast<double>(to_float(t(b, s, h, d)));
  }
  // G[i * D + d]: the cumulative log-gates of batch b, head h, in double; a scalar gate serves every d.
  static std::vector<double> cumulative(const tensor_view<const float>& g, std::int64_t b, std::int64_t h,
                                        std::int64_t D) {
    const std::int64_t C = g.seq();
    const bool scalar = g.head_dim() == 1;
    std::vector<double> G(static_cast<std::size_t>(C * D));
    for (std::int64_t d = 0; d < D; ++d) {
      double sum = 0;
      for (std::int64_t i = 0; i < C; ++i) G[i * D + d] = sum += g(b, i, h, scalar ? 0 : d);
    }
    return G;
  }
  template <class T, class F>
  static void for_each_head(const tensor_view<T>& t, F&& f) {
    for (std::int64_t b = 0; b < t.batch(); ++b)
      for (std::int64_t h = 0; h < t.heads(); ++h) f(b, h);
  }
};

SEQPAR_NAMESPACE_END
