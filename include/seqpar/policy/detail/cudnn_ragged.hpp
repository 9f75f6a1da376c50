//! @file cudnn_ragged.hpp
//! The host algebra of cudnn_attention's packed documents: which parts of which documents a call's
//! query and key rows hold (one cuDNN "batch" entry per batch row and document), the entry count
//! and lengths the graph is built for (bucketed, so graphs stay cached), and each tensor's ragged
//! offsets (in elements) and sequence lengths. No cuDNN here: the host tests check it directly.
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/error.hpp>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

namespace detail::cudnn_sdpa {

//! One document's rows in a call: query rows [q_begin, q_begin + q_length) and key rows [kv_begin,
//! kv_begin + kv_length), local to the call's views; both lengths >= 1.
struct document_span {
  std::int64_t q_begin = 0;    //!< first local query row
  std::int64_t q_length = 0;   //!< query rows
  std::int64_t kv_begin = 0;   //!< first local key row
  std::int64_t kv_length = 0;  //!< key rows
  //! Equal spans.
  friend bool operator==(const document_span&, const document_span&) = default;
};

//! The documents that both the query rows (global positions [q_first, q_first + q_rows)) and the
//! key rows ([kv_first, kv_first + kv_rows)) reach, in order, from cu_seqlens (count + 1 entries,
//! host memory). Throws unless cu_seqlens is given, starts at 0, increases and covers both ranges.
inline std::vector<document_span> document_spans(const std::int32_t* cu_seqlens, std::int32_t count,
                                                 std::int64_t q_first, std::int64_t q_rows, std::int64_t kv_first,
                                                 std::int64_t kv_rows) {
  SEQPAR_EXPECTS(cu_seqlens != nullptr && count >= 1,
                 "options.documents: cudnn_attention needs the documents' boundaries on the host (documents."
                 "cu_seqlens with documents.count >= 1, which the layers fill); got "
                     << (cu_seqlens ? "cu_seqlens" : "no cu_seqlens") << " and count " << count);
  SEQPAR_EXPECTS(cu_seqlens[0] == 0, "options.documents.cu_seqlens: expected 0 first, got " << cu_seqlens[0]);
  for (std::int32_t d = 0; d < count; ++d)
    SEQPAR_EXPECTS(cu_seqlens[d + 1] > cu_seqlens[d],
                   "options.documents.cu_seqlens: expected strictly increasing "
                   "offsets; entry "
                       << d + 1 << " is " << cu_seqlens[d + 1] << " after " << cu_seqlens[d]);
  const std::int64_t q_end = q_first + q_rows, kv_end = kv_first + kv_rows;
  SEQPAR_EXPECTS(q_first >= 0 && kv_first >= 0 && std::max(q_end, kv_end) <= cu_seqlens[count],
                 "options.documents.cu_seqlens: the documents cover " << cu_seqlens[count] << " positions; expected "
                                                                      << "at least the call's "
                                                                      << std::max(q_end, kv_end));
  std::vector<document_span> spans;
  for (std::int32_t d = 0; d < count; ++d) {
    const std::int64_t begin = cu_seqlens[d], end = cu_seqlens[d + 1];
    const std::int64_t qb = std::max(begin, q_first), qe = std::min(end, q_end);
    const std::int64_t kb = std::max(begin, kv_first), ke = std::min(end, kv_end);
    if (qe > qb && ke > kb) spans.push_back({qb - q_first, qe - qb, kb - kv_first, ke - kb});
  }
  return spans;
}

//! The smallest power of two >= n (1 for n <= 1): entry counts and lengths are bucketed to these so
//! that a new document count or length rarely needs a new graph.
inline std::int64_t bucket(std::int64_t n) {
  std::int64_t b = 1;
  while (b < n) b *= 2;
  return b;
}

//! The entries of a documents call over `batch` rows: entry e = b * spans.size() + s is span s of
//! batch row b; entries past batch * spans.size() (up to a power of two) are empty.
struct ragged_entries {
  std::vector<document_span> spans;  //!< the documents' rows, the same in every batch row
  std::int64_t batch = 1;            //!< batch rows
  std::int64_t q_rows = 0;           //!< query rows of the call (the graph's longest is at most this)
  std::int64_t kv_rows = 0;          //!< key rows of the call

