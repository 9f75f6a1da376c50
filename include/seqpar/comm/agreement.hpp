//! @file agreement.hpp
//! How a group agrees before anything moves: every rank checks its own arguments, the ranks share
//! one value each, and then either every rank goes on or every rank throws. Every primitive and
//! layer of seqpar starts with this step, so no rank writes an output or sends a byte unless all can.
#pragma once

#include <seqpar/comm/communicator.hpp>
#include <seqpar/cuda_check.hpp>
#include <seqpar/error.hpp>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <exception>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! What a call checks before it writes an output or moves a byte.
enum class call_checks {
  group,  //!< every rank checks, then the group agrees in one small collective: all throw or none does
  local,  //!< each rank checks only its own arguments, and none that needs the host to wait for a
          //!< stream (the values of device log-gates are not read): no host sync. A rank at fault
          //!< throws alone, so its peers may wait in the call's first exchange (NCCL) where the group
          //!< check would have stopped them
};

//! Name of a check mode ("group", "local").
inline constexpr const char* to_string(call_checks c) noexcept { return c == call_checks::group ? "group" : "local"; }

namespace detail {
//! A communicator with its own host-side all-gather of one value per rank.
template <class C>
concept gathers_values = requires(C& c, std::int64_t v, stream_t s) {
  { c.all_gather_value(v, s) } -> std::same_as<std::vector<std::int64_t>>;
};
}  // namespace detail

//! Every rank's `value`, in rank order, returned on every rank (collective). This is the group's
//! control channel: argument agreement and shape fingerprints. It uses the communicator's own
//! all_gather_value when it has one, else its all_gather over host memory or, for device-memory
//! communicators, a stream-ordered scratch of size() values (then waits for `stream`).
template <communicator Comm>
std::vector<std::int64_t> all_gather_value(Comm& comm, std::int64_t value, stream_t stream) {
  if constexpr (detail::gathers_values<Comm>) {
    return comm.all_gather_value(value, stream);
  } else {
    const int P = comm.size();
    std::vector<std::int64_t> all(static_cast<std::size_t>(P));
    if (comm.memory() == memory_space::host) {
      comm.all_gather(std::span<const std::int64_t>(&value, 1), std::span<std::int64_t>(all), stream);
      return all;
    }
    void* scratch = nullptr;
    const std::size_t bytes = (all.size() + 1) * sizeof(std::int64_t);
    SEQPAR_CUDA_TRY(cudaMallocAsync(&scratch, bytes, stream));
    auto* mine = static_cast<std::int64_t*>(scratch);
    try {
      SEQPAR_CUDA_TRY(cudaMemcpyAsync(mine, &value, sizeof value, cudaMemcpyHostToDevice, stream));
      comm.all_gather(std::span<const std::int64_t>(mine, 1), std::span<std::int64_t>(mine + 1, all.size()), stream);
      SEQPAR_CUDA_TRY(cudaMemcpyAsync(all.data(), mine + 1, all.size() * sizeof value, cudaMemcpyDeviceToHost, stream));
      SEQPAR_CUDA_TRY(cudaStreamSynchronize(stream));
    } catch (...) {
      cudaFreeAsync(scratch, stream);
      throw;
    }
    SEQPAR_CUDA_TRY(cudaFreeAsync(scratch, stream));
    return all;
  }
}

//! A value every rank of a call must pass alike (a fingerprint of per-call arguments such as packed
//! documents), with what to call it when a rank's differs.
struct agreed_value {
  std::int64_t print = 0;   //!< this rank's fingerprint of the arguments
  const char* what = "";    //!< the argument's name
  std::string description;  //!< this rank's value, in words
};

