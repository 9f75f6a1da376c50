// A realistic packed batch for the document benchmarks: lengths drawn log-uniformly between 128
// and 16K tokens (as many documents of a few hundred tokens as of a few thousand, a tail to 16K,
// most tokens in the long ones), the last one cut to fill exactly S; and the attention work with
// and without them.
#pragma once

#include <seqpar/documents.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace seqpar_bench {

//! Documents filling S tokens, lengths log-uniform in [128, min(S, 16K)] (fixed seed: every run the
//! same).
inline seqpar::document_layout long_tailed_documents(std::int64_t S, unsigned seed = 7) {
  std::mt19937 gen(seed);
  const double longest = static_cast<double>(std::min<std::int64_t>(S, 16384));
  std::uniform_real_distribution<double> u(std::log(128.0), std::log(longest));
  std::vector<std::int32_t> lengths;
  for (std::int64_t left = S; left > 0;) {
    const auto l = std::min<std::int64_t>(left, static_cast<std::int64_t>(std::exp(u(gen))));
    lengths.push_back(static_cast<std::int32_t>(l));
    left -= l;
  }
  return seqpar::documents_of_lengths(lengths);
}

//! Query-key pairs attention computes over `docs` (one document of `S` tokens when not split).
inline double score_pairs(const seqpar::document_layout& docs, std::int64_t S, bool causal) {
  auto pairs = [&](double l) { return causal ? l * (l + 1) / 2 : l * l; };
  if (!docs.split()) return pairs(static_cast<double>(S));
  double total = 0;
  for (int d = 0; d < docs.count(); ++d) total += pairs(static_cast<double>(docs.end(d) - docs.begin(d)));
  return total;
}

}  // namespace seqpar_bench