  //! Entries that hold rows.
  std::int64_t used() const { return batch * static_cast<std::int64_t>(spans.size()); }
  //! Entries of the graph: used() bucketed.
  std::int64_t entries() const { return bucket(used()); }
  //! The graph's query length: the longest query span bucketed, at most q_rows.
  std::int64_t max_q() const { return std::min(q_rows, bucket(longest(&document_span::q_length))); }
  //! The graph's key length: the longest key span bucketed, at most kv_rows.
  std::int64_t max_kv() const { return std::min(kv_rows, bucket(longest(&document_span::kv_length))); }

  //! Query (kv = false) or key lengths of every entry, entries() of them (0 for the empty ones).
  std::vector<std::int32_t> lengths(bool kv) const {
    std::vector<std::int32_t> out(static_cast<std::size_t>(entries()), 0);
    for (std::int64_t e = 0; e < used(); ++e) {
      const document_span& s = span(e);
      out[static_cast<std::size_t>(e)] = static_cast<std::int32_t>(kv ? s.kv_length : s.q_length);
    }
    return out;
  }

  //! entries() + 1 ragged offsets, in elements, of a tensor whose element (b, row) sits at
  //! b * batch_stride + row * row_stride (plus head and dim terms): each entry's first query row
  //! (kv = false) or key row; the empty entries and the last offset sit where the last entry ends.
  std::vector<std::int64_t> offsets(bool kv, std::int64_t batch_stride, std::int64_t row_stride) const {
    std::vector<std::int64_t> out(static_cast<std::size_t>(entries() + 1), 0);
    std::int64_t end = 0;
    for (std::int64_t e = 0; e < used(); ++e) {
      const document_span& s = span(e);
      const std::int64_t b = e / static_cast<std::int64_t>(spans.size());
      const std::int64_t begin = kv ? s.kv_begin : s.q_begin, length = kv ? s.kv_length : s.q_length;
      out[static_cast<std::size_t>(e)] = b * batch_stride + begin * row_stride;
      end = b * batch_stride + (begin + length) * row_stride;
    }
    for (std::int64_t e = used(); e <= entries(); ++e) out[static_cast<std::size_t>(e)] = end;
    return out;
  }

  //! The right bound of a causal call whose query rows start at global position q_first and key
  //! rows at kv_first: the same for every entry (key j of an entry is allowed when j <= i + bound).
  //! Throws unless every entry has the same bound and it is >= 0 (cuDNN's band takes no per-entry
  //! or negative bound).
  std::int64_t causal_bound(std::int64_t q_first, std::int64_t kv_first) const {
    std::int64_t bound = 0;
    for (std::size_t s = 0; s < spans.size(); ++s) {
      const std::int64_t r = (q_first + spans[s].q_begin) - (kv_first + spans[s].kv_begin);
      if (s == 0) bound = r;
      SEQPAR_EXPECTS(r == bound && r >= 0,
                     "pair: with documents, cudnn_attention needs every document's first query at or after its first "
                     "key by the same distance in a causal pair; document span "
                         << s << " has " << r << ", span 0 has " << bound);
    }
    return bound;
  }

 private:
  const document_span& span(std::int64_t e) const {
    return spans[static_cast<std::size_t>(e % static_cast<std::int64_t>(spans.size()))];
  }
  std::int64_t longest(std::int64_t document_span::*length) const {
    std::int64_t m = 1;
    for (const auto& s : spans) m = std::max(m, s.*length);
    return m;
  }
};

//! Query row ranges [first, second) of a call that its document spans cover, adjacent spans merged:
//! the rows whose statistics cuDNN writes.
inline std::vector<std::pair<std::int64_t, std::int64_t>> covered_rows(const std::vector<document_span>& spans) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  for (const auto& s : spans) {
    if (!out.empty() && out.back().second == s.q_begin) out.back().second += s.q_length;
    else out.push_back({s.q_begin, s.q_begin + s.q_length});
  }
  return out;
}

}  // namespace detail::cudnn_sdpa

SEQPAR_NAMESPACE_END
