//! @file linear_operations.hpp
//! The chunk operations of a linear-attention policy written with three primitives: linear_cuda's
//! mapping from operations to kernels.
#pragma once

#include <seqpar/policy/linear_attention_policy.hpp>

#include <span>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! How a token's weight depends on its index i in a chunk of C: lambda^(i+1) or lambda^(C-1-i).
enum class linear_weight { lq, lk };

//! forward_intra, state_contribution, forward_inter and the three backward operations of
//! linear_attention_policy for a Derived that provides, all on `stream`:
//! - product(a, b, v, out, decay, reverse, stream):  out_i = sum_{j <= i} lambda^(i-j) (a_i . b_j) v_j
//!   (j >= i and lambda^(j-i) with `reverse`);
//! - outer_sum(a, b, m, decay, w, stream):           m = sum_i w(i) a_i b_i^T;
//! - add_rows(a, s, transposed, out, decay, w, stream): out_i += w(i) a_i S (S^T with `transposed`).
template <class Derived>
struct linear_operations {
  //! o = ((Q K^T) * M) V
  template <class T>
  void forward_intra(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                     std::span<const float> decay, tensor_view<T> o, stream_t stream = nullptr) const {
    self().product(q, k, v, o, decay, false, stream);
  }
  //! m = K^T LK V
  template <class T>
  void state_contribution(tensor_view<const T> k, tensor_view<const T> v, std::span<const float> decay, state_view m,
                          stream_t stream = nullptr) const {
    self().outer_sum(k, v, m, decay, linear_weight::lk, stream);
  }
  //! o += LQ Q KV
  template <class T>
  void forward_inter(tensor_view<const T> q, std::span<const float> decay, const_state_view kv, tensor_view<T> o,
                     stream_t stream = nullptr) const {
    self().add_rows(q, kv, false, o, decay, linear_weight::lq, stream);
  }
  //! dq = A K; dk = A^T Q; dv = ((Q K^T) * M)^T dO, with A = (dO V^T) * M
  template <class T>
  void backward_intra(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                      tensor_view<const T> dout, std::span<const float> decay, tensor_view<T> dq, tensor_view<T> dk,
                      tensor_view<T> dv, stream_t stream = nullptr) const {
    self().product(dout, v, k, dq, decay, false, stream);  // dq_i = sum_{j<=i} w (do_i . v_j) k_j
    self().product(v, dout, q, dk, decay, true, stream);   // dk_j = sum_{i>=j} w (v_j . do_i) q_i
    self().product(k, q, dout, dv, decay, true, stream);   // dv_j = sum_{i>=j} w (k_j . q_i) do_i
  }
  //! g = Q^T LQ dO
  template <class T>
  void backward_state_contribution(tensor_view<const T> q, tensor_view<const T> dout, std::span<const float> decay,
                                   state_view g, stream_t stream = nullptr) const {
    self().outer_sum(q, dout, g, decay, linear_weight::lq, stream);
  }
  //! dq += LQ dO KV^T; dk += LK V G^T; dv += LK K G
  template <class T>
  void backward_inter(tensor_view<const T>, tensor_view<const T> k, tensor_view<const T> v, tensor_view<const T> dout,
                      std::span<const float> decay, const_state_view kv, const_state_view g, tensor_view<T> dq,
                      tensor_view<T> dk, tensor_view<T> dv, stream_t stream = nullptr) const {
    self().add_rows(dout, kv, true, dq, decay, linear_weight::lq, stream);
    self().add_rows(v, g, true, dk, decay, linear_weight::lk, stream);
    self().add_rows(k, g, false, dv, decay, linear_weight::lk, stream);
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

}  // namespace detail
SEQPAR_NAMESPACE_END
