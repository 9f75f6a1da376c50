//! @file ring_pass.hpp
//! The ring walk shared by ring_attention and the 2-D layer: K/V shards travel the ring group with
//! neighbor_exchange while each rank merges its queries' partials in fp32; in backward dK/dV travel
//! with their shard and come home.
#pragma once

#include <seqpar/policy/block_attention.hpp>
#include <seqpar/shard.hpp>
#include <seqpar/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
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

//! The ring walk of one rank for fixed shapes, unchecked (its callers check and agree first):
//! `heads` query heads read `kv_heads` kv heads through `map`, tokens dealt over the ring group by
//! `seq`. Host memory. forward merges the partials of every block pair into o and the fp32 lse of
//! this rank's rows (one [B, heads, length] block per token run, runs in order); backward walks
//! again with the final lse, dK/dV travelling home with their shard.
struct ring_pass {
  seq_partition seq;          //!< the tokens over the ring group
  std::int64_t batch = 1;     //!< B
  int heads = 0;              //!< this rank's query heads
  int kv_heads = 0;           //!< this rank's kv heads (those its query heads read)
  std::int64_t head_dim = 0;  //!< D
  gqa_map map;                //!< which local kv head each local query head reads
  attention_options options;  //!< scale resolved

  //! Floats of the lse of `rank`'s rows.
  std::size_t lse_floats(int rank) const { return static_cast<std::size_t>(batch * heads * seq.size(rank)); }

  //! o and lse (lse_floats(comm.rank()) floats) of this rank's queries against every shard.
  template <class Policy, class Comm, class T>
  void forward(const Policy& policy, Comm& comm, tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
               tensor_view<T> o, float* lse, stream_t stream) const {
    const int P = comm.size(), r = comm.rank();
    const auto runs = token_runs(seq, r);
    std::vector<float> o_acc(elements_of(r, heads), 0.0f), part(o_acc.size()), part_lse(lse_floats(r));
    std::fill(lse, lse + lse_floats(r), -std::numeric_limits<float>::infinity());
    std::vector<T> cur(2 * elements_of(0, kv_heads)), next(cur.size());  // rank 0 holds the most tokens
    pack_kv(k, v, cur.data(), r);
    for (int t = 0; t < P; ++t) {
      const int s = (r - t + P) % P;
      const auto [ks, vs] = kv_views<const T>(cur.data(), s);
      for_each_pair(runs, s, [&](const token_run& qr, std::int64_t lse_at, const token_run& kr, block_pair pair) {
        const auto part_view = make_bshd(part.data(), batch, qr.length, heads, head_dim);
        const lse_view part_l(part_lse.data(), batch, heads, qr.length);
        policy.block_forward(rows(q, qr.local, qr.length), rows(ks, kr.local, kr.length), rows(vs, kr.local, kr.length),
                             map, options, pair, part_view, part_l, stream);
        merge_partial(rows(acc_view(o_acc.data(), r, heads), qr.local, qr.length),
                      lse_view(lse + lse_at, batch, heads, qr.length), tensor_view<const float>(part_view),
                      const_lse_view(part_l));
      });
      if (t + 1 < P) rotate(comm, cur, next, s);
    }
    copy_view(tensor_view<const float>(acc_view(o_acc.data(), r, heads)), o);
  }

