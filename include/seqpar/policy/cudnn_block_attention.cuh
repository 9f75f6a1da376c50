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
  void block_forward(const block_forward_args<T>& a, stream_ref stream) const {
    detail::check_partial_extents(a.q, a.o_part, a.lse_part);
    check_block<T>(a.q, a.k, a.v);
    if (a.q.size() == 0) return;
    const float inf = cuda::std::numeric_limits<float>::infinity();
    detail::for_each_index(memory_space::device, static_cast<std::int64_t>(a.lse_part.size()),
                           detail::fill_floats{a.lse_part.data_handle(), -inf}, stream);
    const detail::zeroed_scratch<T> o(a.q, stream);
    if (computes(a.k, a.options, a.pair))
      sdpa_forward(a.q, a.k, a.v, a.map, a.options.resolved(a.q.head_dim()), placement_of(a.pair), o.view,
                   a.lse_part.data_handle(), stream);
    const detail::copy_elements<T, float> widen{o.view, a.o_part};
    detail::for_each_index(memory_space::device, widen.size(), widen, stream);
  }

  //! Adds the block pair's share of dq, dk, dv (fp32 accumulators) from the final output o and
  //! lse of the query rows (block_attention_policy, the form that reads the output).
  template <class T>
  void block_backward_from_output(const block_backward_args<T>& a, stream_ref stream) const {
    check_block<T>(a.q, a.k, a.v);
    SEQPAR_EXPECTS(detail::same_extents(a.o, a.q), "o: extents differ from q's; expected the same extents");
    detail::check_lse_extents(a.lse, a.q);
    detail::check_gradient_extents(a.q, a.k, a.dout, a.dq, a.dk, a.dv);
    check_rows("o", a.o);
    check_rows("dout", a.dout);
    if (a.q.size() == 0 || !computes(a.k, a.options, a.pair)) return;
    const detail::zeroed_scratch<T> gq(a.q, stream), gk(a.k, stream), gv(a.k, stream);
    sdpa_backward(a.q, a.k, a.v, a.o, a.lse.data_handle(), a.dout, a.map, a.options.resolved(a.q.head_dim()),
                  placement_of(a.pair), gq.view, gk.view, gv.view, stream);
    using add_elements = detail::add_elements<T>;
    const std::array<add_elements, 3> adds{add_elements{gq.view, a.dq}, add_elements{gk.view, a.dk},
                                           add_elements{gv.view, a.dv}};
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
