//! @file attention_shape.hpp
//! attention_shape: the sizes of an attention layer by name, one vocabulary for every layer.
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/error.hpp>

#include <cstdint>
#include <ostream>

SEQPAR_NAMESPACE_BEGIN

//! The sizes of an attention layer, named so that they cannot be swapped silently:
//! `attention_shape{.batch = 2, .heads = 32, .kv_heads = 8, .head_dim = 128}`. q is
//! [batch, S_r, heads, head_dim], k is [batch, S_r, kv_heads, head_dim], v and o are
//! [batch, S_r, kv_heads | heads, value_dim].
struct attention_shape {
  std::int64_t batch = 1;      //!< B, sequences in the batch
  int heads = 0;               //!< H, query heads
  int kv_heads = 0;            //!< H_kv, key/value heads (GQA/MQA when fewer than heads); 0 means heads
  std::int64_t head_dim = 0;   //!< D, elements of one query or key head
  std::int64_t value_dim = 0;  //!< E, elements of one value or output head; 0 means head_dim

  //! H_kv, with 0 read as heads.
  constexpr int kv() const { return kv_heads ? kv_heads : heads; }
  //! E, with 0 read as head_dim.
  constexpr std::int64_t values() const { return value_dim ? value_dim : head_dim; }
  //! Equal when every resolved size is equal.
  friend constexpr bool operator==(const attention_shape& a, const attention_shape& b) {
    return a.batch == b.batch && a.heads == b.heads && a.kv() == b.kv() && a.head_dim == b.head_dim &&
           a.values() == b.values();
  }
  //! Prints {batch, heads, kv_heads, head_dim, value_dim} with the defaults resolved.
  friend std::ostream& operator<<(std::ostream& os, const attention_shape& s) {
    return os << "{batch = " << s.batch << ", heads = " << s.heads << ", kv_heads = " << s.kv()
              << ", head_dim = " << s.head_dim << ", value_dim = " << s.values() << "}";
  }
};

//! Throws unless every size is positive and kv_heads divides heads (GQA groups of equal size).
inline void check_attention_shape(const attention_shape& s) {
  SEQPAR_EXPECTS(s.batch >= 1, "shape.batch: expected at least 1, got " << s.batch);
  SEQPAR_EXPECTS(s.heads >= 1, "shape.heads: expected at least 1 query head, got " << s.heads);
  SEQPAR_EXPECTS(
      s.kv() >= 1 && s.kv() <= s.heads && s.heads % s.kv() == 0,
      "shape.kv_heads: expected a divisor of heads = " << s.heads << " (GQA groups of equal size), got " << s.kv_heads);
  SEQPAR_EXPECTS(s.head_dim >= 1, "shape.head_dim: expected at least 1, got " << s.head_dim);
  SEQPAR_EXPECTS(s.values() >= 1, "shape.value_dim: expected at least 1 (or 0 for head_dim), got " << s.value_dim);
}

SEQPAR_NAMESPACE_END
