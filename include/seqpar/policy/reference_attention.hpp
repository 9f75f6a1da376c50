//! @file reference_attention.hpp
//! reference_attention: plain host softmax attention in double, forward and backward. The oracle.
#pragma once

#include <seqpar/policy/attention_policy.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! Every pair of tokens may attend each other.
struct no_mask {
  //! Always true.
  SEQPAR_HOST_DEVICE bool allowed(std::int64_t, std::int64_t) const { return true; }
};

//! Dense softmax attention on the host, in double, under `mask.allowed(i, j)` (and the causal mask
//! when asked): every element type and head dim, GQA. A row with nothing allowed outputs zeros and
//! lse = -infinity. reference_attention and block_sparse_attention are this with their masks.
template <class Mask>
struct masked_attention {
  //! Opts into seqpar::attention_policy.
  using policy_concept = attention_policy_tag;
  //! Which key tokens each query token may attend.
  Mask mask{};

  //! Host memory.
  memory_space memory() const { return memory_space::host; }
  //! Any element type and head dim.
  bool supports(dtype, std::int64_t head_dim) const { return head_dim >= 1; }
  //! Causal masking is supported (it combines with the mask).
  bool supports_causal() const { return true; }

  //! o and lse from q, k, v.
  template <class T>
  void forward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, gqa_map map,
               attention_options opt, tensor_view<T> o, lse_view lse, stream_t = nullptr) const {
    const std::int64_t S = q.seq(), D = q.head_dim();
    opt = opt.resolved(D);
    std::vector<double> p(S);
    for (std::int64_t b = 0; b < q.batch(); ++b)
      for (std::int64_t h = 0; h < q.heads(); ++h) {
        const int kh = map.kv_head(static_cast<int>(h));
        for (std::int64_t i = 0; i < S; ++i) {
          const double m = scores(q, k, b, h, kh, i, opt, p);
          double sum = 0;
          for (std::int64_t j = 0; j < S; ++j) sum += p[j] = std::isinf(p[j]) ? 0.0 : std::exp(p[j] - m);
          for (std::int64_t d = 0; d < D; ++d) {
            double acc = 0;
            for (std::int64_t j = 0; j < S; ++j) acc += p[j] * to_float(v(b, j, kh, d));
            o(b, i, h, d) = from_float<T>(static_cast<float>(sum > 0 ? acc / sum : 0.0));
          }
          lse(b, h, i) = sum > 0 ? static_cast<float>(m + std::log(sum)) : -std::numeric_limits<float>::infinity();
        }
      }
  }

  //! dq, dk, dv from dO; dk and dv sum over the query heads that read each kv head.
  template <class T>
  void backward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, tensor_view<const T> o,
                const_lse_view lse, tensor_view<const T> dout, gqa_map map, attention_options opt, tensor_view<T> dq,
                tensor_view<T> dk, tensor_view<T> dv, stream_t = nullptr) const {
    const std::int64_t S = q.seq(), D = q.head_dim(), B = q.batch();
    opt = opt.resolved(D);
    std::vector<double> gk(B * S * k.heads() * D, 0.0), gv(gk.size(), 0.0), p(S), ds(S);
    auto kv_at = [&](std::int64_t b, std::int64_t j, std::int64_t kh, std::int64_t d) {
      return ((b * S + j) * k.heads() + kh) * D + d;
    };
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t h = 0; h < q.heads(); ++h) {
        const int kh = map.kv_head(static_cast<int>(h));
        for (std::int64_t i = 0; i < S; ++i) {
          scores(q, k, b, h, kh, i, opt, p);
          const double l = lse(b, h, i);
          double row = 0;  // sum_d dO_i o_i
          for (std::int64_t d = 0; d < D; ++d) row += double(to_float(dout(b, i, h, d))) * to_float(o(b, i, h, d));
          for (std::int64_t j = 0; j < S; ++j) {
            p[j] = std::isinf(p[j]) || std::isinf(l) ? 0.0 : std::exp(p[j] - l);
            double dp = 0;
            for (std::int64_t d = 0; d < D; ++d) dp += double(to_float(dout(b, i, h, d))) * to_float(v(b, j, kh, d));
            ds[j] = p[j] * (dp - row);
          }
          for (std::int64_t d = 0; d < D; ++d) {
            double acc = 0;
            for (std::int64_t j = 0; j < S; ++j) {
              acc += ds[j] * to_float(k(b, j, kh, d));
              gk[kv_at(b, j, kh, d)] += opt.scale * ds[j] * to_float(q(b, i, h, d));
              gv[kv_at(b, j, kh, d)] += p[j] * to_float(dout(b, i, h, d));
            }
            dq(b, i, h, d) = from_float<T>(static_cast<float>(opt.scale * acc));
          }
        }
      }
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t j = 0; j < S; ++j)
        for (std::int64_t kh = 0; kh < k.heads(); ++kh)
          for (std::int64_t d = 0; d < D; ++d) {
            dk(b, j, kh, d) = from_float<T>(static_cast<float>(gk[kv_at(b, j, kh, d)]));
            dv(b, j, kh, d) = from_float<T>(static_cast<float>(gv[kv_at(b, j, kh, d)]));
          }
  }

 private:
  // Scaled scores of row i into p (-inf where masked); returns their maximum.
  template <class T>
  double scores(const tensor_view<const T>& q, const tensor_view<const T>& k, std::int64_t b, std::int64_t h, int kh,
                std::int64_t i, attention_options opt, std::vector<double>& p) const {
    double m = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j < q.seq(); ++j) {
      if ((opt.causal && j > i) || !mask.allowed(i, j)) {
        p[j] = -std::numeric_limits<double>::infinity();
        continue;
      }
      double s = 0;
      for (std::int64_t d = 0; d < q.head_dim(); ++d) s += double(to_float(q(b, i, h, d))) * to_float(k(b, j, kh, d));
      p[j] = opt.scale * s;
      m = std::max(m, p[j]);
    }
    return m;
  }
};

//! Plain softmax attention on the host: the oracle every other policy is checked against.
using reference_attention = masked_attention<no_mask>;

static_assert(attention_policy<reference_attention>);

SEQPAR_NAMESPACE_END
