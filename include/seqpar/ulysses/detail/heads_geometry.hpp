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
  int groups = 1;  //!< head groups the rank's heads are split into (1: the exchange moves every head)
  int group = 0;   //!< the group this exchange moves
  std::int64_t seq_displ[max_heads_exchange_ranks + 1] = {};    //!< element offset of seq-side block p
  std::int64_t heads_displ[max_heads_exchange_ranks + 1] = {};  //!< element offset of heads-side block p

  //! The heads [first, first + count) of segment t that rank p owns within this exchange's group.
  //! A group is a balanced share of p's kv heads (each a unit with the query heads of p that read
  //! it), so every group holds whole GQA groups and no kv head of p is split between groups.
  SEQPAR_HOST_DEVICE void seg_range(int t, int p, int& first, int& count) const {
    if (groups == 1) {
      first = t ? heads.kv_first(p) : heads.first(p);
      count = t ? heads.kv_count(p) : heads.count(p);
      return;
    }
    const int units = heads.kv_count(p);
    const int kv = heads.kv_first(p) + balanced_offset(units, groups, group), n = balanced_size(units, groups, group);
    if (t) {
      first = kv, count = n;
      return;
    }
    const int lo = heads.first(p), hi = lo + heads.count(p), group_size = heads.group();
    first = kv * group_size > lo ? kv * group_size : lo;
    const int end = (kv + n) * group_size < hi ? (kv + n) * group_size : hi;
    count = n ? end - first : 0;
  }
  //! Heads of segment t that rank p owns (in this exchange's group).
  SEQPAR_HOST_DEVICE int seg_heads(int t, int p) const {
    int first = 0, count = 0;
    seg_range(t, p, first, count);
    return count;
  }
  //! First head of segment t that rank p owns (in this exchange's group).
  SEQPAR_HOST_DEVICE int seg_first(int t, int p) const {
    int first = 0, count = 0;
    seg_range(t, p, first, count);
    return first;
  }
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
  //! The ranks [first, last] whose heads of segment t include `head` (a kv head may have several)
  //! within this exchange's group; first > last when no rank moves `head` in this group.
  SEQPAR_HOST_DEVICE void owners(int t, std::int64_t head, int& first, int& last) const {
    all_owners(t, head, first, last);
    if (groups == 1) return;
    while (first <= last && !moves(t, first, head)) ++first;
    while (last >= first && !moves(t, last, head)) --last;
  }
  //! True when an earlier group of this exchange's split already sent `head` of segment t back
  //! (a kv head shared by two ranks that hold it in different groups): the inverse then adds to
  //! what that group wrote.
  SEQPAR_HOST_DEVICE bool sent_by_earlier_group(int t, std::int64_t head) const {
    if (groups == 1 || t == 0) return false;
    int first = 0, last = 0;
    all_owners(t, head, first, last);
    for (int p = first; p <= last; ++p) {
      const int units = heads.kv_count(p), unit = static_cast<int>(head) - heads.kv_first(p);
      if (balanced_owner(units, groups, unit) < group) return true;
    }
    return false;
  }

 private:
  SEQPAR_HOST_DEVICE void all_owners(int t, std::int64_t head, int& first, int& last) const {
    if (t == 0) {
      first = last = query_head_owner(static_cast<int>(head));
      return;
    }
    const int group_size = heads.group();
    first = query_head_owner(static_cast<int>(head) * group_size);
    last = query_head_owner(static_cast<int>(head) * group_size + group_size - 1);
  }
  SEQPAR_HOST_DEVICE bool moves(int t, int p, std::int64_t head) const {
    int first = 0, count = 0;
    seg_range(t, p, first, count);
    return head >= first && head < first + count;
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
