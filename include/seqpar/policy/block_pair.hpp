//! @file block_pair.hpp
//! Where a block pair of ring attention sits in the global sequence, and how it relates to the
//! causal mask.
#pragma once

#include <seqpar/config.hpp>

#include <cstdint>

SEQPAR_NAMESPACE_BEGIN

//! How a block pair relates to the causal mask.
enum class block_relation {
  visible,   //!< every key precedes (or equals) every query: no mask
  diagonal,  //!< the blocks overlap in position: key position <= query position inside the pair
  masked,    //!< every key follows every query: nothing to compute (the caller skips the pair)
};

//! Name of a relation ("visible", "diagonal", "masked").
inline constexpr const char* to_string(block_relation r) noexcept {
  return r == block_relation::visible ? "visible" : r == block_relation::diagonal ? "diagonal" : "masked";
}

//! Where a block pair sits in the global sequence: query local row i is position q_first + i, key
//! local row j is position kv_first + j. Positions decide the causal mask (key <= query) and any
//! position mask of the policy; `relation` says what that implies for the whole pair, so a kernel
//! can skip the mask when the pair is visible.
struct block_pair {
  std::int64_t q_first = 0;                           //!< global position of the first query row
  std::int64_t kv_first = 0;                          //!< global position of the first key row
  block_relation relation = block_relation::visible;  //!< the pair's relation to the causal mask
};

//! The relation of query positions [q_first, q_first + q_len) to key positions [kv_first,
//! kv_first + kv_len): visible when not causal or when the last key precedes the first query.
SEQPAR_HOST_DEVICE block_relation causal_relation(std::int64_t q_first, std::int64_t q_len, std::int64_t kv_first,
                                                  std::int64_t kv_len, bool causal) {
  if (!causal || kv_first + kv_len - 1 <= q_first) return block_relation::visible;
  if (kv_first > q_first + q_len - 1) return block_relation::masked;
  return block_relation::diagonal;
}

SEQPAR_NAMESPACE_END
