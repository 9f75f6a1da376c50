//! @file all_to_all_heads_plan.hpp
//! The plan of a Ulysses exchange: head split, shard sizes, per-peer counts and workspace, computed once.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/error.hpp>
#include <seqpar/shard.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>
#include <seqpar/ulysses/detail/heads_geometry.hpp>
#include <seqpar/ulysses/head_partition.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! What an exchange carries: one query-headed tensor (O, dO, dQ) or Q with K and V.
enum class heads_payload {
  q,    //!< one query-headed tensor
  qkv,  //!< Q, K and V together
};

//! Which part of the heads an exchange moves: each rank's kv heads (each with the rank's query heads
//! that read it) split in `count` balanced groups, and the group `index`. {1, 0}, the default,
//! moves every head; a layer that overlaps exchange with attention runs one exchange per group.
struct head_group {
  int count = 1;  //!< groups, at most the fewest kv heads any rank's query heads read
  int index = 0;  //!< the group moved, in [0, count)
};

//! Everything one rank needs to run all_to_all_heads and its inverse for fixed shapes: the head
//! split, the shard sizes, the counts and displacements of the single all_to_all_v of each
//! exchange, and the workspace size. Make it once per shape; calls reuse it.
class all_to_all_heads_plan {
 public:
  //! Alignment, in bytes, of each half of the workspace.
  static constexpr std::size_t workspace_alignment = 256;

  //! The plan of rank `rank` for activations [batch, S_r, heads, head_dim] of element type `type`,
  //! with the sequence split by `seq` and the heads by `heads` (both over the same group size).
  all_to_all_heads_plan(int rank, const seq_partition& seq, const head_partition& heads, std::int64_t batch,
                        std::int64_t head_dim, dtype type, head_group group = {})
      : type_(type) {
    // The partitions are plain structs: re-check what their factories check, so a hand-built one
    // fails here rather than dividing by zero or leaving tokens unwritten.
    (void)make_seq_partition(seq.tokens, seq.ranks, seq.strategy);
    (void)make_head_partition(heads.heads, heads.kv_heads, heads.ranks);
    SEQPAR_EXPECTS(seq.ranks == heads.ranks, "heads: partition over " << heads.ranks
                                                                      << " ranks; expected the sequence's group size "
                                                                      << seq.ranks);
    SEQPAR_EXPECTS(seq.ranks <= detail::max_heads_exchange_ranks,
                   "seq: Ulysses exchanges support groups of up to " << detail::max_heads_exchange_ranks
                                                                     << " ranks, got " << seq.ranks);
    SEQPAR_EXPECTS(rank >= 0 && rank < seq.ranks, "rank: expected a rank in [0, " << seq.ranks << "), got " << rank);
    SEQPAR_EXPECTS(batch >= 1, "batch: expected at least 1, got " << batch);
    SEQPAR_EXPECTS(head_dim >= 1, "head_dim: expected at least 1, got " << head_dim);
    const int fewest = fewest_kv_heads(heads);
    SEQPAR_EXPECTS(group.count >= 1 && group.count <= std::max(fewest, 1),
                   "head_groups: expected 1 to " << std::max(fewest, 1)
                                                 << " (the fewest kv heads a rank's query heads read, so that each "
                                                    "group of every rank holds whole GQA groups), got "
                                                 << group.count);
    SEQPAR_EXPECTS(group.index >= 0 && group.index < group.count,
                   "group.index: expected a group in [0, " << group.count << "), got " << group.index);
    for (int s = 0; s < 2; ++s) {
      auto& g = geometry_[s];
      g.rank = rank, g.segments = s == 0 ? 1 : 3, g.seq = seq, g.heads = heads, g.batch = batch, g.head_dim = head_dim;
      g.groups = group.count, g.group = group.index;
      detail::compute_displacements(g);
      const int P = seq.ranks;
      for (int p = 0; p < P; ++p) {
        counts_[s].seq_counts.push_back(static_cast<std::size_t>(g.seq_displ[p + 1] - g.seq_displ[p]));
        counts_[s].seq_displs.push_back(static_cast<std::size_t>(g.seq_displ[p]));
        counts_[s].heads_counts.push_back(static_cast<std::size_t>(g.heads_displ[p + 1] - g.heads_displ[p]));
        counts_[s].heads_displs.push_back(static_cast<std::size_t>(g.heads_displ[p]));
      }
    }
  }

