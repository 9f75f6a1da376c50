//! @file seq_side_checks.hpp
//! The checks of a softmax layer call's sequence-sharded views against a head exchange plan: what
//! the Ulysses and 2-D layers both check before anything moves.
#pragma once

#include <seqpar/layer_arguments.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! Throws unless q and o are [B, S_r, H, D] and k, v [B, S_r, H_kv, D] of `plan`'s rank.
template <element T>
void check_seq_side_views(const all_to_all_heads_plan& plan, const attention_forward_args<T>& args) {
  check_extents("q", args.q, seq_side_extents(plan, 0));
  check_extents("k", args.k, seq_side_extents(plan, 1));
  check_extents("v", args.v, seq_side_extents(plan, 2));
  check_extents("o", args.o, seq_side_extents(plan, 0));
}

//! Throws unless dout and dq are [B, S_r, H, D] and dk, dv [B, S_r, H_kv, D] of `plan`'s rank.
template <element T>
void check_seq_side_views(const all_to_all_heads_plan& plan, const attention_backward_args<T>& args) {
  check_extents("dout", args.dout, seq_side_extents(plan, 0));
  check_extents("dq", args.dq, seq_side_extents(plan, 0));
  check_extents("dk", args.dk, seq_side_extents(plan, 1));
  check_extents("dv", args.dv, seq_side_extents(plan, 2));
}

}  // namespace detail
SEQPAR_NAMESPACE_END
