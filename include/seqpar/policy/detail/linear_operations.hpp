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
  void forward_intra(const linear_chunk<T>& c, tensor_view<T> o, stream_ref stream) const {
    self().product(c.q, c.k, c.v, o, c.decay, false, stream);
  }
  //! m = K^T LK V
  template <class T>
  void state_contribution(const linear_chunk<T>& c, state_view m, stream_ref stream) const {
    self().outer_sum(c.k, c.v, m, c.decay, linear_weight::lk, stream);
  }
  //! o += LQ Q KV
  template <class T>
  void forward_inter(const linear_chunk<T>& c, const_state_view kv, tensor_view<T> o, stream_ref stream) const {
    self().add_rows(c.q, kv, false, o, c.decay, linear_weight::lq, stream);
  }
  //! dq = A K; dk = A^T Q; dv = ((Q K^T) * M)^T dO, with A = (dO V^T) * M
  template <class T>
  void backward_intra(const linear_chunk<T>& c, const linear_gradients<T>& grads, stream_ref stream) const {
    self().product(c.dout, c.v, c.k, grads.dq, c.decay, false, stream);  // dq_i = sum_{j<=i} w (do_i . v_j) k_j
    self().product(c.v, c.dout, c.q, grads.dk, c.decay, true, stream);   // dk_j = sum_{i>=j} w (v_j . do_i) q_i
    self().product(c.k, c.q, c.dout, grads.dv, c.decay, true, stream);   // dv_j = sum_{i>=j} w (k_j . q_i) do_i
  }
  //! g = Q^T LQ dO
  template <class T>
  void backward_state_contribution(const linear_chunk<T>& c, state_view g, stream_ref stream) const {
    self().outer_sum(c.q, c.dout, g, c.decay, linear_weight::lq, stream);
  }
  //! dq += LQ dO KV^T; dk += LK V G^T; dv += LK K G
  template <class T>
  void backward_inter(const linear_chunk<T>& c, const_state_view kv, const_state_view g,
                      const linear_gradients<T>& grads, stream_ref stream) const {
    self().add_rows(c.dout, kv, true, grads.dq, c.decay, linear_weight::lq, stream);
    self().add_rows(c.v, g, true, grads.dk, c.decay, linear_weight::lk, stream);
    self().add_rows(c.k, g, false, grads.dv, c.decay, linear_weight::lk, stream);
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

}  // namespace detail
SEQPAR_NAMESPACE_END
