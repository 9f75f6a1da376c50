//! @file ring_attention.hpp
//! ring_attention<Policy, Comm>: softmax attention over sequence shards with no limit from the head
//! count. Each rank keeps its queries; key/value shards travel around the ring with
//! neighbor_exchange, and each rank merges the partial outputs of its queries against every shard
//! (fp32 online softmax). Backward: dQ accumulates at home, dK/dV accumulate in fp32 as they travel
//! with their shard and come home after a full turn. With zigzag shards the causal work is the
//! same on every rank at every step.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/shard.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <optional>
#include <sstream>
#include <type_traits>
#include <utility>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

namespace detail {
//! A run of a rank's tokens that is contiguous in the global sequence.
struct token_run {
  std::int64_t local;   //!< first local row
  std::int64_t global;  //!< its global position
  std::int64_t length;  //!< tokens in the run
};

//! The runs of rank `rank`'s tokens: one for contiguous shards, two (blocks r and 2P-1-r) for zigzag.
inline std::vector<token_run> token_runs(const seq_partition& part, int rank) {
  if (part.strategy == shard_strategy::contiguous) return {{0, part.offset(rank), part.size(rank)}};
  const std::int64_t chunk = part.tokens / (2 * part.ranks);
  return {{0, rank * chunk, chunk}, {chunk, (2 * part.ranks - 1 - rank) * chunk, chunk}};
}

//! Rows [first, first + n) of a view, with its strides.
template <class T>
tensor_view<T> rows(const tensor_view<T>& v, std::int64_t first, std::int64_t n) {
  using view = tensor_view<T>;
  typename view::extents_type e(v.batch(), n, v.heads(), v.head_dim());
  cuda::std::array<std::int64_t, 4> s{v.stride(axis::batch), v.stride(axis::seq), v.stride(axis::heads),
                                      v.stride(axis::head_dim)};
  return view(v.data() + first * v.stride(axis::seq), typename view::mapping_type(e, s));
}

//! Copies `from` into `to` element by element (same extents), converting the element type.
template <class From, class To>
void copy_view(const tensor_view<From>& from, const tensor_view<To>& to) {
  for (std::int64_t b = 0; b < from.batch(); ++b)
    for (std::int64_t s = 0; s < from.seq(); ++s)
      for (std::int64_t h = 0; h < from.heads(); ++h)
        for (std::int64_t d = 0; d < from.head_dim(); ++d)
          to(b, s, h, d) = from_float<std::remove_const_t<To>>(to_float(from(b, s, h, d)));
}
}  // namespace detail

//! A ring attention layer of one rank: q [B, S_r, H, D], k and v [B, S_r, H_kv, D] of this rank's
//! tokens (contiguous or zigzag shards), any H and H_kv (only kv heads travel). Host memory in this
//! version. forward returns a context: the fp32 log-sum-exp of this rank's rows (owned) and views
//! of q, k, v and o (keep them alive and unchanged until backward). Every call agrees across the
//! group before any rank writes an output or moves a byte.
template <block_attention_policy Policy, communicator Comm, memory_resource Resource = default_memory_resource>
class ring_attention {
 public:
  //! What forward saves for backward.
  class context {
   public:
    //! An empty context (what backward refuses).
    context() = default;
    //! True until a forward fills it.
    bool empty() const { return !filled_; }

   private:
    friend class ring_attention;
    owned_bytes<Resource> lse_;
    detail::erased_views<4> views_;  // q, k, v, o
    std::int64_t fingerprint_ = 0;
    dtype type_ = dtype::float32;
    bool filled_ = false;
  };