  //! This rank.
  int rank() const { return geometry_[0].rank; }
  //! P, the group size.
  int ranks() const { return geometry_[0].seq.ranks; }
  //! The sequence partition.
  const seq_partition& seq() const { return geometry_[0].seq; }
  //! The head partition.
  const head_partition& heads() const { return geometry_[0].heads; }
  //! The part of the heads this plan's exchanges move.
  head_group group() const { return {geometry_[0].groups, geometry_[0].group}; }
  //! Heads of this rank the exchanges move: query heads (kv = false) or kv heads.
  int local_heads(bool kv) const { return geometry_[0].seg_heads(kv, rank()); }
  //! Index, among all of this rank's query (kv = false) or kv heads, of the first head the exchanges move.
  int local_first(bool kv) const {
    const auto& h = heads();
    return geometry_[0].seg_first(kv, rank()) - (kv ? h.kv_first(rank()) : h.first(rank()));
  }
  //! B.
  std::int64_t batch() const { return geometry_[0].batch; }
  //! D.
  std::int64_t head_dim() const { return geometry_[0].head_dim; }
  //! Element type of the activations.
  dtype type() const { return type_; }

  //! Elements of the sequence-side exchange buffer (what the forward sends, the inverse receives).
  std::size_t seq_side_elements(heads_payload what) const { return total(geometry(what).seq_displ); }
  //! Elements of the heads-side exchange buffer (what the forward receives, the inverse sends).
  std::size_t heads_side_elements(heads_payload what) const { return total(geometry(what).heads_displ); }
  //! Byte offset of the heads-side buffer within the workspace.
  std::size_t heads_side_offset(heads_payload what) const {
    const std::size_t bytes = seq_side_elements(what) * size_of(type_);
    return (bytes + workspace_alignment - 1) / workspace_alignment * workspace_alignment;
  }
  //! Workspace bytes an exchange of `what` needs (both directions need the same).
  std::size_t workspace_bytes(heads_payload what) const {
    return heads_side_offset(what) + heads_side_elements(what) * size_of(type_);
  }
  //! Workspace bytes enough for every exchange of this plan.
  std::size_t workspace_bytes() const { return workspace_bytes(heads_payload::qkv); }

  //! Per-peer element counts of the sequence side (forward send counts, inverse receive counts).
  std::span<const std::size_t> seq_side_counts(heads_payload what) const { return counts(what).seq_counts; }
  //! Per-peer displacements of the sequence side.
  std::span<const std::size_t> seq_side_displs(heads_payload what) const { return counts(what).seq_displs; }
  //! Per-peer element counts of the heads side (forward receive counts, inverse send counts).
  std::span<const std::size_t> heads_side_counts(heads_payload what) const { return counts(what).heads_counts; }
  //! Per-peer displacements of the heads side.
  std::span<const std::size_t> heads_side_displs(heads_payload what) const { return counts(what).heads_displs; }

  //! The index maps of one exchange (what the pack and unpack loops and kernels use).
  const detail::heads_geometry& geometry(heads_payload what) const { return geometry_[what == heads_payload::qkv]; }

 private:
  struct peer_counts {
    std::vector<std::size_t> seq_counts, seq_displs, heads_counts, heads_displs;
  };
  const peer_counts& counts(heads_payload what) const { return counts_[what == heads_payload::qkv]; }
  std::size_t total(const std::int64_t* displ) const { return static_cast<std::size_t>(displ[ranks()]); }
  static int fewest_kv_heads(const head_partition& heads) {
    int fewest = heads.kv_count(0);
    for (int p = 1; p < heads.ranks; ++p) fewest = std::min(fewest, heads.kv_count(p));
    return fewest;
  }

  detail::heads_geometry geometry_[2];
  peer_counts counts_[2];
  dtype type_;
};

//! The plan of rank `rank` for q [B, S_r, H, D] and k, v [B, S_r, H_kv, D] of element `type`,
//! sharded as `seq`: make_all_to_all_heads_plan(r, seq, {.batch = B, .heads = H, .kv_heads = H_kv,
//! .head_dim = D}, dtype::bfloat16). Checks the shape (kv_heads divides heads; value_dim is head_dim).
//! With `group`, the plan's exchanges move only that group's heads (head-side views hold just them;
//! the inverse writes just them, adding to a kv head's gradient that an earlier group wrote).
inline all_to_all_heads_plan make_all_to_all_heads_plan(int rank, const seq_partition& seq,
                                                        const attention_shape& shape, dtype type,
                                                        head_group group = {}) {
  check_attention_shape(shape);
  SEQPAR_EXPECTS(shape.values() == shape.head_dim, "shape.value_dim: the Ulysses exchange moves q, k and v of one head "
                                                   "size; expected head_dim = " << shape.head_dim << ", got "
                                                                                << shape.value_dim);
  return all_to_all_heads_plan(rank, seq, make_head_partition(shape.heads, shape.kv(), seq.ranks), shape.batch,
                               shape.head_dim, type, group);
}

SEQPAR_NAMESPACE_END
