//! @file counting.hpp
//! counting_communicator: wraps any communicator and records the bytes each call sends to each peer.
#pragma once

#include <seqpar/comm/agreement.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/detail/balanced_split.hpp>
#include <seqpar/error.hpp>

#include <cstddef>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! One recorded call: its name and the payload bytes this rank sent to each rank (0 to itself).
struct traffic_record {
  std::string operation;                  //!< "all_to_all", "all_to_all_v", "neighbor_exchange", ...
  std::vector<std::size_t> bytes_to_peer;  //!< indexed by destination rank; the own entry stays 0

  //! Bytes this call sent to other ranks.
  std::size_t total() const { return std::accumulate(bytes_to_peer.begin(), bytes_to_peer.end(), std::size_t{0}); }
};

//! Decorates a communicator with a log of what each successful call sent. The volumes are the
//! algorithm-independent payloads: all_to_all(_v) and neighbor_exchange send their blocks;
//! all_gather sends this rank's block to every peer; reduce_scatter sends block j to rank j;
//! all_reduce counts as a reduce_scatter then an all_gather over P near-equal blocks (the first
//! n % P blocks one element longer). A rank's own block never crosses a link and counts 0.
template <communicator Comm>
class counting_communicator {
 public:
  //! Opts into seqpar::communicator.
  using communicator_concept = communicator_tag;

  //! Wraps `inner`, which the decorator then owns.
  explicit counting_communicator(Comm inner) : inner_(std::move(inner)) {}

  //! This rank.
  int rank() const { return inner_.rank(); }
  //! Ranks in the group.
  int size() const { return inner_.size(); }
  //! Where buffers live.
  memory_space memory() const { return inner_.memory(); }
  //! Device memory only when the wrapped communicator's is (seqpar::device_only_communicator).
  static constexpr bool device_only = device_only_communicator<Comm>;
  //! The wrapped communicator.
  Comm& inner() { return inner_; }

  //! Every successful call since construction or clear(), in order.
  const std::vector<traffic_record>& records() const { return records_; }
  //! Bytes sent to `peer` (a rank in [0, size())) over all records.
  std::size_t bytes_sent_to(int peer) const {
    SEQPAR_EXPECTS(peer >= 0 && peer < size(), "peer: expected a rank in [0, " << size() << "), got " << peer);
    std::size_t sum = 0;
    for (const auto& r : records_) sum += r.bytes_to_peer[peer];
    return sum;
  }
  //! Bytes sent to all other ranks over all records.
  std::size_t bytes_sent() const {
    std::size_t sum = 0;
    for (const auto& r : records_) sum += r.total();
    return sum;
  }
  //! Forgets every record.
  void clear() { records_.clear(); }

  //! Forwards all_to_all; records count elements to every peer.
  template <wire_type T>
  void all_to_all(std::span<const T> send, std::span<T> recv, std::size_t count, stream_t stream) {
    inner_.all_to_all(send, recv, count, stream);
    record<T>("all_to_all", [&](int) { return count; });
  }

  //! Forwards all_to_all_v; records send_counts[j] elements to peer j.
  template <wire_type T>
  void all_to_all_v(std::span<const T> send, std::span<const std::size_t> send_counts,
                    std::span<const std::size_t> send_displs, std::span<T> recv,
                    std::span<const std::size_t> recv_counts, std::span<const std::size_t> recv_displs,
                    stream_t stream) {
    inner_.all_to_all_v(send, send_counts, send_displs, recv, recv_counts, recv_displs, stream);
    record<T>("all_to_all_v", [&](int j) { return send_counts[j]; });
  }

  //! Forwards neighbor_exchange; records send.size() elements to dest.
  template <wire_type T>
  void neighbor_exchange(std::span<const T> send, int dest, std::span<T> recv, int source, stream_t stream) {
    inner_.neighbor_exchange(send, dest, recv, source, stream);
    record<T>("neighbor_exchange", [&](int j) { return j == dest ? send.size() : 0; });
  }

  //! Forwards all_gather; records send.size() elements to every peer.
  template <wire_type T>
  void all_gather(std::span<const T> send, std::span<T> recv, stream_t stream) {
    inner_.all_gather(send, recv, stream);
    record<T>("all_gather", [&](int) { return send.size(); });
  }

  //! Forwards reduce_scatter; records recv.size() elements (block j) to every peer j.
  template <wire_type T>
  void reduce_scatter(std::span<const T> send, std::span<T> recv, stream_t stream) {
    inner_.reduce_scatter(send, recv, stream);
    record<T>("reduce_scatter", [&](int) { return recv.size(); });
  }

  //! Forwards all_reduce; records block j (reduce-scatter) plus this rank's block (all-gather) to peer j.
  template <wire_type T>
  void all_reduce(std::span<const T> send, std::span<T> recv, stream_t stream) {
    inner_.all_reduce(send, recv, stream);
    const std::size_t n = send.size(), p = static_cast<std::size_t>(size());
    auto block = [&](std::size_t j) { return detail::balanced_size(n, p, j); };
    record<T>("all_reduce", [&](int j) { return block(j) + block(rank()); });
  }

  //! Forwards barrier; records a call with no payload.
  void barrier(stream_t stream) {
    inner_.barrier(stream);
    record<char>("barrier", [](int) { return std::size_t{0}; });
  }

  //! Forwards the control channel (argument agreement, shape fingerprints) to the wrapped
  //! communicator. It carries no payload, so it is not recorded; control_calls() counts it.
  std::vector<std::int64_t> all_gather_value(std::int64_t value, stream_t stream) {
    ++control_calls_;
    return seqpar::all_gather_value(inner_, value, stream);
  }
  //! Control-channel calls (one int64 from every rank each) since construction.
  std::size_t control_calls() const { return control_calls_; }

  //! Splits the wrapped communicator; the new one starts with an empty log.
  counting_communicator split(int color, int key) const { return counting_communicator(inner_.split(color, key)); }

 private:
  template <class T, class ElementsTo>
  void record(const char* operation, ElementsTo&& elements_to) {
    traffic_record r{operation, std::vector<std::size_t>(size(), 0)};
    for (int j = 0; j < size(); ++j)
      if (j != rank()) r.bytes_to_peer[j] = elements_to(j) * sizeof(T);
    records_.push_back(std::move(r));
  }

  Comm inner_;
  std::vector<traffic_record> records_;
  std::size_t control_calls_ = 0;
};

SEQPAR_NAMESPACE_END
