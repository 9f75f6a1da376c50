//! @file call.hpp
//! What every layer call takes besides its arguments, and what can_run answers: the execution (a
//! stream the caller names, and the checks to run) and a call_status.
#pragma once

#include <seqpar/comm/agreement.hpp>
#include <seqpar/error.hpp>
#include <seqpar/memory_space.hpp>

#include <string>
#include <utility>

SEQPAR_NAMESPACE_BEGIN

//! The stream a call runs on, named by the caller. It has no default, so a call whose execution
//! leaves it out does not compile. On the host any value will do (nullptr); on a device nullptr is
//! the legacy default stream, and saying so is the caller's choice.
class stream_ref {
 public:
  //! The stream `stream`.
  constexpr stream_ref(stream_t stream) noexcept : stream_(stream) {}  // NOLINT(google-explicit-constructor): {.stream = s}
  //! The stream.
  constexpr stream_t get() const noexcept { return stream_; }
  //! The stream, where a stream_t is expected.
  constexpr operator stream_t() const noexcept { return stream_; }  // NOLINT(google-explicit-constructor)

 private:
  stream_t stream_;
};

//! How a call runs: `layer.forward(args, {.stream = s})`, or `{.stream = s, .checks = call_checks::local}`.
struct execution {
  stream_ref stream;                        //!< where the call's work is ordered (no default)
  call_checks checks = call_checks::group;  //!< what the call checks before anything moves
};

//! What can_run answers: whether a call with these arguments would run, and if not the reason a
//! call would throw (the same checks, run on this rank only: no communication).
class call_status {
 public:
  //! A call that can run.
  call_status() = default;
  //! A call that would throw `code` with `reason`.
  call_status(errc code, std::string reason) : runs_(false), code_(code), reason_(std::move(reason)) {}
  //! True when the call can run.
  explicit operator bool() const noexcept { return runs_; }
  //! The error a call would throw (meaningful when it cannot run).
  errc code() const noexcept { return code_; }
  //! Why the call cannot run (the message a call would throw), empty when it can.
  const std::string& reason() const noexcept { return reason_; }

  //! The status of running `checks` (which throw seqpar::error on bad input) on this rank.
  template <class Checks>
  static call_status of(Checks&& checks) {
    try {
      checks();
      return {};
    } catch (const error& e) {
      return {e.code(), e.message()};
    }
  }

 private:
  bool runs_ = true;
  errc code_ = errc::invalid_argument;
  std::string reason_;
};

SEQPAR_NAMESPACE_END
