//! @file abortable_barrier.hpp
//! A reusable thread barrier that can be aborted, so a failed rank does not leave its peers waiting.
#pragma once

#include <seqpar/error.hpp>

#include <condition_variable>
#include <cstdint>
#include <mutex>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! A barrier for `count` threads; after abort() every waiter throws errc::peer_failed.
class abortable_barrier {
 public:
  //! A barrier that opens when `count` threads have arrived.
  explicit abortable_barrier(int count) : count_(count) {}

  //! Blocks until every thread has arrived; throws errc::peer_failed once the barrier is aborted.
  void arrive_and_wait() {
    std::unique_lock lock(mutex_);
    throw_if_aborted();
    const std::uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      opened_.notify_all();
      return;
    }
    opened_.wait(lock, [&] { return generation_ != generation || aborted_; });
    if (generation_ == generation) throw_if_aborted();
  }

  //! Releases every current and future waiter with errc::peer_failed.
  void abort() {
    std::lock_guard lock(mutex_);
    aborted_ = true;
    opened_.notify_all();
  }

 private:
  void throw_if_aborted() const {
    if (aborted_) SEQPAR_FAIL(errc::peer_failed, "another rank of the group failed; this rank stopped waiting for it");
  }

  std::mutex mutex_;
  std::condition_variable opened_;
  int count_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
  bool aborted_ = false;
};

}  // namespace detail
SEQPAR_NAMESPACE_END
