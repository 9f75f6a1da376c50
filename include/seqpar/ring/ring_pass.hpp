//! @file ring_pass.hpp
//! The ring walk shared by ring_attention and the 2-D layer: K/V shards travel the ring group with
//! neighbor_exchange while each rank merges its queries' partials in fp32; in backward dK/dV travel
//! with their shard and come home. The element-wise steps are SEQPAR_HOST_DEVICE functors, run by a
//! host loop or a device launch (for_each_index.hpp).
#pragma once

#include <seqpar/detail/call_documents.hpp>
#include <seqpar/detail/for_each_index.hpp>
#include <seqpar/documents.hpp>
#include <seqpar/detail/stream_fork.hpp>
#include <seqpar/detail/workspace_layout.hpp>
#include <seqpar/memory_resource.hpp>
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

//! Copies one element of `from` into `to` (equal extents) per call, converting the element type;
//! index i runs over the extents in [b, s, h, d] order. A host loop or a device launch runs it.
template <class From, class To>
struct copy_elements {
  tensor_view<const From> from;  //!< the source
  tensor_view<To> to;            //!< the destination
  //! Elements to copy.
  SEQPAR_HOST_DEVICE std::int64_t size() const { return to.batch() * to.seq() * to.heads() * to.head_dim(); }
  //! Copies element i.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t d = i % to.head_dim(), h = i / to.head_dim() % to.heads(),
                       s = i / to.head_dim() / to.heads() % to.seq(), b = i / to.head_dim() / to.heads() / to.seq();
    to(b, s, h, d) = from_float<To>(to_float(from(b, s, h, d)));
  }
};

//! Copies `from` into `to` (equal extents) on the host, converting the element type.
template <class From, class To>
void copy_view(const tensor_view<From>& from, const tensor_view<To>& to) {
  const copy_elements<std::remove_const_t<From>, To> copy{from, to};
  for (std::int64_t i = 0; i < copy.size(); ++i) copy(i);
}

//! rowsum(dO * O) in fp32 of one row per call, row = (b * h + head) * n + i, into dots [B, h, n].
template <class T>
struct row_dots_of {
  tensor_view<const T> dout;  //!< dO [B, n, h, D]
  tensor_view<const T> o;     //!< O [B, n, h, D]
  lse_view dots;              //!< the row dots [B, h, n]
  //! Rows: B * h * n.
  SEQPAR_HOST_DEVICE std::int64_t rows() const { return o.batch() * o.heads() * o.seq(); }
  //! The dot of one row.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t row) const {
    const std::int64_t i = row % o.seq(), h = row / o.seq() % o.heads(), b = row / o.seq() / o.heads();
    float sum = 0.0f;
    for (std::int64_t d = 0; d < o.head_dim(); ++d) sum += to_float(dout(b, i, h, d)) * to_float(o(b, i, h, d));
    dots(b, h, i) = sum;
  }
};
}  // namespace detail

