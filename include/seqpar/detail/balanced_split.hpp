//! @file balanced_split.hpp
//! The balanced split of n items over P parts (the first n % P parts hold one item more) and the
//! GQA map from a query head to its kv head, shared by the partitions, the kernels and the counters.
#pragma once

#include <seqpar/config.hpp>

#include <concepts>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! Items of part p when n items are split over `parts` parts, the first n % parts one item more.
template <std::integral I>
SEQPAR_HOST_DEVICE constexpr I balanced_size(I n, I parts, I p) {
  return n / parts + (p < n % parts ? 1 : 0);
}

//! Index of the first item of part p in the same split (the sizes of parts 0 .. p-1 summed).
template <std::integral I>
SEQPAR_HOST_DEVICE constexpr I balanced_offset(I n, I parts, I p) {
  const I extra = n % parts;
  return p * (n / parts) + (p < extra ? p : extra);
}

//! The part that holds item i (0 <= i < n) in the same split.
template <std::integral I>
SEQPAR_HOST_DEVICE constexpr I balanced_owner(I n, I parts, I i) {
  const I base = n / parts, extra = n % parts, long_items = extra * (base + 1);
  return i < long_items ? i / (base + 1) : extra + (i - long_items) / base;
}

//! GQA: the local kv head read by local query head h, when local query head 0 is global head
//! `first_query`, `group` query heads share a kv head and local kv head 0 is global `first_kv`.
SEQPAR_HOST_DEVICE constexpr int kv_head_of(int first_query, int h, int group, int first_kv) {
  return (first_query + h) / group - first_kv;
}

}  // namespace detail
SEQPAR_NAMESPACE_END
