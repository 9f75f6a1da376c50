//! @file documents.hpp
//! Packed variable-length sequences: many documents of different lengths packed into one global
//! sequence, described by cumulative lengths (cu_seqlens, as FlashAttention's varlen functions and
//! Transformer Engine's THD format take them). Attention, softmax or linear, never crosses a
//! document boundary. document_layout checks and holds the boundaries on the host; document_ids is
//! the per-token view that policies and kernels read; rank_documents says which parts of which
//! documents a rank's shard holds.
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/error.hpp>
#include <seqpar/shard.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! Which document each token of the packed global sequence belongs to, as a policy or kernel reads
//! it: ids[position], nondecreasing, in the memory of the code that reads it. Null ids mean one
//! document (nothing to mask). Layers also give the boundaries on the host (cu_seqlens, count + 1
//! of them), for policies that plan per document there (cudnn_attention); kernels ignore them.
struct document_ids {
  const std::int32_t* ids = nullptr;         //!< the document of each global position, or null
  const std::int32_t* cu_seqlens = nullptr;  //!< host: 0, the end of every document; or null
  std::int32_t count = 0;                    //!< documents that cu_seqlens describes

  //! Whether the sequence holds more than one document (ids are given).
  SEQPAR_HOST_DEVICE bool split() const { return ids != nullptr; }
  //! The document of global position i (0 without ids).
  SEQPAR_HOST_DEVICE std::int32_t of(std::int64_t i) const { return ids ? ids[i] : 0; }
  //! Whether positions i and j lie in one document.
  SEQPAR_HOST_DEVICE bool same(std::int64_t i, std::int64_t j) const { return !ids || ids[i] == ids[j]; }
  //! Whether positions [a_first, a_last] and [b_first, b_last] share a document (ids are nondecreasing).
  SEQPAR_HOST_DEVICE bool overlap(std::int64_t a_first, std::int64_t a_last, std::int64_t b_first,
                                  std::int64_t b_last) const {
    return !ids || (ids[a_last] >= ids[b_first] && ids[b_last] >= ids[a_first]);
  }
};

//! Packed documents over a global sequence of tokens(), checked: cu_seqlens() = [0, l_0, l_0 + l_1,
//! ..., S] with every length >= 1, and the document of every token. Host memory; the same packing
//! applies to every batch row. A default-constructed layout is one document (no masking).
class document_layout {
 public:
  //! One document: nothing is masked.
  document_layout() = default;

  //! True when the layout splits the sequence (more than nothing was given).
  bool split() const { return !cu_.empty(); }
  //! Tokens of the packed sequence (0 for the default layout).
  std::int64_t tokens() const { return static_cast<std::int64_t>(ids_.size()); }
  //! Number of documents (1 for the default layout).
  int count() const { return cu_.empty() ? 1 : static_cast<int>(cu_.size()) - 1; }
  //! The cumulative lengths, count() + 1 of them.
  std::span<const std::int32_t> cu_seqlens() const { return cu_; }
  //! The document of every token, tokens() of them.
  std::span<const std::int32_t> token_ids() const { return ids_; }
  //! The per-token view over the host ids (null ids for the default layout).
  document_ids host_ids() const {
    if (cu_.empty()) return {};
    return {ids_.data(), cu_.data(), count()};
  }
  //! First token of document d.
  std::int64_t begin(int d) const { return cu_[d]; }
  //! One past the last token of document d.
  std::int64_t end(int d) const { return cu_[d + 1]; }

 private:
  friend document_layout make_document_layout(std::span<const std::int32_t> cu_seqlens, std::int64_t tokens);
  std::vector<std::int32_t> cu_, ids_;
};