SEQPAR_NAMESPACE_END

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! The ring walk of one rank for fixed shapes, unchecked (its callers check and agree first):
//! `heads` query heads read `kv_heads` kv heads through `map`, tokens dealt over the ring group by
//! `seq`, in the ring communicator's memory. forward merges the partials of every block pair into o
//! and the fp32 lse of this rank's rows (one [B, heads, length] block per token run, runs in order).
//! backward walks again with the final lse; dK/dV travel home with their shard. On a device the
//! exchanges run on a side stream (`fork`) beside the block pairs, into double buffers: step t
//! computes with shard buffer t % 2 while the next shard arrives in the other, and the gradients a
//! rank adds to a shard travel on while it computes the next step. With a call's packed documents
//! the policy masks by them and block pairs with no document in common are skipped.
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

  //! The workspace of a forward on `rank` with elements of T: the two K/V shards in flight, the
  //! fp32 output and a block pair's partial, and the partial's lse.
  template <class T>
  workspace_layout<5> forward_layout(int rank) const {
    const std::size_t kv = 2 * kv_elements() * sizeof(T), acc = elements_of(rank, heads) * sizeof(float);
    return workspace_layout<5>({kv, kv, acc, acc, lse_floats(rank) * sizeof(float)});
  }
  //! The workspace of a backward on `rank` with elements of T: the two K/V shards in flight, three
  //! fp32 dK/dV shards (this rank's share of two by step parity, and the incoming one), the row dots
  //! and the fp32 dQ.
  template <class T>
  workspace_layout<7> backward_layout(int rank) const {
    const std::size_t kv = 2 * kv_elements(), rows = std::max(lse_floats(rank), elements_of(rank, heads));
    return workspace_layout<7>({kv * sizeof(T), kv * sizeof(T), kv * sizeof(float), kv * sizeof(float),
                                kv * sizeof(float), rows * sizeof(float), rows * sizeof(float)});
  }

  //! o and lse (lse_floats(comm.rank()) floats) of this rank's queries against every shard, in
  //! `workspace` (forward_layout<T>(comm.rank()).bytes()).
  template <class Policy, class Comm, class Resource, class T>
  void forward(const Policy& policy, Comm& comm, std::span<std::byte> workspace, stream_fork& fork,
               const call_documents<Resource>& docs, tensor_view<const T> q, tensor_view<const T> k,
               tensor_view<const T> v, tensor_view<T> o, float* lse, stream_t stream) const {
    const int P = comm.size(), r = comm.rank();
    const memory_space where = comm.memory();
    const auto launch = launcher_of(policy);  // the element-wise steps' too
    const auto runs = token_runs(seq, r);
    const attention_options opt = options.with_documents(docs.ids());  // what the policy gets
    const auto layout = forward_layout<T>(r);
    auto kv = [&](int i) { return layout.template as<T>(workspace, i).data(); };
    float* const o_acc = layout.template as<float>(workspace, 2).data();
    float* const part_o = layout.template as<float>(workspace, 3).data();
    float* const part_lse = layout.template as<float>(workspace, 4).data();
    for_each_index(where, lse_floats(r), fill_floats{lse, -std::numeric_limits<float>::infinity()}, stream, launch);
    for_each_index(where, elements_of(r, heads), fill_floats{o_acc, 0.0f}, stream, launch);
    pack_kv(where, k, v, kv(0), r, stream, launch);
    for (int t = 0; t < P; ++t) {
      const int s = (r - t + P) % P;
      const stream_t side = t + 1 < P ? fork.fork(where, stream) : stream;
      const auto [ks, vs] = kv_views<const T>(kv(t % 2), s);
      for_each_pair(runs, s, docs, [&](const token_run& qr, std::int64_t lse_at, const token_run& kr, block_pair pair) {
        const auto part = make_bshd(part_o, batch, qr.length, heads, head_dim);
        const lse_view part_l(part_lse, batch, heads, qr.length);
        policy.block_forward(block_forward_args<T>{.q = rows(q, qr.local, qr.length),
                                                   .k = rows(ks, kr.local, kr.length),
                                                   .v = rows(vs, kr.local, kr.length),
                                                   .o_part = part,
                                                   .lse_part = part_l,
                                                   .map = map,
                                                   .options = opt,
                                                   .pair = pair},
                             stream);
        const merge_partial_rows merge{rows(acc_view(o_acc, r, heads), qr.local, qr.length),
                                       lse_view(lse + lse_at, batch, heads, qr.length), tensor_view<const float>(part),
                                       const_lse_view(part_l)};
        for_each_index(where, merge.rows(), merge, stream, launch);
      });
      if (t + 1 == P) break;
      send_on(comm, kv(t % 2), kv((t + 1) % 2), s, side);
      fork.join(where, stream);
    }
    copy(where, tensor_view<const float>(acc_view(o_acc, r, heads)), o, stream, launch);
  }

  //! dq, dk, dv of this rank's rows from dO, the forward's o and its lse, in `workspace`
  //! (backward_layout<T>(comm.rank()).bytes()).
  template <class Policy, class Comm, class Resource, class T>
  void backward(const Policy& policy, Comm& comm, std::span<std::byte> workspace, stream_fork& fork,
                const call_documents<Resource>& docs, tensor_view<const T> q, tensor_view<const T> k,
                tensor_view<const T> v, tensor_view<const T> o, tensor_view<const T> dout, const float* lse,
                tensor_view<T> dq, tensor_view<T> dk, tensor_view<T> dv, stream_t stream) const {
    const int P = comm.size(), r = comm.rank();
    const memory_space where = comm.memory();
    const auto launch = launcher_of(policy);
    const auto runs = token_runs(seq, r);
    const attention_options opt = options.with_documents(docs.ids());  // what the policy gets
    const std::int64_t kv_n = 2 * kv_elements();
    const auto layout = backward_layout<T>(r);
    auto kv = [&](int i) { return layout.template as<T>(workspace, i).data(); };
    // This rank's share of the gradients of the shard it holds (two, by step parity), and the
    // gradients of the next shard from the ranks before it.
    auto grads = [&](int i) { return layout.template as<float>(workspace, 2 + i).data(); };
    float* const dots = layout.template as<float>(workspace, 5).data();
    float* const dq_acc = layout.template as<float>(workspace, 6).data();
    float* const incoming = grads(2);
    // A policy that reads the final output computes the row dots itself.
    constexpr bool from_output = block_backward_reads_output<Policy>;
    if constexpr (!from_output)
      for (const auto& run : runs) {
        const row_dots_of<T> dot{rows(dout, run.local, run.length), rows(o, run.local, run.length),
                                 lse_view(dots + lse_offset(runs, run), batch, heads, run.length)};
        for_each_index(where, dot.rows(), dot, stream, launch);
      }
    for_each_index(where, elements_of(r, heads), fill_floats{dq_acc, 0.0f}, stream, launch);
    pack_kv(where, k, v, kv(0), r, stream, launch);
    for (int t = 0; t < P; ++t) {
      const int s = (r - t + P) % P;
      const stream_t side = P > 1 ? fork.fork(where, stream) : stream;
      float* const mine = grads(t % 2);
      for_each_index(where, kv_n, fill_floats{mine, 0.0f}, stream, launch);
      const auto [ks, vs] = kv_views<const T>(kv(t % 2), s);
      const auto [dks, dvs] = kv_views<float>(mine, s);
      for_each_pair(runs, s, docs, [&](const token_run& qr, std::int64_t lse_at, const token_run& kr, block_pair pair) {
        const block_backward_args<T> args{
            .q = rows(q, qr.local, qr.length),
            .k = rows(ks, kr.local, kr.length),
            .v = rows(vs, kr.local, kr.length),
            .dout = rows(dout, qr.local, qr.length),
            .lse = const_lse_view(lse + lse_at, batch, heads, qr.length),
            .row_dots = from_output ? const_lse_view{} : const_lse_view(dots + lse_at, batch, heads, qr.length),
            .o = from_output ? rows(o, qr.local, qr.length) : tensor_view<const T>{},
            .dq = rows(acc_view(dq_acc, r, heads), qr.local, qr.length),
            .dk = rows(dks, kr.local, kr.length),
            .dv = rows(dvs, kr.local, kr.length),
            .map = map,
            .options = opt,
            .pair = pair};
        if constexpr (from_output)
          policy.block_backward_from_output(args, stream);
        else
          policy.block_backward(args, stream);
      });
      if (P == 1) break;
      if (t > 0) send_grads(comm, grads((t - 1) % 2), incoming, t - 1, where, side, launch);
      if (t + 1 < P) send_on(comm, kv(t % 2), kv((t + 1) % 2), s, side);
      fork.join(where, stream);
    }
    // After P hops each shard's gradients are home.
    float* home = grads(0);
    if (P > 1) {
      send_grads(comm, grads((P - 1) % 2), incoming, P - 1, where, stream, launch);
      home = incoming;
    }
    copy(where, tensor_view<const float>(acc_view(dq_acc, r, heads)), dq, stream, launch);
    const auto [dk_home, dv_home] = kv_views<const float>(home, r);
    copy(where, dk_home, dk, stream, launch);
    copy(where, dv_home, dv, stream, launch);
  }

 private:
  std::size_t elements_of(int rank, int h) const {
    return static_cast<std::size_t>(batch * seq.size(rank) * h * head_dim);
  }
  std::size_t kv_elements() const { return elements_of(0, kv_heads); }  // rank 0 holds the most tokens
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
  // K and V of rank s's shard, packed one after the other at `p`.
  template <class U>
  std::pair<tensor_view<U>, tensor_view<U>> kv_views(std::remove_const_t<U>* p, int s) const {
    const std::int64_t n = seq.size(s);
    return {make_bshd<U>(p, batch, n, kv_heads, head_dim),
            make_bshd<U>(p + elements_of(s, kv_heads), batch, n, kv_heads, head_dim)};
  }
  template <class From, class To, class Launcher>
  static void copy(memory_space where, const tensor_view<const From>& from, const tensor_view<To>& to, stream_t stream,
                   const Launcher& launch) {
    const copy_elements<From, To> c{from, to};
    for_each_index(where, c.size(), c, stream, launch);
  }
  template <class T, class Launcher>
  void pack_kv(memory_space where, const tensor_view<const T>& k, const tensor_view<const T>& v, T* p, int rank,
               stream_t stream, const Launcher& launch) const {
    const auto [kp, vp] = kv_views<T>(p, rank);
    copy(where, k, kp, stream, launch);
    copy(where, v, vp, stream, launch);
  }
  // Sends rank s's shard (K and V, or their gradients) from `from` to the next rank and receives the
  // one before it into `to`, on `stream`.
  template <class Comm, class U>
  void send_on(Comm& comm, const U* from, U* to, int s, stream_t stream) const {
    const int P = comm.size(), r = comm.rank(), before = (s - 1 + P) % P;
    comm.template neighbor_exchange<U>(std::span<const U>(from, 2 * elements_of(s, kv_heads)), (r + 1) % P,
                                       std::span<U>(to, 2 * elements_of(before, kv_heads)), (r - 1 + P) % P, stream);
  }
  // Adds the gradients of the shard held at step t that arrived from the ranks before (none at
  // step 0) to this rank's share `mine`, and sends the sum on; the next shard's arrive in `incoming`.
  template <class Comm, class Launcher>
  void send_grads(Comm& comm, float* mine, float* incoming, int t, memory_space where, stream_t stream,
                  const Launcher& launch) const {
    const int P = comm.size(), s = (comm.rank() - t + P) % P;
    if (t > 0) for_each_index(where, 2 * elements_of(s, kv_heads), add_floats{mine, incoming}, stream, launch);
    send_on(comm, mine, incoming, s, stream);
  }
  // Calls f(query run, its lse offset, key run, pair) for every pair of `runs` and rank s's runs
  // that the causal mask and the documents leave anything of.
  template <class Resource, class F>
  void for_each_pair(const std::vector<token_run>& runs, int s, const call_documents<Resource>& docs, F&& f) const {
    for (const auto& qr : runs)
      for (const auto& kr : token_runs(seq, s)) {
        const block_relation rel = causal_relation(qr.global, qr.length, kr.global, kr.length, options.causal);
        if (rel == block_relation::masked || qr.length == 0 || kr.length == 0) continue;
        const document_ids ids = docs.host_ids();
        if (!ids.overlap(qr.global, qr.global + qr.length - 1, kr.global, kr.global + kr.length - 1)) continue;
        f(qr, lse_offset(runs, qr), kr, block_pair{qr.global, kr.global, rel});
      }
  }
};

SEQPAR_DETAIL_KERNEL_NAMESPACE_END
