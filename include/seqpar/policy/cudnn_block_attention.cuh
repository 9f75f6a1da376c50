//! @file cudnn_block_attention.cuh
//! cudnn_block_attention: cudnn_attention plus the block functions ring attention runs (nvcc only).
//! cuDNN writes O and the gradients in the element type and computes the row dots from O itself, so
//! a block pair runs into zeroed element-type scratch that a device-wide CUB call (for_each_index)
//! then widens into the fp32 partial output, or adds to the fp32 gradient accumulators; the backward
//! reads the final output (block_backward_from_output), which ring attention hands such a policy.
#pragma once

#include <seqpar/detail/for_each_index.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/policy/cudnn_attention.hpp>
#include <seqpar/ring/ring_pass.hpp>

#include <cuda/std/limits>

#include <array>
#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! Adds one element of `from` (element type) to `to` (fp32, equal extents) per call; index i runs
//! over the extents in [b, s, h, d] order.
template <class From>
struct add_elements {
  tensor_view<const From> from;  //!< what to add
  tensor_view<float> to;         //!< the accumulator
  //! Elements to add.
  SEQPAR_HOST_DEVICE std::int64_t size() const { return to.size(); }
  //! Adds element i.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t i) const {
    const std::int64_t D = to.head_dim(), H = to.heads(), S = to.seq();
    to(i / D / H / S, i / D / H % S, i / D % H, i % D) +=
        to_float(from(i / D / H / S, i / D / H % S, i / D % H, i % D));
  }
};

//! A zeroed element-type tensor in device memory, packed [B, S, H, D], freed in stream order.
template <class T>
struct zeroed_scratch {
  owned_bytes<default_memory_resource> bytes;  //!< the storage
  tensor_view<T> view;                         //!< its elements

  //! Shaped like `like`, zeroed on `stream`.
  template <class V>
  zeroed_scratch(const V& like, stream_t stream)
      : bytes(static_cast<std::size_t>(like.size()) * sizeof(T), memory_space::device, default_memory_resource{},
              stream),
        view(make_bshd(reinterpret_cast<T*>(bytes.span().data()), like.batch(), like.seq(), like.heads(),
                       like.head_dim())) {
    if (!bytes.span().empty()) SEQPAR_CUDA_TRY(cudaMemsetAsync(bytes.span().data(), 0, bytes.span().size(), stream));
  }
};

SEQPAR_DETAIL_KERNEL_NAMESPACE_END

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! cudnn_attention with the block functions of block_attention_policy, for ring attention: a block
//! pair is cuDNN's SDPA of the query block against the key block with the causal band's right bound
//! at q_first - kv_first (refused when negative, as cuDNN's band takes no negative bound) and, with
//! packed documents, one entry per (batch row, document) both blocks reach (refused when a causal
//! pair's documents would need different bounds). The block gradients are rounded to the element
//! type before they are added in fp32.
struct cudnn_block_attention : cudnn_attention {
  //! o_part and lse_part (fp32) of the query block q against the key/value block k, v alone, at
  //! the pair's positions (block_attention_policy); rows that see no key get o = 0, lse = -inf.
  template <class T>
  void block_forward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, gqa_map map,
                     attention_options opt, block_pair pair, tensor_view<float> o_part, lse_view lse_part,
                     stream_t stream = nullptr) const {
    detail::check_partial_extents(q, o_part, lse_part);
    check_block<T>(q, k, v);
    if (q.size() == 0) return;
    const float inf = cuda::std::numeric_limits<float>::infinity();
    detail::for_each_index(memory_space::device, static_cast<std::int64_t>(lse_part.size()),
                           detail::fill_floats{lse_part.data_handle(), -inf}, stream);
    const detail::zeroed_scratch<T> o(q, stream);
    if (computes(k, opt, pair))
      sdpa_forward(q, k, v, map, opt.resolved(q.head_dim()), placement_of(pair), o.view, lse_part.data_handle(),
                   stream);
    const detail::copy_elements<T, float> widen{o.view, o_part};
    detail::for_each_index(memory_space::device, widen.size(), widen, stream);
  }

  //! Adds the block pair's share of dq, dk, dv (fp32 accumulators) from the final output o and
  //! lse of the query rows (block_attention_policy, the form that reads the output).
  template <class T>
  void block_backward_from_output(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                                  tensor_view<const T> o, tensor_view<const T> dout, const_lse_view lse, gqa_map map,
                                  attention_options opt, block_pair pair, tensor_view<float> dq, tensor_view<float> dk,
                                  tensor_view<float> dv, stream_t stream = nullptr) const {
    check_block<T>(q, k, v);
    SEQPAR_EXPECTS(detail::same_extents(o, q), "o: extents differ from q's; expected the same extents");
    detail::check_lse_extents(lse, q);
    detail::check_gradient_extents(q, k, dout, dq, dk, dv);
    check_rows("o", o);
    check_rows("dout", dout);
    if (q.size() == 0 || !computes(k, opt, pair)) return;
    const detail::zeroed_scratch<T> gq(q, stream), gk(k, stream), gv(k, stream);
    sdpa_backward(q, k, v, o, lse.data_handle(), dout, map, opt.resolved(q.head_dim()), placement_of(pair), gq.view,
                  gk.view, gv.view, stream);
    using add_elements = detail::add_elements<T>;
    const std::array<add_elements, 3> adds{add_elements{gq.view, dq}, add_elements{gk.view, dk},
                                           add_elements{gv.view, dv}};
    for (const add_elements& add : adds) detail::for_each_index(memory_space::device, add.size(), add, stream);
  }

 private:
  static placement placement_of(block_pair pair) {
    return {pair.q_first, pair.kv_first, pair.relation != block_relation::visible};
  }
  // Whether anything of the pair is computed: keys exist and the causal mask leaves some.
  template <class T>
  static bool computes(const tensor_view<const T>& k, const attention_options& opt, block_pair pair) {
    return k.size() != 0 && !(opt.causal && pair.relation == block_relation::masked);
  }
};

static_assert(block_attention_policy<cudnn_block_attention>);

SEQPAR_KERNEL_NAMESPACE_END
