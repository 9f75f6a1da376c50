//! @file bounded_wait.hpp
//! A host wait for device work that gives up: it polls for completion and for an asynchronous
//! error, and past its time limit (or on an error) aborts and throws, so a rank whose peer died
//! stops with a named error instead of waiting forever.
#pragma once

#include <seqpar/error.hpp>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! Waits until done() is true. Between polls, failure() returns the text of an asynchronous error
//! ("" while there is none); on one, or once `limit` has passed, abort() runs and seqpar::error
//! is thrown (errc::nccl or errc::timeout) naming `what`. Polls back off from 1 us to 1 ms.
template <class Done, class Failure, class Abort>
void bounded_wait(Done&& done, Failure&& failure, Abort&& abort, std::chrono::milliseconds limit,
                  const std::string& what) {
  const auto start = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(1);
  while (!done()) {
    if (const std::string f = failure(); !f.empty()) {
      abort();
      SEQPAR_FAIL(errc::nccl, what << ": " << f << "; the communicator was aborted");
    }
    if (std::chrono::steady_clock::now() - start > limit) {
      abort();
      SEQPAR_FAIL(errc::timeout, what << ": not complete after " << limit.count()
                                      << " ms (a peer stopped or fell far behind); the communicator was aborted");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::microseconds>(2 * pause, std::chrono::milliseconds(1));
  }
}

}  // namespace detail
SEQPAR_NAMESPACE_END
