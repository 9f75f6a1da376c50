//! @file layer_arguments.hpp
//! The arguments of layer calls as data: one struct for a forward and one for a backward, built
//! with designated initialisers. Optional parts are fields with an empty default, so a later
//! feature adds a field, never an overload. Views are of the layer's element type: a view of
//! another type does not compile.
#pragma once

#include <seqpar/documents.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>

#include <cstddef>
#include <span>

SEQPAR_NAMESPACE_BEGIN

//! A softmax-attention layer's forward (Ulysses, ring, 2-D): this rank's tokens.
template <element T>
struct attention_forward_args {
  tensor_view<const T> q;                      //!< [B, S_r, H, D]
  tensor_view<const T> k;                      //!< [B, S_r, H_kv, D]
  tensor_view<const T> v;                      //!< [B, S_r, H_kv, D]
  tensor_view<T> o;                            //!< [B, S_r, H, D], written
  const document_layout* documents = nullptr;  //!< packed documents over the global sequence; none: one
  workspace_arg workspace{};                   //!< none: the layer's resource
};

//! A softmax-attention layer's backward: the gradients of this rank's tokens.
template <element T>
struct attention_backward_args {
  tensor_view<const T> dout;  //!< [B, S_r, H, D]
  tensor_view<T> dq;          //!< [B, S_r, H, D], written
  tensor_view<T> dk;          //!< [B, S_r, H_kv, D], written (summed over the ranks that used each kv head)
  tensor_view<T> dv;          //!< [B, S_r, H_kv, D], written
  workspace_arg workspace{};  //!< none: the layer's resource
};

//! A linear-attention (LASP) layer's forward: this rank's tokens.
template <element T>
struct linear_forward_args {
  tensor_view<const T> q;                      //!< [B, S_r, H, D]
  tensor_view<const T> k;                      //!< [B, S_r, H, D]
  tensor_view<const T> v;                      //!< [B, S_r, H, E]
  tensor_view<const float> g{};                //!< gated layers: fp32 log-gates [B, S_r, H, 1 or D]; else none
  tensor_view<T> o;                            //!< [B, S_r, H, E], written
  const document_layout* documents = nullptr;  //!< packed documents over the global sequence; none: one
  workspace_arg workspace{};                   //!< none: the layer's resource
};

//! A linear-attention (LASP) layer's backward: the gradients of this rank's tokens.
template <element T>
struct linear_backward_args {
  tensor_view<const T> dout;   //!< [B, S_r, H, E]
  tensor_view<T> dq;           //!< [B, S_r, H, D], written
  tensor_view<T> dk;           //!< [B, S_r, H, D], written
  tensor_view<T> dv;           //!< [B, S_r, H, E], written
  tensor_view<float> dg{};     //!< gated layers: the log-gates' gradient, g's shape, written; else none
  workspace_arg workspace{};   //!< none: the layer's resource
};

namespace detail {
//! The documents a call's arguments point at, or the default layout (one document) when none.
inline const document_layout& documents_of(const document_layout* documents) {
  static const document_layout none{};
  return documents ? *documents : none;
}
}  // namespace detail

SEQPAR_NAMESPACE_END