//! The layout of cumulative lengths `cu_seqlens` over `tokens` tokens. Throws invalid_argument naming
//! cu_seqlens unless it starts at 0, strictly increases (no empty document, so no more documents
//! than tokens) and ends at `tokens`.
inline document_layout make_document_layout(std::span<const std::int32_t> cu_seqlens, std::int64_t tokens) {
  SEQPAR_EXPECTS(tokens >= 1 && tokens <= INT32_MAX,
                 "tokens: expected 1 to " << INT32_MAX << " tokens for a packed sequence, got " << tokens);
  SEQPAR_EXPECTS(cu_seqlens.size() >= 2,
                 "cu_seqlens: expected at least 2 entries (0 and the sequence length), got " << cu_seqlens.size());
  SEQPAR_EXPECTS(cu_seqlens.front() == 0, "cu_seqlens: expected 0 first, got " << cu_seqlens.front());
  for (std::size_t d = 1; d < cu_seqlens.size(); ++d)
    SEQPAR_EXPECTS(cu_seqlens[d] > cu_seqlens[d - 1],
                   "cu_seqlens: expected strictly increasing offsets (every document at least one token); entry "
                       << d << " is " << cu_seqlens[d] << " after " << cu_seqlens[d - 1]);
  SEQPAR_EXPECTS(cu_seqlens.back() == tokens, "cu_seqlens: expected the last entry to be the sequence length "
                                                  << tokens << ", got " << cu_seqlens.back());
  document_layout out;
  out.cu_.assign(cu_seqlens.begin(), cu_seqlens.end());
  out.ids_.resize(static_cast<std::size_t>(tokens));
  for (std::size_t d = 0; d + 1 < out.cu_.size(); ++d)
    std::fill(out.ids_.begin() + out.cu_[d], out.ids_.begin() + out.cu_[d + 1], static_cast<std::int32_t>(d));
  return out;
}

//! The layout of documents of the given lengths, in order (each >= 1).
inline document_layout documents_of_lengths(std::span<const std::int32_t> lengths) {
  std::vector<std::int32_t> cu{0};
  std::int64_t total = 0;
  for (std::size_t d = 0; d < lengths.size(); ++d) {
    SEQPAR_EXPECTS(lengths[d] >= 1, "lengths: expected every document at least 1 token; document "
                                        << d << " has " << lengths[d]);
    total += lengths[d];
    SEQPAR_EXPECTS(total <= INT32_MAX, "lengths: the documents add up to more than " << INT32_MAX << " tokens");
    cu.push_back(static_cast<std::int32_t>(total));
  }
  return make_document_layout(cu, total);
}

//! The layout that position ids describe: a document starts wherever the position id is 0 (how
//! packed batches often carry their boundaries); position_ids[0] must be 0.
inline document_layout documents_of_position_ids(std::span<const std::int32_t> position_ids) {
  SEQPAR_EXPECTS(!position_ids.empty() && position_ids.front() == 0,
                 "position_ids: expected a nonempty sequence starting at 0");
  std::vector<std::int32_t> cu;
  for (std::size_t i = 0; i < position_ids.size(); ++i)
    if (position_ids[i] == 0) cu.push_back(static_cast<std::int32_t>(i));
  cu.push_back(static_cast<std::int32_t>(position_ids.size()));
  return make_document_layout(cu, static_cast<std::int64_t>(position_ids.size()));
}

//! A part of one document that a rank holds: `length` tokens, contiguous in the global sequence
//! from `global` and in the rank's shard from `local`.
struct document_piece {
  int document;         //!< which document
  std::int64_t local;   //!< first local row
  std::int64_t global;  //!< its global position
  std::int64_t length;  //!< tokens
};

//! What rank `rank` of partition `part` holds of `docs`: its pieces in local order (a document cut
//! by a shard boundary, or by the seam between a zigzag rank's two blocks, gives one piece per
//! side), the local cumulative lengths of those pieces, and the document of every local token.
struct rank_documents {
  std::vector<document_piece> pieces;  //!< the pieces, in local order
  std::vector<std::int32_t> cu_seqlens;  //!< 0 and the local end of every piece
  std::vector<std::int32_t> ids;         //!< the document of every local token
};

//! The documents of rank `rank`'s tokens under `part` (contiguous or zigzag). Throws unless `docs`
//! covers part.tokens (or is the default layout: one document).
inline rank_documents documents_of_rank(const document_layout& docs, const seq_partition& part, int rank) {
  SEQPAR_EXPECTS(!docs.split() || docs.tokens() == part.tokens,
                 "docs: the layout covers " << docs.tokens() << " tokens; expected the partition's " << part.tokens);
  rank_documents out;
  out.cu_seqlens.push_back(0);
  const std::int64_t n = part.size(rank);
  for (std::int64_t s = 0; s < n;) {
    const std::int64_t g = part.global(rank, s);
    const int d = docs.split() ? docs.token_ids()[g] : 0;
    const std::int64_t doc_end = docs.split() ? docs.end(d) : part.tokens;
    std::int64_t len = 1;
    while (s + len < n && part.global(rank, s + len) == g + len && g + len < doc_end) ++len;
    out.pieces.push_back({d, s, g, len});
    s += len;
    out.cu_seqlens.push_back(static_cast<std::int32_t>(s));
    out.ids.insert(out.ids.end(), static_cast<std::size_t>(len), d);
  }
  return out;
}

SEQPAR_NAMESPACE_END
