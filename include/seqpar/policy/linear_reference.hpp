//! @file linear_reference.hpp
//! linear_reference: the plain host linear-attention policy, accumulating in double. The oracle
//! that faster policies are checked against.
#pragma once

#include <seqpar/policy/linear_attention_policy.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! Plain loops over batch, heads and tokens in host memory; any element type, any D and E.
struct linear_reference {
  //! Opts into seqpar::linear_attention_policy.
  using policy_concept = linear_attention_policy_tag;

  //! Host memory.
  memory_space memory() const { return memory_space::host; }
  //! Every element type, D and E.
  bool supports(dtype, std::int64_t, std::int64_t) const { return true; }

  //! o = ((Q K^T) * M) V
  template <class T>
  void forward_intra(const linear_chunk<T>& c, tensor_view<T> o, stream_ref) const {
    const auto& q = c.q;
    const auto& k = c.k;
    const auto& v = c.v;
    const auto& decay = c.decay;
    for_each_head(q, [&](std::int64_t b, std::int64_t h, double lambda) {
      const auto w = powers(lambda, q.seq());
      std::vector<double> row(v.head_dim());
      for (std::int64_t i = 0; i < q.seq(); ++i) {
        std::fill(row.begin(), row.end(), 0.0);
        for (std::int64_t j = 0; j <= i; ++j) {
          const double a = w[i - j] * dot(q, i, k, j, b, h);
          for (std::int64_t e = 0; e < v.head_dim(); ++e) row[e] += a * x(v, b, j, h, e);
        }
        for (std::int64_t e = 0; e < v.head_dim(); ++e) o(b, i, h, e) = from_float<T>(static_cast<float>(row[e]));
      }
    }, decay);
  }

  //! m = K^T LK V
  template <class T>
  void state_contribution(const linear_chunk<T>& c, state_view m, stream_ref) const {
    const auto& k = c.k;
    const auto& v = c.v;
    const auto& decay = c.decay;
    const std::int64_t C = k.seq();
    for_each_head(k, [&](std::int64_t b, std::int64_t h, double lambda) {
      for (std::int64_t d = 0; d < k.head_dim(); ++d)
        for (std::int64_t e = 0; e < v.head_dim(); ++e) {
          double sum = 0;
          for (std::int64_t i = 0; i < C; ++i) sum += std::pow(lambda, C - 1 - i) * x(k, b, i, h, d) * x(v, b, i, h, e);
          m(b, h, d, e) = static_cast<float>(sum);
        }
    }, decay);
  }

  //! o += LQ Q KV
  template <class T>
  void forward_inter(const linear_chunk<T>& c, const_state_view kv, tensor_view<T> o, stream_ref) const {
    const auto& q = c.q;
    const auto& decay = c.decay;
    for_each_head(q, [&](std::int64_t b, std::int64_t h, double lambda) {
      for (std::int64_t i = 0; i < q.seq(); ++i)
        for (std::int64_t e = 0; e < o.head_dim(); ++e) {
          double sum = 0;
          for (std::int64_t d = 0; d < q.head_dim(); ++d) sum += x(q, b, i, h, d) * kv(b, h, d, e);
          o(b, i, h, e) = from_float<T>(static_cast<float>(x(o, b, i, h, e) + std::pow(lambda, i + 1) * sum));
        }
    }, decay);
  }

  //! out = lambda^n in + m (in empty: out = m); out may alias in.
  void state_update(std::span<const float> decay, std::int64_t n, const_state_view in, const_state_view m,
                    state_view out, stream_ref) const {
    for (std::int64_t b = 0; b < out.extent(0); ++b)
      for (std::int64_t h = 0; h < out.extent(1); ++h) {
        const double scale = std::pow(double(decay[h]), n);
        for (std::int64_t d = 0; d < out.extent(2); ++d)
          for (std::int64_t e = 0; e < out.extent(3); ++e)
            out(b, h, d, e) = static_cast<float>((in.size() ? scale * in(b, h, d, e) : 0.0) + m(b, h, d, e));
      }
  }

