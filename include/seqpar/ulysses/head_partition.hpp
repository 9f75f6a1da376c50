//! @file head_partition.hpp
//! How query heads are split over ranks, and which kv heads each rank's query heads use (GQA/MQA).
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/detail/balanced_split.hpp>
#include <seqpar/error.hpp>

SEQPAR_NAMESPACE_BEGIN

//! Query heads split in contiguous groups: rank r gets h_r = ceil(H/P) heads for r < H % P, else
//! floor(H/P), starting at g_r. With GQA (H_kv < H, H % H_kv == 0) query head g reads kv head
//! g / (H / H_kv); rank r receives exactly the kv heads its query heads read. Usable in kernels.
struct head_partition {
  int heads = 1;     //!< H, query heads
  int kv_heads = 1;  //!< H_kv, key/value heads
  int ranks = 1;     //!< P

  //! h_r: query heads of rank r.
  SEQPAR_HOST_DEVICE int count(int r) const { return detail::balanced_size(heads, ranks, r); }
  //! g_r: first query head of rank r.
  SEQPAR_HOST_DEVICE int first(int r) const { return detail::balanced_offset(heads, ranks, r); }
  //! Query heads per kv head, H / H_kv.
  SEQPAR_HOST_DEVICE int group() const { return heads / kv_heads; }
  //! First kv head that rank r's query heads read (0 when the rank has no heads).
  SEQPAR_HOST_DEVICE int kv_first(int r) const { return count(r) ? first(r) / group() : 0; }
  //! k_r: kv heads that rank r's query heads read.
  SEQPAR_HOST_DEVICE int kv_count(int r) const {
    return count(r) ? (first(r) + count(r) - 1) / group() - kv_first(r) + 1 : 0;
  }
  //! The local kv head (index among rank r's k_r) that rank r's local query head h reads.
  SEQPAR_HOST_DEVICE int local_kv_head(int r, int h) const {
    return detail::kv_head_of(first(r), h, group(), kv_first(r));
  }
};

//! A checked head partition: heads >= 1, kv_heads dividing heads, ranks >= 1.
inline head_partition make_head_partition(int heads, int kv_heads, int ranks) {
  SEQPAR_EXPECTS(heads >= 1, "heads: expected at least 1 query head, got " << heads);
  SEQPAR_EXPECTS(kv_heads >= 1 && kv_heads <= heads && heads % kv_heads == 0,
                 "kv_heads: expected a divisor of heads = " << heads << " (GQA groups of equal size), got " << kv_heads);
  SEQPAR_EXPECTS(ranks >= 1, "ranks: expected a group of at least 1 rank, got " << ranks);
  return {heads, kv_heads, ranks};
}

SEQPAR_NAMESPACE_END
