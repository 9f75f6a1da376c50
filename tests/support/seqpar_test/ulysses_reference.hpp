//! @file ulysses_reference.hpp
//! An independent statement of the Ulysses index maps (docs/architecture.md), written without the library's
//! partition code: who owns which tokens and heads, and what every exchanged element must be.
#pragma once

#include <seqpar/shard.hpp>

#include <algorithm>
#include <cstdint>
#include <set>
#include <vector>

namespace seqpar_test {

//! Token ownership, computed by dealing tokens out one by one.
struct token_owners {
  std::vector<std::int64_t> sizes;                  //!< S_r
  std::vector<std::vector<std::int64_t>> global_of;  //!< global_of[r][s]

  token_owners(std::int64_t S, int P, seqpar::shard_strategy strategy) : sizes(P), global_of(P) {
    if (strategy == seqpar::shard_strategy::contiguous) {
      std::int64_t next = 0;
      for (int r = 0; r < P; ++r) {
        const std::int64_t n = (S + P - 1 - r) / P;  // the first S % P ranks get one more
        for (std::int64_t s = 0; s < n; ++s) global_of[r].push_back(next++);
      }
    } else {
      const std::int64_t chunk = S / (2 * P);
      for (std::int64_t block = 0; block < 2 * P; ++block) {
        const int owner = static_cast<int>(block < P ? block : 2 * P - 1 - block);
        for (std::int64_t i = 0; i < chunk; ++i) global_of[owner].push_back(block * chunk + i);
      }
      for (auto& tokens : global_of) std::sort(tokens.begin(), tokens.end());  // local order = global order
    }
    for (int r = 0; r < P; ++r) sizes[r] = static_cast<std::int64_t>(global_of[r].size());
  }
};

//! Head ownership: query heads dealt in contiguous groups, and the kv heads each group reads.
struct head_owners {
  std::vector<int> count, first, kv_first, kv_count;

  head_owners(int H, int H_kv, int P) : count(P), first(P), kv_first(P), kv_count(P) {
    int next = 0;
    for (int r = 0; r < P; ++r) {
      count[r] = H / P + (r < H % P ? 1 : 0);
      first[r] = next;
      next += count[r];
      std::set<int> kv;
      for (int g = first[r]; g < first[r] + count[r]; ++g) kv.insert(g / (H / H_kv));
      kv_first[r] = kv.empty() ? 0 : *kv.begin();
      kv_count[r] = static_cast<int>(kv.size());
    }
  }
};

}  // namespace seqpar_test