  //! dq = A K; dk = A^T Q; dv = ((Q K^T) * M)^T dO, with A = (dO V^T) * M
  template <class T>
  void backward_intra(const linear_chunk<T>& c, const linear_gradients<T>& grads, stream_ref) const {
    const auto& q = c.q;
    const auto& k = c.k;
    const auto& v = c.v;
    const auto& dout = c.dout;
    const auto& decay = c.decay;
    const auto& dq = grads.dq;
    const auto& dk = grads.dk;
    const auto& dv = grads.dv;
    const std::int64_t C = q.seq(), D = q.head_dim(), E = v.head_dim();
    for_each_head(q, [&](std::int64_t b, std::int64_t h, double lambda) {
      const auto w = powers(lambda, C);
      std::vector<double> gq(C * D, 0.0), gk(C * D, 0.0), gv(C * E, 0.0);
      for (std::int64_t i = 0; i < C; ++i)
        for (std::int64_t j = 0; j <= i; ++j) {
          const double a = w[i - j] * dot(dout, i, v, j, b, h);  // A[i][j]
          const double s = w[i - j] * dot(q, i, k, j, b, h);     // ((Q K^T) * M)[i][j]
          for (std::int64_t d = 0; d < D; ++d) {
            gq[i * D + d] += a * x(k, b, j, h, d);
            gk[j * D + d] += a * x(q, b, i, h, d);
          }
          for (std::int64_t e = 0; e < E; ++e) gv[j * E + e] += s * x(dout, b, i, h, e);
        }
      for (std::int64_t i = 0; i < C; ++i) {
        for (std::int64_t d = 0; d < D; ++d) {
          dq(b, i, h, d) = from_float<T>(static_cast<float>(gq[i * D + d]));
          dk(b, i, h, d) = from_float<T>(static_cast<float>(gk[i * D + d]));
        }
        for (std::int64_t e = 0; e < E; ++e) dv(b, i, h, e) = from_float<T>(static_cast<float>(gv[i * E + e]));
      }
    }, decay);
  }

  //! g = Q^T LQ dO
  template <class T>
  void backward_state_contribution(const linear_chunk<T>& c, state_view g, stream_ref) const {
    const auto& q = c.q;
    const auto& dout = c.dout;
    const auto& decay = c.decay;
    for_each_head(q, [&](std::int64_t b, std::int64_t h, double lambda) {
      for (std::int64_t d = 0; d < q.head_dim(); ++d)
        for (std::int64_t e = 0; e < dout.head_dim(); ++e) {
          double sum = 0;
          for (std::int64_t i = 0; i < q.seq(); ++i) sum += std::pow(lambda, i + 1) * x(q, b, i, h, d) * x(dout, b, i, h, e);
          g(b, h, d, e) = static_cast<float>(sum);
        }
    }, decay);
  }

  //! dq += LQ dO KV^T; dk += LK V G^T; dv += LK K G
  template <class T>
  void backward_inter(const linear_chunk<T>& c, const_state_view kv, const_state_view g,
                      const linear_gradients<T>& grads, stream_ref) const {
    const auto& k = c.k;
    const auto& v = c.v;
    const auto& dout = c.dout;
    const auto& decay = c.decay;
    const auto& dq = grads.dq;
    const auto& dk = grads.dk;
    const auto& dv = grads.dv;
    const std::int64_t C = k.seq(), D = k.head_dim(), E = v.head_dim();
    for_each_head(k, [&](std::int64_t b, std::int64_t h, double lambda) {
      for (std::int64_t i = 0; i < C; ++i) {
        const double lq = std::pow(lambda, i + 1), lk = std::pow(lambda, C - 1 - i);
        for (std::int64_t d = 0; d < D; ++d) {
          double sq = 0, sk = 0;
          for (std::int64_t e = 0; e < E; ++e) {
            sq += x(dout, b, i, h, e) * kv(b, h, d, e);
            sk += x(v, b, i, h, e) * g(b, h, d, e);
          }
          dq(b, i, h, d) = from_float<T>(static_cast<float>(x(dq, b, i, h, d) + lq * sq));
          dk(b, i, h, d) = from_float<T>(static_cast<float>(x(dk, b, i, h, d) + lk * sk));
        }
        for (std::int64_t e = 0; e < E; ++e) {
          double sv = 0;
          for (std::int64_t d = 0; d < D; ++d) sv += x(k, b, i, h, d) * g(b, h, d, e);
          dv(b, i, h, e) = from_float<T>(static_cast<float>(x(dv, b, i, h, e) + lk * sv));
        }
      }
    }, decay);
  }

 private:
  static std::vector<double> powers(double lambda, std::int64_t n) {
    std::vector<double> w(static_cast<std::size_t>(n) + 1, 1.0);
    for (std::int64_t i = 1; i <= n; ++i) w[i] = std::pow(lambda, static_cast<double>(i));
    return w;
  }
  template <class V>
  static double x(const tensor_view<V>& t, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
    return to_float(t(b, s, h, d));
  }
  template <class A, class B>
  static double dot(const tensor_view<A>& a, std::int64_t i, const tensor_view<B>& c, std::int64_t j, std::int64_t b,
                    std::int64_t h) {
    double sum = 0;
    for (std::int64_t d = 0; d < a.head_dim(); ++d) sum += x(a, b, i, h, d) * x(c, b, j, h, d);
    return sum;
  }
  template <class V, class Fn>
  static void for_each_head(const tensor_view<V>& t, Fn&& fn, std::span<const float> decay) {
    for (std::int64_t b = 0; b < t.batch(); ++b)
      for (std::int64_t h = 0; h < t.heads(); ++h) fn(b, h, static_cast<double>(decay[h]));
  }
};

static_assert(linear_attention_policy<linear_reference>);

SEQPAR_NAMESPACE_END
