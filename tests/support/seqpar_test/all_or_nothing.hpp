//! @file all_or_nothing.hpp
//! Runs a call on P in-process ranks once per culprit rank (the one that passes a bad argument)
//! and checks the rule every primitive and layer keeps: the culprit throws an error naming the
//! argument, every other rank throws peer_failed naming the culprit, and no rank has written any
//! output (each starts filled with a sentinel, in host or device memory).
#pragma once

#include <seqpar/comm/in_process.hpp>
#include <seqpar_test/buffers.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace seqpar_test {

//! Buffers a call must leave untouched when it throws: each starts as the sentinel.
class sentinels {
 public:
  explicit sentinels(seqpar::memory_space where) : where_(where) {}
  //! A new output buffer of n sentinel values.
  buffer<float>& make(std::size_t n) {
    return *outputs_.emplace_back(std::make_unique<buffer<float>>(where_, std::vector<float>(n, poison<float>())));
  }
  //! A new input buffer of n copies of `value` (not checked).
  buffer<float>& input(std::size_t n, float value) {
    return *inputs_.emplace_back(std::make_unique<buffer<float>>(where_, std::vector<float>(n, value)));
  }
  //! True when every output still holds only the sentinel.
  bool untouched() const {
    for (const auto& b : outputs_)
      for (float x : b->values())
        if (!same_bits(x, poison<float>())) return false;
    return true;
  }

 private:
  seqpar::memory_space where_;
  std::deque<std::unique_ptr<buffer<float>>> outputs_, inputs_;
};

//! body(comm, bad, outputs): one rank's call; `bad` on the culprit.
using all_or_nothing_body = std::function<void(seqpar::in_process_communicator&, bool bad, sentinels&)>;

//! Runs `body` on P ranks in `where` memory once per culprit and checks the culprit's `message`,
//! the peers' peer_failed and that every rank's outputs are untouched.
inline void expect_all_or_nothing(int P, const std::string& message, const all_or_nothing_body& body,
                                  seqpar::memory_space where = seqpar::memory_space::host) {
  for (int culprit = 0; culprit < P; ++culprit) {
    CAPTURE(culprit);
    std::vector<std::optional<seqpar::errc>> code(P);
    std::vector<std::string> what(P);
    std::vector<int> untouched(P, 0);
    seqpar::run_in_process(P, where, [&](seqpar::in_process_communicator& comm) {
      const int r = comm.rank();
      sentinels outputs(where);
      try {
        body(comm, r == culprit, outputs);
      } catch (const seqpar::error& e) {
        code[r] = e.code(), what[r] = e.what();
        comm.abort_group();  // a rank that threw alone must not leave its peers waiting (a failure, not a hang)
      }
      if (where == seqpar::memory_space::device) SEQPAR_CUDA_TRY(cudaDeviceSynchronize());
      untouched[r] = outputs.untouched();
    });
    for (int r = 0; r < P; ++r) {
      CAPTURE(r);
      INFO(what[r]);
      CHECK(untouched[r]);
      REQUIRE(code[r].has_value());
      if (r == culprit) {
        CHECK(*code[r] == seqpar::errc::invalid_argument);
        CHECK(what[r].find(message) != std::string::npos);
      } else {
        CHECK(*code[r] == seqpar::errc::peer_failed);
        CHECK(what[r].find("rank(s) " + std::to_string(culprit) + " rejected") != std::string::npos);
      }
    }
  }
}

}  // namespace seqpar_test
