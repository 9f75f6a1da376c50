//! @file heads_geometry.hpp
//! The index maps of the Ulysses exchange, shared by the host loops and the CUDA kernels.
//!
//! Rank r's exchange buffer holds one block per peer p, blocks in rank order. A block holds one
//! segment per exchanged tensor (Q only, or Q then K then V); a segment is a packed
//! [tokens][batch][heads][head_dim] array (tokens outermost, so a sequence-first tensor's block is
//! already contiguous). Two shapes of block exist:
//! - seq side, what rank r holds for peer p in sequence shards: S_r tokens, the n_t(p) heads of
//!   segment t that p owns, starting at head first_t(p) of r's sequence-sharded tensor;
//! - heads side, what rank r holds from peer p in head shards: S_p tokens (global positions of p's
//!   shard), the n_t(r) heads that r owns.
//! The forward exchange packs seq-side blocks and unpacks heads-side ones; the inverse the opposite.
#pragma once

#include <seqpar/detail/balanced_split.hpp>
#include <seqpar/shard.hpp>
#include <seqpar/ulysses/head_partition.hpp>

#include <cstdint>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! The largest group an exchange geometry describes (its displacement tables are fixed arrays, so
//! the whole geometry travels to a kernel as one argument).
inline constexpr int max_heads_exchange_ranks = 128;

//! Coordinates (batch, seq, head, dim) in a 4-d view.
struct coord4 {
  std::int64_t b, s, h, d;
};

//! Geometry of one exchange on one rank; trivially copyable.
struct heads_geometry {
  int rank = 0;
  int segments = 1;  //!< 1: one query-headed tensor; 3: Q, K, V (segments 1 and 2 are kv-headed)
  seq_partition seq;
  head_partition heads;
  std::int64_t batch = 1, head_dim = 1;
  std::int64_t seq_displ[max_heads_exchange_ranks + 1] = {};    //!< element offset of seq-side block p
  std::int64_t heads_displ[max_heads_exchange_ranks + 1] = {};  //!< element offset of heads-side block p

  //! Heads of segment t that rank p owns.
  SEQPAR_HOST_DEVICE int seg_heads(int t, int p) const { return t ? heads.kv_count(p) : heads.count(p); }
  //! First head of segment t that rank p owns.
  SEQPAR_HOST_DEVICE int seg_first(int t, int p) const { return t ? heads.kv_first(p) : heads.first(p); }
  //! Heads of segment t in the unsharded tensor (H or H_kv).
  SEQPAR_HOST_DEVICE int seg_total_heads(int t) const { return t ? heads.kv_heads : heads.heads; }

  //! Elements of segment t in the seq-side block of peer p.
  SEQPAR_HOST_DEVICE std::int64_t seq_side_segment(int p, int t) const {
    return seq.size(rank) * batch * seg_heads(t, p) * head_dim;
  }
  //! Elements of segment t in the heads-side block of peer p.
  SEQPAR_HOST_DEVICE std::int64_t heads_side_segment(int p, int t) const {
    return seq.size(p) * batch * seg_heads(t, rank) * head_dim;
  }
  //! Offset of segment t inside the seq-side block of peer p.
  SEQPAR_HOST_DEVICE std::int64_t seq_side_segment_offset(int p, int t) const {
    std::int64_t at = 0;
    for (int u = 0; u < t; ++u) at += seq_side_segment(p, u);
    return at;
  }
  //! Offset of segment t inside the heads-side block of peer p.
  SEQPAR_HOST_DEVICE std::int64_t heads_side_segment_offset(int p, int t) const {
    std::int64_t at = 0;
    for (int u = 0; u < t; ++u) at += heads_side_segment(p, u);
    return at;
  }

  //! Where element e of segment t of the seq-side block of peer p sits in r's sequence-sharded tensor.
  SEQPAR_HOST_DEVICE coord4 seq_side_coord(int p, int t, std::int64_t e) const {
    const std::int64_t n = seg_heads(t, p);
    const std::int64_t d = e % head_dim;
    e /= head_dim;
    const std::int64_t h = e % n;
    e /= n;
    return {e % batch, e / batch, seg_first(t, p) + h, d};
  }
  //! Where element e of segment t of the heads-side block of peer p sits in r's head-sharded tensor.
  SEQPAR_HOST_DEVICE coord4 heads_side_coord(int p, int t, std::int64_t e) const {
    const std::int64_t n = seg_heads(t, rank);
    const std::int64_t d = e % head_dim;
    e /= head_dim;
    const std::int64_t h = e % n;
    e /= n;
    return {e % batch, seq.global(p, e / batch), h, d};
  }
  //! Buffer index (from the start of the seq-side blocks) of r's sequence-sharded element
  //! (b, s, head, d) of segment t as held for peer p, who must own `head`.
  SEQPAR_HOST_DEVICE std::int64_t seq_side_index(int p, int t, std::int64_t b, std::int64_t s, std::int64_t head,
                                                 std::int64_t d) const {
    const std::int64_t n = seg_heads(t, p);
    return seq_displ[p] + seq_side_segment_offset(p, t) + ((s * batch + b) * n + head - seg_first(t, p)) * head_dim + d;
  }

  //! The rank that owns query head g.
  SEQPAR_HOST_DEVICE int query_head_owner(int g) const { return balanced_owner(heads.heads, heads.ranks, g); }
  //! The ranks [first, last] whose heads of segment t include `head` (a kv head may have several).
  SEQPAR_HOST_DEVICE void owners(int t, std::int64_t head, int& first, int& last) const {
    if (t == 0) {
      first = last = query_head_owner(static_cast<int>(head));
      return;
    }
    const int group = heads.group();
    first = query_head_owner(static_cast<int>(head) * group);
    last = query_head_owner(static_cast<int>(head) * group + group - 1);
  }
};

//! Fills the displacement tables of `g` (its other fields set).
inline void compute_displacements(heads_geometry& g) {
  const int P = g.seq.ranks;
  g.seq_displ[0] = g.heads_displ[0] = 0;
  for (int p = 0; p < P; ++p) {
    g.seq_displ[p + 1] = g.seq_displ[p] + g.seq_side_segment_offset(p, g.segments);
    g.heads_displ[p + 1] = g.heads_displ[p] + g.heads_side_segment_offset(p, g.segments);
  }
}

}  // namespace detail
SEQPAR_NAMESPACE_END
