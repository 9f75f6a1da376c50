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

#include <seqpar/policy/gated_linear_policy.hpp>
#include <seqpar/policy/linear_state.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! Plain loops in double over host memory; any element type, D and E. Gates are fp32 views
//! [B, C, H, 1] (a scalar per head and token) or [B, C, H, D] (a vector per key dim).
struct gated_linear_reference {
  //! Opts into seqpar::gated_linear_attention_policy.
  using policy_concept = gated_linear_attention_policy_tag;

  //! Host memory.
  memory_space memory() const { return memory_space::host; }
  //! Every element type, D and E.
  bool supports(dtype, std::int64_t, std::int64_t) const { return true; }

  //! o = intra-chunk attention with the gates' decays
  template <class T>
  void forward_intra(const gated_chunk<T>& c, tensor_view<T> o, stream_ref) const {
    const auto& q = c.q;
    const auto& k = c.k;
    const auto& v = c.v;
    const auto& g = c.g;
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
  void state_contribution(const gated_chunk<T>& c, state_view m, stream_ref) const {
    decayed_outer_sum(c.k, c.v, c.g, m, /*to_end=*/true);
  }

  //! o += (q_i * exp(G_i))^T kv
  template <class T>
  void forward_inter(const gated_chunk<T>& c, const_state_view kv, tensor_view<T> o, stream_ref) const {
    const auto& q = c.q;
    const auto& g = c.g;
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
  void chunk_decay(tensor_view<const float> g, chunk_decay_view total, stream_ref) const {
    const std::int64_t D = total.extent(2);
    for_each_head(g, [&](std::int64_t b, std::int64_t h) {
      const auto G = cumulative(g, b, h, D);
      for (std::int64_t d = 0; d < D; ++d)
        total(b, h, d) = g.seq() ? static_cast<float>(G[(g.seq() - 1) * D + d]) : 0.0f;
    });
  }

  //! out = diag(exp(total)) in + m (in empty: out = m); out may alias in.
  void state_update(const_chunk_decay_view total, const_state_view in, const_state_view m, state_view out,
                    stream_ref) const {
    for (std::int64_t b = 0; b < out.extent(0); ++b)
      for (std::int64_t h = 0; h < out.extent(1); ++h)
        for (std::int64_t d = 0; d < out.extent(2); ++d) {
          const double scale = std::exp(double(total(b, h, d)));
          for (std::int64_t e = 0; e < out.extent(3); ++e)
            out(b, h, d, e) = static_cast<float>((in.size() ? scale * in(b, h, d, e) : 0.0) + m(b, h, d, e));
        }
  }

  //! dq, dk, dv and dg of the intra term (written).
  template <class T>
  void backward_intra(const gated_chunk<T>& c, const linear_gradients<T>& grads, stream_ref) const {
    for_each_head(c.q, [&](std::int64_t b, std::int64_t h) {
      const head_gradients grad = gradients(c.q, c.k, c.v, c.dout, c.g, {}, {}, b, h, /*intra=*/true);
      store(grad, b, h, grads.dq, grads.dk, grads.dv, grads.dg, /*add=*/false);
    });
  }

  //! gs = sum_i (q_i * exp(G_i)) dO_i^T: the gradient of the state the chunk receives.
  template <class T>
  void backward_state_contribution(const gated_chunk<T>& c, state_view gs, stream_ref) const {
    decayed_outer_sum(c.q, c.dout, c.g, gs, /*to_end=*/false);
  }

  //! Adds to dq, dk, dv and dg the gradients of the inter term (incoming state kv) and of the
  //! state passed on (gradient gs), including the gate's share of diag(exp(G_{C-1})) kv. Either
  //! state may be empty (zero).
  template <class T>
  void backward_inter(const gated_chunk<T>& c, const_state_view kv, const_state_view gs,
                      const linear_gradients<T>& grads, stream_ref) const {
    for_each_head(c.q, [&](std::int64_t b, std::int64_t h) {
      const head_gradients grad = gradients(c.q, c.k, c.v, c.dout, c.g, kv, gs, b, h, /*intra=*/false);
      store(grad, b, h, grads.dq, grads.dk, grads.dv, grads.dg, /*add=*/true);
    });
  }

 private:
  // out[d][e] = sum_j w_j[d] a_j[d] c_j[e], w_j = exp(G_{C-1} - G_j) (to_end: decayed to the chunk's
  // end) or exp(G_j) (from the chunk's start).
  template <class T>
  static void decayed_outer_sum(const tensor_view<const T>& a, const tensor_view<const T>& c,
                                const tensor_view<const float>& g, const state_view& out, bool to_end) {
    const std::int64_t C = a.seq(), D = a.head_dim(), E = c.head_dim();
    for_each_head(a, [&](std::int64_t b, std::int64_t h) {
      const auto G = cumulative(g, b, h, D);
      std::vector<double> sum(D * E, 0.0);
      for (std::int64_t j = 0; j < C; ++j)
        for (std::int64_t d = 0; d < D; ++d) {
          const double w = std::exp(to_end ? G[(C - 1) * D + d] - G[j * D + d] : G[j * D + d]);
          for (std::int64_t e = 0; e < E; ++e) sum[d * E + e] += w * x(a, b, j, h, d) * x(c, b, j, h, e);
        }
      for (std::int64_t d = 0; d < D; ++d)
        for (std::int64_t e = 0; e < E; ++e) out(b, h, d, e) = static_cast<float>(sum[d * E + e]);
    });
  }

  // One head's gradients before the gates' reverse sum: q, k [C * D], v [C * E], and G [C * D],
  // the gradient of the cumulative log-gates.
  struct head_gradients {
    std::vector<double> q, k, v, G;
  };

  // The intra term's gradients (intra), or those of the inter term from kv and of the state passed
  // on from gs (empty states: zero), of batch b and head h.
  template <class T>
  static head_gradients gradients(const tensor_view<const T>& q, const tensor_view<const T>& k,
                                  const tensor_view<const T>& v, const tensor_view<const T>& dout,
                                  const tensor_view<const float>& g, const const_state_view& kv,
                                  const const_state_view& gs, std::int64_t b, std::int64_t h, bool intra) {
    const std::int64_t C = q.seq(), D = q.head_dim(), E = v.head_dim(), last = C - 1;
    const auto G = cumulative(g, b, h, D);
    head_gradients grad{std::vector<double>(C * D, 0.0), std::vector<double>(C * D, 0.0),
                        std::vector<double>(C * E, 0.0), std::vector<double>(C * D, 0.0)};
    auto dot_e = [&](auto&& a, auto&& c) {  // sum over e of a(e) c(e)
      double sum = 0;
      for (std::int64_t e = 0; e < E; ++e) sum += a(e) * c(e);
      return sum;
    };
    for (std::int64_t i = 0; intra && i < C; ++i) {
      auto dout_i = [&](std::int64_t e) { return x(dout, b, i, h, e); };
      for (std::int64_t j = 0; j <= i; ++j) {  // query i, key j
        const double vd = dot_e([&](std::int64_t e) { return x(v, b, j, h, e); }, dout_i);
        double score = 0;
        for (std::int64_t d = 0; d < D; ++d) {
          const double w = std::exp(G[i * D + d] - G[j * D + d]), term = x(q, b, i, h, d) * x(k, b, j, h, d) * w;
          score += term;
          grad.q[i * D + d] += x(k, b, j, h, d) * w * vd;
          grad.k[j * D + d] += x(q, b, i, h, d) * w * vd;
          grad.G[i * D + d] += term * vd;
          grad.G[j * D + d] -= term * vd;
        }
        for (std::int64_t e = 0; e < E; ++e) grad.v[j * E + e] += score * dout_i(e);
      }
    }
    if (intra) return grad;
    auto in = [&](std::int64_t d, std::int64_t e) { return kv.size() ? double(kv(b, h, d, e)) : 0.0; };
    auto dm = [&](std::int64_t d, std::int64_t e) { return gs.size() ? double(gs(b, h, d, e)) : 0.0; };
    for (std::int64_t i = 0; i < C; ++i)  // inter: (q_i * exp(G_i))^T kv
      for (std::int64_t d = 0; d < D; ++d) {
        const double w = std::exp(G[i * D + d]);
        const double md =
            dot_e([&](std::int64_t e) { return in(d, e); }, [&](std::int64_t e) { return x(dout, b, i, h, e); });
        grad.q[i * D + d] += w * md;
        grad.G[i * D + d] += x(q, b, i, h, d) * w * md;
      }
    for (std::int64_t d = 0; d < D; ++d) {  // M_out = diag(exp(G_last)) kv + sum_j diag(exp(G_last - G_j)) k_j v_j^T
      grad.G[last * D + d] += std::exp(G[last * D + d]) *
                              dot_e([&](std::int64_t e) { return in(d, e); }, [&](std::int64_t e) { return dm(d, e); });
      for (std::int64_t j = 0; j < C; ++j) {
        const double w = std::exp(G[last * D + d] - G[j * D + d]);
        const double vm =
            dot_e([&](std::int64_t e) { return x(v, b, j, h, e); }, [&](std::int64_t e) { return dm(d, e); });
        const double term = w * x(k, b, j, h, d) * vm;
        grad.k[j * D + d] += w * vm;
        grad.G[last * D + d] += term;
        grad.G[j * D + d] -= term;
        for (std::int64_t e = 0; e < E; ++e) grad.v[j * E + e] += w * x(k, b, j, h, d) * dm(d, e);
      }
    }
    return grad;
  }

  // Writes (or adds) one head's gradients: g_s enters every G_i with i >= s, so dg_s is the reverse
  // cumulative sum of dG (summed over d for a scalar gate).
  template <class T>
  static void store(head_gradients grad, std::int64_t b, std::int64_t h, const tensor_view<T>& dq,
                    const tensor_view<T>& dk, const tensor_view<T>& dv, const tensor_view<float>& dg, bool add) {
    const std::int64_t C = dq.seq(), D = dq.head_dim(), E = dv.head_dim();
    const bool scalar = dg.head_dim() == 1;
    auto put = [&](auto& view, std::int64_t i, std::int64_t d, double value) {
      using U = std::remove_cvref_t<decltype(view(b, i, h, d))>;
      view(b, i, h, d) = from_float<U>(static_cast<float>((add ? double(to_float(view(b, i, h, d))) : 0.0) + value));
    };
    for (std::int64_t s = C - 1; s >= 0; --s) {
      if (s + 1 < C)
        for (std::int64_t d = 0; d < D; ++d) grad.G[s * D + d] += grad.G[(s + 1) * D + d];
      double total = 0;
      for (std::int64_t d = 0; d < D; ++d) total += grad.G[s * D + d];
      for (std::int64_t d = 0; d < (scalar ? 1 : D); ++d) put(dg, s, d, scalar ? total : grad.G[s * D + d]);
    }
    for (std::int64_t i = 0; i < C; ++i) {
      for (std::int64_t d = 0; d < D; ++d) {
        put(dq, i, d, grad.q[i * D + d]);
        put(dk, i, d, grad.k[i * D + d]);
      }
      for (std::int64_t e = 0; e < E; ++e) put(dv, i, e, grad.v[i * E + e]);
    }
  }
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

static_assert(gated_linear_attention_policy<gated_linear_reference>);

SEQPAR_NAMESPACE_END
