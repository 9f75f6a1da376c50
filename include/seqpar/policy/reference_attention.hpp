//! @file reference_attention.hpp
//! reference_attention: plain host softmax attention in double, forward and backward. The oracle.
#pragma once

#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/policy/block_attention.hpp>

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
//! and the documents when asked): every element type and head dim, GQA. A row with nothing allowed outputs zeros and
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
  //! Packed documents are served (options.documents masks across them).
  bool supports_documents() const { return true; }

  //! o and lse from q, k, v.
  template <class T>
  void forward(const policy_forward_args<T>& a, stream_ref) const {
    attend(a.q, a.k, a.v, a.map, a.options.resolved(a.q.head_dim()), block_pair{}, a.o, a.lse);
  }

  //! dq, dk, dv from dO; dk and dv sum over the query heads that read each kv head.
  template <class T>
  void backward(const policy_backward_args<T>& a, stream_ref) const {
    const std::int64_t B = a.q.batch(), S = a.q.seq(), D = a.q.head_dim(), H = a.q.heads();
    std::vector<double> row_dots(static_cast<std::size_t>(B * H * S));
    const cuda::std::mdspan<double, cuda::std::dextents<std::int64_t, 3>> dots(row_dots.data(), B, H, S);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t i = 0; i < S; ++i)
          for (std::int64_t d = 0; d < D; ++d)
            dots(b, h, i) += double(to_float(a.dout(b, i, h, d))) * to_float(a.o(b, i, h, d));
    dense4 gq(a.q), gk(a.k), gv(a.k);
    gradients(a.q, a.k, a.v, a.dout, a.lse, dots, a.map, a.options.resolved(D), block_pair{}, gq, gk, gv);
    gq.store(a.dq), gk.store(a.dk), gv.store(a.dv);
  }

  //! o_part and lse_part (fp32) of the query block q against the key/value block k, v alone, at
  //! the pair's positions (block_attention_policy).
  template <class T>
  void block_forward(const block_forward_args<T>& a, stream_ref) const {
    attend(a.q, a.k, a.v, a.map, a.options.resolved(a.q.head_dim()), a.pair, a.o_part, a.lse_part);
  }

  //! Adds the block pair's share of dq, dk, dv (fp32 accumulators) from the final lse and the row
  //! dots rowsum(dO * O) (block_attention_policy).
  template <class T>
  void block_backward(const block_backward_args<T>& a, stream_ref) const {
    dense4 gq(a.q), gk(a.k), gv(a.k);
    gradients(a.q, a.k, a.v, a.dout, a.lse, a.row_dots, a.map, a.options.resolved(a.q.head_dim()), a.pair, gq, gk, gv);
    gq.add_to(a.dq), gk.add_to(a.dk), gv.add_to(a.dv);
  }

 private:
  // A [B, S, H, D] array of doubles shaped like a view: gradient accumulation in double.
  struct dense4 {
    template <class V>
    explicit dense4(const V& like)
        : B(like.batch()), S(like.seq()), H(like.heads()), D(like.head_dim()),
          x(static_cast<std::size_t>(B * S * H * D)) {}
    double& operator()(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
      return x[static_cast<std::size_t>(((b * S + s) * H + h) * D + d)];
    }
    template <class T>
    void store(tensor_view<T> out) {
      for_each([&](auto b, auto s, auto h, auto d) {
        out(b, s, h, d) = from_float<T>(static_cast<float>((*this)(b, s, h, d)));
      });
    }
    void add_to(tensor_view<float> out) {
      for_each([&](auto b, auto s, auto h, auto d) { out(b, s, h, d) += static_cast<float>((*this)(b, s, h, d)); });
    }
    template <class F>
    void for_each(F&& f) {
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t s = 0; s < S; ++s)
          for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t d = 0; d < D; ++d) f(b, s, h, d);
    }
    std::int64_t B, S, H, D;
    std::vector<double> x;
  };

  // o and lse of queries q against keys k, v at the pair's positions; o of any element type.
  template <class T, class O>
  void attend(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v, gqa_map map,
              attention_options opt, block_pair pair, tensor_view<O> o, lse_view lse) const {
    const std::int64_t S_kv = k.seq(), D = q.head_dim();
    std::vector<double> p(static_cast<std::size_t>(S_kv));
    for (std::int64_t b = 0; b < q.batch(); ++b)
      for (std::int64_t h = 0; h < q.heads(); ++h) {
        const int kh = map.kv_head(static_cast<int>(h));
        for (std::int64_t i = 0; i < q.seq(); ++i) {
          const double m = scores(q, k, b, h, kh, i, opt, pair, p);
          double sum = 0;
          for (std::int64_t j = 0; j < S_kv; ++j) sum += p[j] = std::isinf(p[j]) ? 0.0 : std::exp(p[j] - m);
          for (std::int64_t d = 0; d < D; ++d) {
            double acc = 0;
            for (std::int64_t j = 0; j < S_kv; ++j) acc += p[j] * to_float(v(b, j, kh, d));
            o(b, i, h, d) = from_float<O>(static_cast<float>(sum > 0 ? acc / sum : 0.0));
          }
          lse(b, h, i) = sum > 0 ? static_cast<float>(m + std::log(sum)) : -std::numeric_limits<float>::infinity();
        }
      }
  }

  // Adds to gq, gk, gv (double) the gradients of queries q against keys k, v at the pair's
  // positions, from the final lse and the row dots rowsum(dO * O).
  template <class T, class Lse, class Dots>
  void gradients(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                 const tensor_view<const T>& dout, const Lse& lse, const Dots& row_dots, gqa_map map,
                 attention_options opt, block_pair pair, dense4& gq, dense4& gk, dense4& gv) const {
    const std::int64_t S_kv = k.seq(), D = q.head_dim();
    std::vector<double> p(static_cast<std::size_t>(S_kv)), ds(p.size());
    for (std::int64_t b = 0; b < q.batch(); ++b)
      for (std::int64_t h = 0; h < q.heads(); ++h) {
        const int kh = map.kv_head(static_cast<int>(h));
        for (std::int64_t i = 0; i < q.seq(); ++i) {
          scores(q, k, b, h, kh, i, opt, pair, p);
          const double l = lse(b, h, i), row = row_dots(b, h, i);
          for (std::int64_t j = 0; j < S_kv; ++j) {
            p[j] = std::isinf(p[j]) || std::isinf(l) ? 0.0 : std::exp(p[j] - l);
            double dp = 0;
            for (std::int64_t d = 0; d < D; ++d) dp += double(to_float(dout(b, i, h, d))) * to_float(v(b, j, kh, d));
            ds[j] = p[j] * (dp - row);
          }
          for (std::int64_t d = 0; d < D; ++d)
            for (std::int64_t j = 0; j < S_kv; ++j) {
              gq(b, i, h, d) += opt.scale * ds[j] * to_float(k(b, j, kh, d));
              gk(b, j, kh, d) += opt.scale * ds[j] * to_float(q(b, i, h, d));
              gv(b, j, kh, d) += p[j] * to_float(dout(b, i, h, d));
            }
        }
      }
  }

  // Scaled scores of query row i against every key row into p (-inf where masked at the pair's
  // positions); returns their maximum.
  template <class T>
  double scores(const tensor_view<const T>& q, const tensor_view<const T>& k, std::int64_t b, std::int64_t h, int kh,
                std::int64_t i, attention_options opt, block_pair pair, std::vector<double>& p) const {
    double m = -std::numeric_limits<double>::infinity();
    const std::int64_t qi = pair.q_first + i;
    for (std::int64_t j = 0; j < k.seq(); ++j) {
      const std::int64_t kj = pair.kv_first + j;
      if ((opt.causal && kj > qi) || !opt.documents.same(qi, kj) || !mask.allowed(qi, kj)) {
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

static_assert(block_attention_policy<reference_attention>);

SEQPAR_NAMESPACE_END