  //! The layer of rank comm.rank() over `seq` (comm.size() ranks; zigzag balances causal work),
  //! with `shape` = {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}. Collective.
  ring_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape, dtype type,
                 attention_options options = {}, Resource resource = {})
      : policy_(std::move(policy)), comm_(comm), resource_(resource), seq_(seq), shape_(shape), type_(type),
        options_(options.resolved(shape.head_dim)) {
    agree_on_arguments(comm, call_checks::group, nullptr, [&] {
      check_attention_shape(shape);
      SEQPAR_EXPECTS(shape.values() == shape.head_dim, "shape.value_dim: expected head_dim = " << shape.head_dim
                                                                                               << ", got " << shape.value_dim);
      (void)make_seq_partition(seq.tokens, seq.ranks, seq.strategy);
      SEQPAR_EXPECTS(seq.ranks == comm.size(), "seq: partition over " << seq.ranks
                                                                      << " ranks; expected the communicator's " << comm.size());
      if (comm.memory() != memory_space::host)
        SEQPAR_FAIL(errc::unsupported, "comm: ring_attention runs on host memory in this version; got device memory");
      SEQPAR_EXPECTS(policy_.memory() == memory_space::host, "policy: works on " << to_string(policy_.memory())
                                                                                 << " memory; expected host");
      SEQPAR_EXPECTS(policy_.supports(type, shape.head_dim), "policy: does not support element type "
                                                                 << to_string(type) << " with head_dim " << shape.head_dim);
      SEQPAR_EXPECTS(!options.causal || policy_.supports_causal(),
                     "options.causal: the policy cannot apply a causal mask; expected causal = false");
    });
    std::ostringstream description;
    description << "shape " << shape << ", " << seq.tokens << " tokens (" << to_string(seq.strategy) << "), "
                << to_string(type) << ", causal = " << options_.causal;
    agree_on_fingerprint(comm, fingerprint_of(), "ring_attention", description.str());
  }

  //! o = attention(q, k, v) for this rank's tokens; returns what backward needs.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                stream_t stream = nullptr) {
    using T = std::remove_const_t<Q>;
    static_assert(std::is_same_v<std::remove_const_t<K>, T> && std::is_same_v<std::remove_const_t<V>, T> &&
                      std::is_same_v<O, T>,
                  "ring_attention::forward: q, k, v and o must share one element type, and o must be writable");
    context saved;
    agree_on_arguments(comm_, checks_, stream, [&] {
      check_views<T>({"q", "k", "v", "o"}, q, k, v, o);
      saved.lse_ = owned_bytes<Resource>(lse_floats() * sizeof(float), memory_space::host, resource_);
    });
    const int P = comm_.size(), r = comm_.rank();
    const auto runs = detail::token_runs(seq_, r);
    std::vector<float> o_acc(elements(shape_.heads), 0.0f), part(o_acc.size()), part_lse(lse_floats());
    float* lse = reinterpret_cast<float*>(saved.lse_.span().data());
    std::fill(lse, lse + lse_floats(), -std::numeric_limits<float>::infinity());
    std::vector<T> cur(2 * max_elements(kv())), next(cur.size());
    pack_kv(k, v, cur.data());
    for (int t = 0; t < P; ++t) {
      const int s = (r - t + P) % P;
      const auto [ks, vs] = kv_views<const T>(cur.data(), s);
      for_each_pair(runs, s, [&](const detail::token_run& qr, std::int64_t lse_at, const detail::token_run& kr,
                                 block_pair pair) {
        const auto part_view = make_bshd(part.data(), shape_.batch, qr.length, shape_.heads, shape_.head_dim);
        const lse_view part_l(part_lse.data(), shape_.batch, shape_.heads, qr.length);
        policy_.block_forward(detail::rows(tensor_view<const T>(q), qr.local, qr.length), detail::rows(ks, kr.local, kr.length),
                              detail::rows(vs, kr.local, kr.length), map(), options_, pair, part_view, part_l, stream);
        merge_partial(detail::rows(acc_view(o_acc.data(), shape_.heads), qr.local, qr.length),
                      lse_view(lse + lse_at, shape_.batch, shape_.heads, qr.length), tensor_view<const float>(part_view),
                      const_lse_view(part_l));
      });
      if (t + 1 < P) rotate(cur, next, s);
    }
    detail::copy_view(tensor_view<const float>(acc_view(o_acc.data(), shape_.heads)), o);
    saved.views_.keep(q, k, v, o);
    saved.fingerprint_ = fingerprint_of();
    saved.type_ = dtype_of<T>;
    saved.filled_ = true;
    return saved;
  }

  //! dq, dk, dv of this rank's tokens from dO and the context of a forward of this layer.
  template <class DO, class G>
  void backward(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                stream_t stream = nullptr) {
    using T = std::remove_const_t<DO>;
    static_assert(std::is_same_v<G, T>, "ring_attention::backward: dout, dq, dk and dv must share one element type, "
                                        "and the gradients must be writable");
    agree_on_arguments(comm_, checks_, stream, [&] {
      SEQPAR_EXPECTS(!saved.empty(), "saved: an empty context; expected the context a forward of this layer returned");
      SEQPAR_EXPECTS(saved.fingerprint_ == fingerprint_of(),
                     "saved: a context of a layer with other shapes; expected one a forward of this layer returned");
      SEQPAR_EXPECTS(dtype_of<T> == saved.type_, "dout: element type " << to_string(dtype_of<T>)
                                                                       << "; expected the forward's " << to_string(saved.type_));
      check_views<T>({"dq", "dk", "dv", "dout"}, dq, dk, dv, dout);
    });
    const int P = comm_.size(), r = comm_.rank();
    const auto runs = detail::token_runs(seq_, r);
    auto held = [&](int i) { return saved.views_.template get<T>(i); };
    const tensor_view<const T> q = held(0), o = held(3);
    const float* lse = reinterpret_cast<const float*>(saved.lse_.span().data());
    std::vector<float> dots(lse_floats(), 0.0f), dq_acc(elements(shape_.heads), 0.0f);
    for (const auto& run : runs)
      for (std::int64_t b = 0; b < shape_.batch; ++b)
        for (int h = 0; h < shape_.heads; ++h)
          for (std::int64_t i = 0; i < run.length; ++i)
            for (std::int64_t d = 0; d < shape_.head_dim; ++d)
              dots[lse_offset(runs, run) + (b * shape_.heads + h) * run.length + i] +=
                  to_float(dout(b, run.local + i, h, d)) * to_float(o(b, run.local + i, h, d));
    std::vector<T> cur(2 * max_elements(kv())), next(cur.size());
    std::vector<float> dkv(2 * max_elements(kv()), 0.0f), dkv_next(dkv.size());
    pack_kv(held(1), held(2), cur.data());
    for (int t = 0; t < P; ++t) {
      const int s = (r - t + P) % P;
      const auto [ks, vs] = kv_views<const T>(cur.data(), s);
      const auto [dks, dvs] = kv_views<float>(dkv.data(), s);
      for_each_pair(runs, s, [&](const detail::token_run& qr, std::int64_t lse_at, const detail::token_run& kr,
                                 block_pair pair) {
        const const_lse_view l(lse + lse_at, shape_.batch, shape_.heads, qr.length);
        const const_lse_view rd(dots.data() + lse_at, shape_.batch, shape_.heads, qr.length);
        policy_.block_backward(detail::rows(q, qr.local, qr.length), detail::rows(ks, kr.local, kr.length),
                               detail::rows(vs, kr.local, kr.length),
                               detail::rows(tensor_view<const T>(dout), qr.local, qr.length), l, rd, map(), options_, pair,
                               detail::rows(acc_view(dq_acc.data(), shape_.heads), qr.local, qr.length),
                               detail::rows(dks, kr.local, kr.length), detail::rows(dvs, kr.local, kr.length), stream);
      });
      if (P == 1) break;
      if (t + 1 < P) rotate(cur, next, s);
      rotate(dkv, dkv_next, s);  // after P turns each shard's gradients are home
    }
    detail::copy_view(tensor_view<const float>(acc_view(dq_acc.data(), shape_.heads)), dq);
    const auto [dk_home, dv_home] = kv_views<const float>(dkv.data(), r);
    detail::copy_view(dk_home, dk);
    detail::copy_view(dv_home, dv);
  }

  //! Sets what each call checks: call_checks::group (the default) or call_checks::local.
  void set_call_checks(call_checks checks) { checks_ = checks; }
  //! What each call checks.
  call_checks checks() const { return checks_; }
  //! The options the policy gets (the scale resolved).
  const attention_options& options() const { return options_; }

 private:
  int kv() const { return shape_.kv(); }
  gqa_map map() const { return gqa_map{0, shape_.heads / kv(), 0}; }
  std::size_t elements_of(int rank, int heads) const {
    return static_cast<std::size_t>(shape_.batch * seq_.size(rank) * heads * shape_.head_dim);
  }
  std::size_t elements(int heads) const { return elements_of(comm_.rank(), heads); }
  std::size_t max_elements(int heads) const { return elements_of(0, heads); }  // rank 0 holds the most tokens
  std::size_t lse_floats() const { return static_cast<std::size_t>(shape_.batch * shape_.heads * seq_.size(comm_.rank())); }
  std::int64_t lse_offset(const std::vector<detail::token_run>& runs, const detail::token_run& run) const {
    std::int64_t at = 0;
    for (const auto& x : runs) {
      if (x.local == run.local) break;
      at += shape_.batch * shape_.heads * x.length;
    }
    return at;
  }
  tensor_view<float> acc_view(float* p, int heads) const {
    return make_bshd(p, shape_.batch, seq_.size(comm_.rank()), heads, shape_.head_dim);
  }
  // K and V of rank s's shard, packed one after the other in `p`.
  template <class U>
  std::pair<tensor_view<U>, tensor_view<U>> kv_views(std::remove_const_t<U>* p, int s) const {
    const std::int64_t n = seq_.size(s);
    const std::size_t half = elements_of(s, kv());
    return {make_bshd<U>(p, shape_.batch, n, kv(), shape_.head_dim),
            make_bshd<U>(p + half, shape_.batch, n, kv(), shape_.head_dim)};
  }
  template <class T, class K, class V>
  void pack_kv(const tensor_view<K>& k, const tensor_view<V>& v, T* p) const {
    const auto [kp, vp] = kv_views<T>(p, comm_.rank());
    detail::copy_view(k, kp);
    detail::copy_view(v, vp);
  }
  // Sends the shard of rank s that `cur` holds to the next rank and receives the one before it.
  template <class U>
  void rotate(std::vector<U>& cur, std::vector<U>& next, int s) {
    const int P = comm_.size(), r = comm_.rank(), before = (s - 1 + P) % P;
    comm_.template neighbor_exchange<U>(std::span<const U>(cur.data(), 2 * elements_of(s, kv())), (r + 1) % P,
                                        std::span<U>(next.data(), 2 * elements_of(before, kv())), (r - 1 + P) % P);
    std::swap(cur, next);
  }
  // Calls f(query run, its lse offset, key run, pair) for every pair of this rank's runs and rank
  // s's runs that the causal mask leaves anything of.
  template <class F>
  void for_each_pair(const std::vector<detail::token_run>& runs, int s, F&& f) const {
    for (const auto& qr : runs)
      for (const auto& kr : detail::token_runs(seq_, s)) {
        const block_relation rel = causal_relation(qr.global, qr.length, kr.global, kr.length, options_.causal);
        if (rel == block_relation::masked || qr.length == 0 || kr.length == 0) continue;
        f(qr, lse_offset(runs, qr), kr, block_pair{qr.global, kr.global, rel});
      }
  }
  template <class T, class A, class B, class C, class D>
  void check_views(const std::array<const char*, 4>& names, const tensor_view<A>& a, const tensor_view<B>& b,
                   const tensor_view<C>& c, const tensor_view<D>& d) const {
    SEQPAR_EXPECTS(dtype_of<T> == type_, names[0] << ": element type " << to_string(dtype_of<T>)
                                                  << "; expected the layer's " << to_string(type_));
    const std::int64_t n = seq_.size(comm_.rank());
    const shape4 q_shape{shape_.batch, n, shape_.heads, shape_.head_dim}, kv_shape{shape_.batch, n, kv(), shape_.head_dim};
    auto check = [](const char* name, const shape4& want, const auto& view) {
      const shape4 got{view.batch(), view.seq(), view.heads(), view.head_dim()};
      SEQPAR_EXPECTS(got == want, name << ": expected extents {batch, seq, heads, head_dim} = {" << want[0] << ", "
                                       << want[1] << ", " << want[2] << ", " << want[3] << "}, got {" << got[0]
                                       << ", " << got[1] << ", " << got[2] << ", " << got[3] << "}");
    };
    check(names[0], q_shape, a);
    check(names[1], kv_shape, b);
    check(names[2], kv_shape, c);
    check(names[3], q_shape, d);
  }
  std::int64_t fingerprint_of() const {
    std::uint32_t scale_bits = 0;
    std::memcpy(&scale_bits, &options_.scale, sizeof scale_bits);
    return fingerprint{}
        .add(seq_.tokens).add(seq_.ranks).add(static_cast<int>(seq_.strategy))
        .add(shape_.batch).add(shape_.heads).add(kv()).add(shape_.head_dim)
        .add(static_cast<int>(type_)).add(options_.causal).add(scale_bits)
        .value();
  }

  Policy policy_;
  Comm& comm_;
  Resource resource_;
  seq_partition seq_;
  attention_shape shape_;
  dtype type_;
  attention_options options_;
  call_checks checks_ = call_checks::group;
};

SEQPAR_NAMESPACE_END