//! Runs `checks` (which throw seqpar::error on bad input) on this rank and, with
//! call_checks::group, lets the group agree: if any rank failed, the ranks at fault rethrow their
//! own error and every other rank throws errc::peer_failed naming them; if every rank passed but
//! `same.print` differs between ranks, those that differ from the most common value throw
//! invalid_argument and the others peer_failed; otherwise every rank returns. One collective of one
//! value per rank. Call it before the first output is written or the first byte is sent; the rank
//! is attributed from comm.rank().
template <communicator Comm, class Checks>
void agree_on_arguments(Comm& comm, call_checks mode, stream_t stream, Checks&& checks, const agreed_value& same = {}) {
  scoped_rank attribute(comm.rank());
  std::exception_ptr failure;
  try {
    checks();
  } catch (...) {
    failure = std::current_exception();
  }
  if (mode == call_checks::local) {
    if (failure) std::rethrow_exception(failure);
    return;
  }
  constexpr std::int64_t failed = std::numeric_limits<std::int64_t>::min();
  const std::int64_t mine = failure ? failed : same.print == failed ? failed + 1 : same.print;
  const auto all = all_gather_value(comm, mine, stream);
  if (failure) std::rethrow_exception(failure);
  std::ostringstream at_fault;
  for (std::size_t j = 0; j < all.size(); ++j)
    if (all[j] == failed) at_fault << (at_fault.tellp() > 0 ? ", " : "") << j;
  if (at_fault.tellp() > 0)
    SEQPAR_FAIL(errc::peer_failed,
                "rank(s) " << at_fault.str() << " rejected their arguments; nothing was written or moved");
  if (std::all_of(all.begin(), all.end(), [&](std::int64_t x) { return x == all[0]; })) return;
  // The value most ranks passed (the lowest rank's on a tie) is the agreed one; the others are at fault.
  std::int64_t agreed = all[0];
  std::ptrdiff_t most = 0;
  for (std::int64_t x : all)
    if (const auto n = std::count(all.begin(), all.end(), x); n > most) agreed = x, most = n;
  std::ostringstream differ;
  for (std::size_t j = 0; j < all.size(); ++j)
    if (all[j] != agreed) differ << (differ.tellp() > 0 ? ", " : "") << j;
  if (differ.tellp() == 0) return;
  if (mine != agreed)
    SEQPAR_FAIL(errc::invalid_argument, same.what << ": this rank's " << same.description
                                                  << " differ from the other ranks'; expected the same on every rank");
  SEQPAR_FAIL(errc::peer_failed, "rank(s) " << differ.str() << " rejected their arguments (" << same.what
                                            << " differs from the other ranks'); nothing was written or moved");
}

//! A 64-bit FNV-1a hash of a sequence of integers: what a layer's shapes look like to its peers.
class fingerprint {
 public:
  //! Mixes `x` in; returns *this for chaining.
  fingerprint& add(std::int64_t x) {
    for (int i = 0; i < 8; ++i)
      hash_ = (hash_ ^ ((static_cast<std::uint64_t>(x) >> (8 * i)) & 0xffu)) * 1099511628211ull;
    return *this;
  }
  //! The hash so far, as the signed value all_gather_value carries.
  std::int64_t value() const { return static_cast<std::int64_t>(hash_); }

 private:
  std::uint64_t hash_ = 14695981039346656037ull;
};

//! Collective: checks that every rank built `what` (a layer or plan) with the same fingerprint
//! (a fingerprint::value() of its shapes),
//! so a shape that differs between ranks fails at construction on every rank instead of hanging or
//! mis-matching in the first exchange. Ranks whose fingerprint differs from rank 0's throw
//! invalid_argument with `description` (this rank's shapes); the others throw peer_failed.
template <communicator Comm>
void agree_on_fingerprint(Comm& comm, std::int64_t print, const char* what, const std::string& description,
                          stream_t stream) {
  scoped_rank attribute(comm.rank());
  const auto all = all_gather_value(comm, print, stream);
  std::ostringstream differ;
  for (std::size_t j = 1; j < all.size(); ++j)
    if (all[j] != all[0]) differ << (differ.tellp() > 0 ? ", " : "") << j;
  if (differ.tellp() == 0) return;
  if (print != all[0])
    SEQPAR_FAIL(errc::invalid_argument, what << ": this rank's " << description
                                             << " differs from rank 0's; expected the same on every rank of the group");
  SEQPAR_FAIL(errc::peer_failed, what << ": rank(s) " << differ.str()
                                      << " were built with other shapes than rank 0; nothing was written or moved");
}

SEQPAR_NAMESPACE_END
