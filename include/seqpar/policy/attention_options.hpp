//! @file attention_options.hpp
//! What an attention call is told besides its tensors: the options (scale, causal, documents), the
//! query-to-kv head map of GQA, and the fp32 log-sum-exp views.
#pragma once

#include <seqpar/detail/balanced_split.hpp>
#include <seqpar/documents.hpp>
#include <seqpar/memory_space.hpp>

#include <cuda/std/mdspan>

#include <cmath>
#include <cstdint>

SEQPAR_NAMESPACE_BEGIN

//! Per-row log-sum-exp of the scaled scores, fp32 [batch, heads, seq] row-major.
using lse_view = cuda::std::mdspan<float, cuda::std::dextents<std::int64_t, 3>>;
//! Read-only log-sum-exp.
using const_lse_view = cuda::std::mdspan<const float, cuda::std::dextents<std::int64_t, 3>>;

//! What every attention call is told besides the tensors.
struct attention_options {
  float scale = 0.0f;        //!< softmax scale; 0, the default, means 1 / sqrt(head_dim)
  bool causal = false;       //!< token i attends tokens j <= i (positions are the view's seq indices)
  document_ids documents{};  //!< packed documents: a token attends only its own document's (a layer
                             //!< sets these per call, by global position, in the policy's memory)

  //! These options with packed documents `ids` (what a layer hands its policy for one call).
  attention_options with_documents(document_ids ids) const {
    attention_options r = *this;
    r.documents = ids;
    return r;
  }
  //! These options with the scale resolved for heads of `head_dim` elements (what kernels get).
  attention_options resolved(std::int64_t head_dim) const {
    attention_options r = *this;
    if (r.scale == 0.0f && head_dim > 0) r.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
    return r;
  }
};

//! Which local kv head a local query head reads: (first_query + h) / group - first_kv. With all
//! heads on one device: first_query = first_kv = 0. Usable in kernels.
struct gqa_map {
  int first_query = 0;  //!< global index of local query head 0
  int group = 1;        //!< query heads per kv head, H / H_kv
  int first_kv = 0;     //!< global index of local kv head 0
  //! The local kv head of local query head h.
  SEQPAR_HOST_DEVICE int kv_head(int h) const { return detail::kv_head_of(first_query, h, group, first_kv); }
};

SEQPAR_NAMESPACE_END