  //! dq, dk, dv of this rank's rows from dO, the forward's o and its lse.
  template <class Policy, class Comm, class T>
  void backward(const Policy& policy, Comm& comm, tensor_view<const T> q, tensor_view<const T> k,
                tensor_view<const T> v, tensor_view<const T> o, tensor_view<const T> dout, const float* lse,
                tensor_view<T> dq, tensor_view<T> dk, tensor_view<T> dv, stream_t stream) const {
    const int P = comm.size(), r = comm.rank();
    const auto runs = token_runs(seq, r);
    std::vector<float> dots(lse_floats(r), 0.0f), dq_acc(elements_of(r, heads), 0.0f);
    for (const auto& run : runs)
      for (std::int64_t b = 0; b < batch; ++b)
        for (int h = 0; h < heads; ++h)
          for (std::int64_t i = 0; i < run.length; ++i)
            for (std::int64_t d = 0; d < head_dim; ++d)
              dots[lse_offset(runs, run) + (b * heads + h) * run.length + i] +=
                  to_float(dout(b, run.local + i, h, d)) * to_float(o(b, run.local + i, h, d));
    std::vector<T> cur(2 * elements_of(0, kv_heads)), next(cur.size());
    std::vector<float> dkv(cur.size(), 0.0f), dkv_next(dkv.size());
    pack_kv(k, v, cur.data(), r);
    for (int t = 0; t < P; ++t) {
      const int s = (r - t + P) % P;
      const auto [ks, vs] = kv_views<const T>(cur.data(), s);
      const auto [dks, dvs] = kv_views<float>(dkv.data(), s);
      for_each_pair(runs, s, [&](const token_run& qr, std::int64_t lse_at, const token_run& kr, block_pair pair) {
        const const_lse_view l(lse + lse_at, batch, heads, qr.length);
        const const_lse_view rd(dots.data() + lse_at, batch, heads, qr.length);
        policy.block_backward(rows(q, qr.local, qr.length), rows(ks, kr.local, kr.length),
                              rows(vs, kr.local, kr.length), rows(dout, qr.local, qr.length), l, rd, map, options, pair,
                              rows(acc_view(dq_acc.data(), r, heads), qr.local, qr.length),
                              rows(dks, kr.local, kr.length), rows(dvs, kr.local, kr.length), stream);
      });
      if (P == 1) break;
      if (t + 1 < P) rotate(comm, cur, next, s);
      rotate(comm, dkv, dkv_next, s);  // after P turns each shard's gradients are home
    }
    copy_view(tensor_view<const float>(acc_view(dq_acc.data(), r, heads)), dq);
    const auto [dk_home, dv_home] = kv_views<const float>(dkv.data(), r);
    copy_view(dk_home, dk);
    copy_view(dv_home, dv);
  }

 private:
  std::size_t elements_of(int rank, int h) const {
    return static_cast<std::size_t>(batch * seq.size(rank) * h * head_dim);
  }
  std::int64_t lse_offset(const std::vector<token_run>& runs, const token_run& run) const {
    std::int64_t at = 0;
    for (const auto& x : runs) {
      if (x.local == run.local) break;
      at += batch * heads * x.length;
    }
    return at;
  }
  tensor_view<float> acc_view(float* p, int rank, int h) const {
    return make_bshd(p, batch, seq.size(rank), h, head_dim);
  }
  // K and V of rank s's shard, packed one after the other in `p`.
  template <class U>
  std::pair<tensor_view<U>, tensor_view<U>> kv_views(std::remove_const_t<U>* p, int s) const {
    const std::int64_t n = seq.size(s);
    return {make_bshd<U>(p, batch, n, kv_heads, head_dim),
            make_bshd<U>(p + elements_of(s, kv_heads), batch, n, kv_heads, head_dim)};
  }
  template <class T>
  void pack_kv(const tensor_view<const T>& k, const tensor_view<const T>& v, T* p, int rank) const {
    const auto [kp, vp] = kv_views<T>(p, rank);
    copy_view(k, kp);
    copy_view(v, vp);
  }
  // Sends the shard of rank s that `cur` holds to the next rank and receives the one before it.
  template <class Comm, class U>
  void rotate(Comm& comm, std::vector<U>& cur, std::vector<U>& next, int s) const {
    const int P = comm.size(), r = comm.rank(), before = (s - 1 + P) % P;
    comm.template neighbor_exchange<U>(std::span<const U>(cur.data(), 2 * elements_of(s, kv_heads)), (r + 1) % P,
                                       std::span<U>(next.data(), 2 * elements_of(before, kv_heads)), (r - 1 + P) % P);
    std::swap(cur, next);
  }
  // Calls f(query run, its lse offset, key run, pair) for every pair of `runs` and rank s's runs
  // that the causal mask leaves anything of.
  template <class F>
  void for_each_pair(const std::vector<token_run>& runs, int s, F&& f) const {
    for (const auto& qr : runs)
      for (const auto& kr : token_runs(seq, s)) {
        const block_relation rel = causal_relation(qr.global, qr.length, kr.global, kr.length, options.causal);
        if (rel == block_relation::masked || qr.length == 0 || kr.length == 0) continue;
        f(qr, lse_offset(runs, qr), kr, block_pair{qr.global, kr.global, rel});
      }
  }
};

}  // namespace detail

SEQPAR_NAMESPACE_END
