//! @file document_agreement.hpp
//! What a group agrees on for a call's packed documents: a fingerprint of cu_seqlens, carried by
//! the call's one agreement step, so a rank that passed other documents (or none) fails with the
//! others before anything moves.
#pragma once

#include <seqpar/comm/agreement.hpp>
#include <seqpar/documents.hpp>

#include <cstdint>
#include <sstream>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! The agreed value of a call's documents (the same for every call without documents).
inline agreed_value documents_agreement(const document_layout& docs) {
  fingerprint print;
  for (std::int32_t x : docs.cu_seqlens()) print.add(x);
  std::ostringstream description;
  if (docs.split()) description << "documents (" << docs.count() << " over " << docs.tokens() << " tokens)";
  else description << "documents (none: one sequence)";
  return {print.value(), "docs", description.str()};
}

}  // namespace detail
SEQPAR_NAMESPACE_END
