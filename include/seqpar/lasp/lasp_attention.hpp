//! @file lasp_attention.hpp
//! lasp_attention<Policy, Comm>: a LASP linear-attention layer over sequence shards, forward and
//! backward, owning its workspace and the state that backward needs.
#pragma once

#include <seqpar/lasp/linear_attention_ring.hpp>
#include <seqpar/memory_resource.hpp>

#include <utility>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! Plans once for fixed shapes; forward(q, k, v, o) keeps KV_r, backward(q, k, v, dO, dq, dk, dv)
//! uses it. q, k [B, S_r, H, D]; v, o [B, S_r, H, E]; one decay lambda in (0, 1] per head.
template <linear_attention_policy Policy, communicator Comm, memory_resource Resource = default_memory_resource>
class lasp_attention {
 public:
  //! A layer of rank comm.rank() over `seq` (contiguous shards of comm.size() ranks).
  lasp_attention(Policy policy, Comm& comm, const seq_partition& seq, std::int64_t batch, std::int64_t heads,
                 std::int64_t dk, std::int64_t dv, std::vector<float> decay,
                 lasp_strategy strategy = lasp_strategy::chain, Resource resource = {})
      : policy_(std::move(policy)),
        comm_(comm),
        ring_(comm.rank(), seq, batch, heads, dk, dv, strategy),
        decay_(std::move(decay)),
        workspace_(ring_.workspace_bytes(), comm.memory(), resource),
        saved_(ring_.state_elements() * sizeof(float), comm.memory(), resource),
        batch_(batch), heads_(heads), dk_(dk), dv_(dv) {
    check_decay(decay_, heads);
  }

  //! Outputs of this rank's tokens; keeps the incoming state for backward.
  template <class Q, class K, class V, class O>
  void forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o, stream_t stream = nullptr) {
    ring_.forward(policy_, comm_, q, k, v, decay_, o, saved(), workspace_.span(), stream);
    has_state_ = true;
  }

  //! Gradients of this rank's q, k, v from dO, using the state kept by the last forward.
  template <class Q, class K, class V, class DO, class G>
  void backward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<DO> dout, tensor_view<G> dq,
                tensor_view<G> dk, tensor_view<G> dv, stream_t stream = nullptr) {
    SEQPAR_EXPECTS(has_state_, "backward: no saved state; expected a forward call first");
    ring_.backward(policy_, comm_, q, k, v, dout, decay_, saved(), dq, dk, dv, workspace_.span(), stream);
  }

  //! KV_r, the fp32 state of every token before this rank's chunk (valid after forward).
  const_state_view saved_state() const { return saved(); }
  //! The primitive underneath.
  const linear_attention_ring& ring() const { return ring_; }

 private:
  state_view saved() const {
    return make_state(reinterpret_cast<float*>(saved_.span().data()), batch_, heads_, dk_, dv_);
  }

  Policy policy_;
  Comm& comm_;
  linear_attention_ring ring_;
  std::vector<float> decay_;
  owned_bytes<Resource> workspace_, saved_;
  std::int64_t batch_, heads_, dk_, dv_;
  bool has_state_ = false;
};

SEQPAR_NAMESPACE_END
