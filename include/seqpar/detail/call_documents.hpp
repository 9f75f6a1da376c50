//! @file call_documents.hpp
//! What a layer call keeps of a packed-document layout: the document of every global token in the
//! call's memory (its context keeps them for backward), built on a device from cu_seqlens with a
//! CUB scan, and the check of a call's layout against the layer's sequence.
#pragma once

#include <seqpar/detail/document_agreement.hpp>
#include <seqpar/detail/for_each_index.hpp>
#include <seqpar/documents.hpp>
#include <seqpar/layer_arguments.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/policy/attention_policy.hpp>

#if SEQPAR_CUDA_COMPILER
#include <cub/device/device_scan.cuh>
#endif

#include <cstdint>
#include <vector>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! Marks the first token of every document but the first: ids[cu[d]] = 1 for d = 1 .. count - 1,
//! so an inclusive scan of the zero-filled ids gives each token its document.
struct mark_document_starts {
  std::int32_t* ids;        //!< zeros on entry
  const std::int32_t* cu;   //!< cu_seqlens + 1
  //! Marks document d + 1's start.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t d) const { ids[cu[d]] = 1; }
};

//! The documents of one layer call: none (one document) or a copy of a layout's token ids on the
//! host and, for device memory, in device memory too. Move-only; contexts keep it for backward.
template <class Resource>
class call_documents {
 public:
  //! One document.
  call_documents() = default;

  //! The documents of `docs` for a call in `where` memory (device ids built on `stream`).
  call_documents(const document_layout& docs, memory_space where, const Resource& resource, stream_t stream)
      : host_(docs.token_ids().begin(), docs.token_ids().end()), cu_(docs.cu_seqlens().begin(), docs.cu_seqlens().end()) {
    if (!docs.split() || where == memory_space::host) return;
#if SEQPAR_CUDA_COMPILER
    // Only cu_seqlens crosses to the device; the per-token ids are a scan there.
    const std::size_t tokens = host_.size(), starts = docs.cu_seqlens().size() - 2;
    device_ = owned_bytes<Resource>(tokens * sizeof(std::int32_t), where, resource);
    owned_bytes<Resource> cu((starts + 1) * sizeof(std::int32_t), where, resource, stream);
    auto* ids = reinterpret_cast<std::int32_t*>(device_.span().data());
    auto* cu_dev = reinterpret_cast<std::int32_t*>(cu.span().data());
    SEQPAR_CUDA_TRY(cudaMemsetAsync(ids, 0, tokens * sizeof(std::int32_t), stream));
    SEQPAR_CUDA_TRY(cudaMemcpyAsync(cu_dev, docs.cu_seqlens().data() + 1, starts * sizeof(std::int32_t),
                                    cudaMemcpyHostToDevice, stream));
    for_each_index(where, static_cast<std::int64_t>(starts), mark_document_starts{ids, cu_dev}, stream);
    std::size_t temp_bytes = 0;
    SEQPAR_CUDA_TRY(cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, ids, ids, static_cast<int>(tokens), stream));
    owned_bytes<Resource> temp(temp_bytes, where, resource, stream);
    SEQPAR_CUDA_TRY(cub::DeviceScan::InclusiveSum(temp.span().data(), temp_bytes, ids, ids, static_cast<int>(tokens),
                                                  stream));
#else
    (void)resource, (void)stream;
    SEQPAR_FAIL(errc::unsupported, "docs: device memory needs the calling file compiled by nvcc");
#endif
  }

  //! The ids in the call's memory (null for one document), with the boundaries on the host.
  document_ids ids() const {
    document_ids r = host_ids();
    if (!device_.span().empty()) r.ids = reinterpret_cast<const std::int32_t*>(device_.span().data());
    return r;
  }
  //! The ids on the host (null for one document): what planning on the host reads.
  document_ids host_ids() const {
    if (host_.empty() || cu_.empty()) return {};
    return {host_.data(), cu_.data(), static_cast<std::int32_t>(cu_.size()) - 1};
  }

 private:
  std::vector<std::int32_t> host_, cu_;
  owned_bytes<Resource> device_;
};

//! The checks of a call's documents against the layer's sequence of `tokens` tokens.
inline void check_documents(const document_layout& docs, std::int64_t tokens) {
  SEQPAR_EXPECTS(!docs.split() || docs.tokens() == tokens,
                 "docs: the layout covers " << docs.tokens() << " tokens; expected the layer's " << tokens);
}

//! The checks of a softmax layer call's documents (none, or a layout of the layer's `tokens`
//! tokens) and that `policy` serves them.
template <class Policy>
void check_call_documents(const Policy& policy, const document_layout* documents, std::int64_t tokens) {
  const document_layout& docs = documents_of(documents);
  check_documents(docs, tokens);
  check_policy_serves_documents(policy, docs);
}

SEQPAR_DETAIL_KERNEL_NAMESPACE_END
