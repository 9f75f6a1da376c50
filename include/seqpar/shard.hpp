//! @file shard.hpp
//! seq_shard / seq_unshard: which global tokens each rank owns, and copies between a global tensor
//! and a rank's shard, for the contiguous and zigzag strategies.
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/detail/balanced_split.hpp>
#include <seqpar/error.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/memory_space.hpp>

#include <cstdint>

SEQPAR_NAMESPACE_BEGIN

//! How global tokens are dealt to ranks.
enum class shard_strategy {
  contiguous,  //!< rank r owns one block; the first S % P ranks hold one token more
  zigzag,      //!< 2P equal blocks; rank r owns blocks r and 2P-1-r (balances causal work); S % 2P == 0
};

//! Name of a strategy ("contiguous", "zigzag").
inline constexpr const char* to_string(shard_strategy s) noexcept {
  return s == shard_strategy::contiguous ? "contiguous" : "zigzag";
}

//! The token partition of a sequence of `tokens` over `ranks` ranks: sizes, offsets and the map from
//! a rank's local token index to the global one. Trivially copyable; usable in kernels.
struct seq_partition {
  std::int64_t tokens = 0;  //!< S, the global sequence length
  int ranks = 1;            //!< P
  shard_strategy strategy = shard_strategy::contiguous;  //!< how the tokens are dealt to the ranks

  //! S_r: tokens held by rank r; the first S % P ranks hold one more (none for zigzag, as S % 2P == 0).
  SEQPAR_HOST_DEVICE std::int64_t size(int r) const {
    return detail::balanced_size<std::int64_t>(tokens, ranks, r);
  }
  //! o_r = S_0 + ... + S_{r-1}: where rank r's tokens start in the rank-major concatenation of shards
  //! (for contiguous shards this is also the global index of its first token).
  SEQPAR_HOST_DEVICE std::int64_t offset(int r) const {
    return detail::balanced_offset<std::int64_t>(tokens, ranks, r);
  }
  //! Global index of rank r's local token s.
  SEQPAR_HOST_DEVICE std::int64_t global(int r, std::int64_t s) const {
    if (strategy == shard_strategy::contiguous) return offset(r) + s;
    const std::int64_t chunk = tokens / (2 * ranks);
    return s < chunk ? r * chunk + s : (2 * ranks - 1 - r) * chunk + (s - chunk);
  }
  //! The largest S_r.
  SEQPAR_HOST_DEVICE std::int64_t max_size() const { return size(0); }
};

//! A checked partition of `tokens` over `ranks` ranks; zigzag needs tokens % (2 * ranks) == 0.
inline seq_partition make_seq_partition(std::int64_t tokens, int ranks,
                                        shard_strategy strategy = shard_strategy::contiguous) {
  SEQPAR_EXPECTS(ranks >= 1, "ranks: expected a group of at least 1 rank, got " << ranks);
  SEQPAR_EXPECTS(tokens >= 0, "tokens: expected a sequence length >= 0, got " << tokens);
  SEQPAR_EXPECTS(strategy != shard_strategy::zigzag || tokens % (2 * ranks) == 0,
                 "tokens: zigzag sharding needs a sequence length divisible by 2 * ranks = "
                     << 2 * ranks << ", got " << tokens);
  return {tokens, ranks, strategy};
}

namespace detail {
//! Throws unless `global` and `shard` describe the same batch, heads and head_dim and the shard
//! holds exactly rank r's tokens of the partition.
template <class A, class B>
void check_shard_views(const seq_partition& part, int rank, const tensor_view<A>& global, const tensor_view<B>& shard) {
  (void)make_seq_partition(part.tokens, part.ranks, part.strategy);  // a hand-built partition is checked too
  SEQPAR_EXPECTS(rank >= 0 && rank < part.ranks,
                 "rank: expected a rank in [0, " << part.ranks << "), got " << rank);
  SEQPAR_EXPECTS(global.seq() == part.tokens,
                 "global: expected seq extent = the partition's " << part.tokens << " tokens, got " << global.seq());
  SEQPAR_EXPECTS(shard.seq() == part.size(rank), "shard: expected seq extent = S_" << rank << " = " << part.size(rank)
                                                                                   << " tokens, got " << shard.seq());
  for (axis a : {axis::batch, axis::heads, axis::head_dim})
    SEQPAR_EXPECTS(global.extent(a) == shard.extent(a), "shard: expected " << to_string(a) << " extent = global's "
                                                                          << global.extent(a) << ", got "
                                                                          << shard.extent(a));
}
}  // namespace detail

//! What seq_shard takes: the global tensor read and one rank's shard written.
template <element T>
struct seq_shard_args {
  tensor_view<const T> global;  //!< [B, S, H, D]
  tensor_view<T> shard;         //!< [B, S_r, H, D], written
};

//! What seq_unshard takes: one rank's shard read and the global tensor written (its tokens only).
template <element T>
struct seq_unshard_args {
  tensor_view<const T> shard;  //!< [B, S_r, H, D]
  tensor_view<T> global;       //!< [B, S, H, D], the rank's tokens written
};

//! Copies rank `rank`'s tokens of args.global into args.shard, on the host, at once (host memory;
//! for a group, and device memory, the seq_shard of group_shard.hpp).
template <element T>
void seq_shard(const seq_partition& part, int rank, const seq_shard_args<T>& args) {
  const auto& [global, shard] = args;
  detail::check_shard_views(part, rank, global, shard);
  for (std::int64_t b = 0; b < shard.batch(); ++b)
    for (std::int64_t s = 0; s < shard.seq(); ++s)
      for (std::int64_t h = 0; h < shard.heads(); ++h)
        for (std::int64_t d = 0; d < shard.head_dim(); ++d) shard(b, s, h, d) = global(b, part.global(rank, s), h, d);
}

//! Copies rank `rank`'s args.shard back to its tokens of args.global, on the host, at once.
template <element T>
void seq_unshard(const seq_partition& part, int rank, const seq_unshard_args<T>& args) {
  const auto& [shard, global] = args;
  detail::check_shard_views(part, rank, global, shard);
  for (std::int64_t b = 0; b < shard.batch(); ++b)
    for (std::int64_t s = 0; s < shard.seq(); ++s)
      for (std::int64_t h = 0; h < shard.heads(); ++h)
        for (std::int64_t d = 0; d < shard.head_dim(); ++d) global(b, part.global(rank, s), h, d) = shard(b, s, h, d);
}

SEQPAR_NAMESPACE_END

#if SEQPAR_CUDA_COMPILER
#include <seqpar/detail/shard_cuda.cuh>
#endif
