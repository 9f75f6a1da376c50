//! @file in_process.hpp
//! in_process_communicator: P ranks as threads of one process, over host memory or one GPU's memory.
#pragma once

#include <seqpar/comm/arguments.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/comm/reduce.hpp>
#include <seqpar/cuda_check.hpp>
#include <seqpar/detail/abortable_barrier.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <span>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! What one rank publishes to its peers for the collective in progress.
struct in_process_slot {
  const void* send = nullptr;
  void* recv = nullptr;
  std::size_t send_elems = 0, recv_elems = 0, count = 0;
  std::span<const std::size_t> send_counts, send_displs, recv_counts, recv_displs;
  int dest = no_rank, source = no_rank, color = 0, key = 0;
  std::int64_t value = 0;
  bool args_ok = true, peers_ok = true;
  std::shared_ptr<struct in_process_group> child;
  cudaEvent_t ready = nullptr, done = nullptr;
};

//! State shared by the ranks of one in-process group.
struct in_process_group {
  in_process_group(int size, memory_space memory, int device)
      : size(size), memory(memory), device(device), barrier(size), slots(size) {}
  ~in_process_group() {
    for (auto& s : slots) {
      if (s.ready) cudaEventDestroy(s.ready);
      if (s.done) cudaEventDestroy(s.done);
    }
  }
  int size;
  memory_space memory;
  int device;
  abortable_barrier barrier;
  std::vector<in_process_slot> slots;
};

}  // namespace detail

//! One rank of a group of P ranks that live as threads of this process. Buffers are host memory,
//! or device memory of one GPU; device operations are ordered on the stream each call names
//! (cudaMemcpyAsync; reductions are staged through the host). Every operation is collective: all
//! ranks of the group call it in the same order. Arguments are checked on every rank and across
//! ranks before any byte moves; when one rank's check fails, that rank throws its error and every
//! other rank throws errc::peer_failed, and no receive buffer is touched.
class in_process_communicator {
 public:
  //! Opts into seqpar::communicator.
  using communicator_concept = communicator_tag;

  //! The P communicators of a new group, one per rank, over buffers in `memory`.
  static std::vector<in_process_communicator> create_group(int size, memory_space memory = memory_space::host) {
    SEQPAR_EXPECTS(size >= 1, "size: expected at least 1 rank, got " << size);
    int device = 0;
    if (memory == memory_space::device) SEQPAR_CUDA_TRY(cudaGetDevice(&device));
    auto group = std::make_shared<detail::in_process_group>(size, memory, device);
    std::vector<in_process_communicator> comms;
    for (int r = 0; r < size; ++r) comms.push_back(in_process_communicator(group, r));
    return comms;
  }

  //! This rank's index in [0, size()).
  int rank() const { return rank_; }
  //! Number of ranks in the group.
  int size() const { return group_->size; }
  //! Where the buffers of this group live.
  memory_space memory() const { return group_->memory; }

  //! Sends block j of `send` (count elements) to rank j; receives rank j's block into block j of `recv`.
  template <wire_type T>
  void all_to_all(std::span<const T> send, std::span<T> recv, std::size_t count, stream_t stream) {
    collective(
        stream,
        [&](detail::in_process_slot& me) {
          detail::check_all_to_all(send, recv, count, size());
          publish(me, send, recv);
          me.count = count;
        },
        [&] {
          for (int j = 0; j < size(); ++j)
            SEQPAR_EXPECTS(slot(j).count == count, "count: rank " << j << " passed " << slot(j).count
                                                                  << ", this rank " << count
                                                                  << "; expected the same on every rank");
        },
        [&] {
          for (int j = 0; j < size(); ++j)
            copy_from(j, recv.data() + j * count, static_cast<const T*>(slot(j).send) + rank_ * count, count, stream);
        });
  }

  //! Sends send[send_displs[j], +send_counts[j]) to rank j and receives rank j's block into
  //! recv[recv_displs[j], +recv_counts[j]); recv_counts[j] must equal rank j's send_counts[rank()].
  template <wire_type T>
  void all_to_all_v(std::span<const T> send, std::span<const std::size_t> send_counts,
                    std::span<const std::size_t> send_displs, std::span<T> recv,
                    std::span<const std::size_t> recv_counts, std::span<const std::size_t> recv_displs,
                    stream_t stream) {
    collective(
        stream,
        [&](detail::in_process_slot& me) {
          detail::check_all_to_all_v(send, send_counts, send_displs, recv, recv_counts, recv_displs, size());
          publish(me, send, recv);
          me.send_counts = send_counts, me.send_displs = send_displs;
          me.recv_counts = recv_counts, me.recv_displs = recv_displs;
        },
        [&] {
          for (int j = 0; j < size(); ++j)
            SEQPAR_EXPECTS(recv_counts[j] == slot(j).send_counts[rank_],
                           "recv_counts[" << j << "] = " << recv_counts[j] << "; expected rank " << j
                                          << "'s send_counts[" << rank_ << "] = " << slot(j).send_counts[rank_]);
        },
        [&] {
          for (int j = 0; j < size(); ++j)
            copy_from(j, recv.data() + recv_displs[j],
                      static_cast<const T*>(slot(j).send) + slot(j).send_displs[rank_], recv_counts[j], stream);
        });
  }

  //! Sends `send` to rank `dest` while receiving from rank `source` into `recv` (either may be
  //! no_rank); the sender's size must equal the receiver's.
  template <wire_type T>
  void neighbor_exchange(std::span<const T> send, int dest, std::span<T> recv, int source, stream_t stream) {
    collective(
        stream,
        [&](detail::in_process_slot& me) {
          detail::check_neighbor_exchange(send, dest, recv, source, size());
          publish(me, send, recv);
          me.dest = dest, me.source = source;
        },
        [&] {
          detail::check_neighbor_pairing(rank_, dest, source, recv.size(), [&](int j) {
            const auto& s = slot(j);
            return detail::neighbor_side{s.dest, s.source, s.send_elems};
          });
        },
        [&] {
          if (source != no_rank) copy_from(source, recv.data(), static_cast<const T*>(slot(source).send), recv.size(), stream);
        });
  }

  //! Concatenates every rank's `send` (same size everywhere) into `recv`, in rank order.
  template <wire_type T>
  void all_gather(std::span<const T> send, std::span<T> recv, stream_t stream) {
    const std::size_t n = send.size();
    collective(
        stream,
        [&](detail::in_process_slot& me) {
          detail::check_all_gather(send, recv, size());
          publish(me, send, recv);
        },
        [&] { check_same_send_size(n); },
        [&] {
          for (int j = 0; j < size(); ++j) copy_from(j, recv.data() + j * n, static_cast<const T*>(slot(j).send), n, stream);
        });
  }

  //! Sums block r of every rank's `send` into this rank r's `recv` (fp32 accumulation for 16-bit types).
  template <wire_type T>
  void reduce_scatter(std::span<const T> send, std::span<T> recv, stream_t stream) {
    const std::size_t n = recv.size();
    std::vector<T> sum;
    collective(
        stream,
        [&](detail::in_process_slot& me) {
          detail::check_reduce_scatter(send, recv, size());
          publish(me, send, recv);
        },
        [&] { check_same_send_size(n * size()); },
        [&] { sum = sum_of_peers<T>(rank_ * n, n, stream); },
        [&] { copy_to_recv(recv.data(), sum, stream); });
  }

  //! Sums every rank's `send` element-wise into `recv` on every rank; recv may be send (in place).
  template <wire_type T>
  void all_reduce(std::span<const T> send, std::span<T> recv, stream_t stream) {
    std::vector<T> sum;
    collective(
        stream,
        [&](detail::in_process_slot& me) {
          detail::check_all_reduce(send, recv);
          publish(me, send, recv);
        },
        [&] { check_same_send_size(send.size()); },
        [&] { sum = sum_of_peers<T>(0, send.size(), stream); },
        [&] { copy_to_recv(recv.data(), sum, stream); });
  }

  //! Returns once every rank has called it (and, on device, orders `stream` after every rank's work).
  void barrier(stream_t stream) {
    collective(stream, [](detail::in_process_slot&) {}, [] {}, [] {});
  }

  //! Every rank's `value`, in rank order (host-side; needs no stream): the group's control channel.
  std::vector<std::int64_t> all_gather_value(std::int64_t value, stream_t) {
    scoped_rank attribute(rank_);
    auto& g = *group_;
    g.slots[rank_].value = value;
    g.barrier.arrive_and_wait();
    std::vector<std::int64_t> all(static_cast<std::size_t>(size()));
    for (int j = 0; j < size(); ++j) all[j] = g.slots[j].value;
    g.barrier.arrive_and_wait();  // every rank has read the values before anyone reuses its slot
    return all;
  }

  //! Wakes every rank of this group blocked in a collective, now or later, with errc::peer_failed
  //! (what run_in_process does when a rank throws, so the others do not wait forever).
  void abort_group() const { group_->barrier.abort(); }

  //! Collective: ranks with the same `color` (>= 0) form a new group, ranked by (key, old rank).
  in_process_communicator split(int color, int key) const {
    scoped_rank attribute(rank_);
    auto& g = *group_;
    auto& me = g.slots[rank_];
    agree([&] {
      SEQPAR_EXPECTS(color >= 0, "color: expected a colour >= 0, got " << color);
      me.color = color, me.key = key, me.child.reset();
    }, &detail::in_process_slot::args_ok);
    std::vector<std::pair<int, int>> members;  // (key, old rank) of my colour
    for (int j = 0; j < size(); ++j)
      if (g.slots[j].color == color) members.emplace_back(g.slots[j].key, j);
    std::sort(members.begin(), members.end());
    const int leader = members.front().second;
    const int new_rank = static_cast<int>(std::find(members.begin(), members.end(), std::pair{key, rank_}) - members.begin());
    if (leader == rank_)
      me.child = std::make_shared<detail::in_process_group>(static_cast<int>(members.size()), g.memory, g.device);
    g.barrier.arrive_and_wait();
    auto child = g.slots[leader].child;
    g.barrier.arrive_and_wait();
    return in_process_communicator(std::move(child), new_rank);
  }

 private:
  in_process_communicator(std::shared_ptr<detail::in_process_group> group, int rank)
      : group_(std::move(group)), rank_(rank) {}

  const detail::in_process_slot& slot(int j) const { return group_->slots[j]; }
  bool on_device() const { return group_->memory == memory_space::device; }

  template <class T>
  static void publish(detail::in_process_slot& me, std::span<const T> send, std::span<T> recv) {
    me.send = send.data(), me.recv = recv.data();
    me.send_elems = send.size(), me.recv_elems = recv.size();
  }

  void check_same_send_size(std::size_t expected) const {
    for (int j = 0; j < size(); ++j)
      SEQPAR_EXPECTS(slot(j).send_elems == expected, "send: rank " << j << " passed " << slot(j).send_elems
                                                                   << " elements; expected " << expected
                                                                   << " on every rank");
  }

  // Runs `step` (which may throw) on every rank, records success in `flag`, and lets every rank
  // see every outcome: if any rank failed, the failing ranks rethrow their error and the others
  // throw errc::peer_failed. Nothing moves before all ranks have passed.
  template <class Step>
  void agree(Step&& step, bool detail::in_process_slot::*flag) const {
    auto& g = *group_;
    std::exception_ptr failure;
    try {
      step();
    } catch (...) {
      failure = std::current_exception();
    }
    g.slots[rank_].*flag = !failure;
    g.barrier.arrive_and_wait();
    std::ostringstream failed;
    for (int j = 0; j < size(); ++j)
      if (!(g.slots[j].*flag)) failed << (failed.tellp() > 0 ? ", " : "") << j;
    if (failed.tellp() == 0) return;
    g.barrier.arrive_and_wait();  // every rank has read the flags before anyone reuses its slot
    if (failure) std::rethrow_exception(failure);
    SEQPAR_FAIL(errc::peer_failed, "rank(s) " << failed.str() << " rejected their arguments; nothing was moved");
  }

  // The protocol of every data-moving operation: local checks, cross-rank checks, then this rank
  // pulls what it receives from the peers' published send buffers; `finish` runs once no peer
  // reads this rank's buffers any more (it is where reductions write their result).
  template <class Validate, class CrossCheck, class Move, class Finish = void (*)()>
  void collective(stream_t stream, Validate&& validate, CrossCheck&& cross_check, Move&& move,
                  Finish&& finish = [] {}) {
    scoped_rank attribute(rank_);
    auto& g = *group_;
    auto& me = g.slots[rank_];
    if (on_device()) SEQPAR_CUDA_TRY(cudaSetDevice(g.device));
    agree([&] {
      validate(me);
      if (on_device()) record(me.ready, stream);
    }, &detail::in_process_slot::args_ok);
    agree(cross_check, &detail::in_process_slot::peers_ok);
    move();
    if (on_device()) record(me.done, stream);
    g.barrier.arrive_and_wait();
    if (on_device())
      for (int j = 0; j < size(); ++j)
        if (j != rank_) SEQPAR_CUDA_TRY(cudaStreamWaitEvent(stream, slot(j).done, 0));
    finish();
  }

  static void record(cudaEvent_t& event, stream_t stream) {
    if (!event) SEQPAR_CUDA_TRY(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    SEQPAR_CUDA_TRY(cudaEventRecord(event, stream));
  }

  template <class T>
  void copy_from(int peer, T* dst, const T* src, std::size_t n, stream_t stream) const {
    if (n == 0) return;
    if (!on_device()) {
      std::memcpy(dst, src, n * sizeof(T));
      return;
    }
    if (peer != rank_) SEQPAR_CUDA_TRY(cudaStreamWaitEvent(stream, slot(peer).ready, 0));
    SEQPAR_CUDA_TRY(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDefault, stream));
  }

  // Sum over ranks, in rank order, of elements [offset, offset + n) of each rank's send buffer.
  template <class T>
  std::vector<T> sum_of_peers(std::size_t offset, std::size_t n, stream_t stream) const {
    std::vector<detail::accumulator_t<T>> acc(n, detail::accumulator_t<T>{});
    std::vector<T> block(n);
    for (int j = 0; j < size(); ++j) {
      copy_from(j, block.data(), static_cast<const T*>(slot(j).send) + offset, n, stream);
      if (on_device()) SEQPAR_CUDA_TRY(cudaStreamSynchronize(stream));
      detail::accumulate(std::span<detail::accumulator_t<T>>(acc), std::span<const T>(block));
    }
    return detail::round_to<T>(acc);
  }

  template <class T>
  void copy_to_recv(T* recv, const std::vector<T>& values, stream_t stream) const {
    if (values.empty()) return;
    if (!on_device()) {
      std::memcpy(recv, values.data(), values.size() * sizeof(T));
      return;
    }
    SEQPAR_CUDA_TRY(cudaMemcpyAsync(recv, values.data(), values.size() * sizeof(T), cudaMemcpyDefault, stream));
    SEQPAR_CUDA_TRY(cudaStreamSynchronize(stream));  // `values` dies on return
  }

  std::shared_ptr<detail::in_process_group> group_;
  int rank_ = 0;
};

static_assert(communicator<in_process_communicator>);

//! Runs fn(comm) on P threads, one per rank of a new in-process group, and waits for all. If any
//! rank throws, the group is aborted (ranks blocked in a collective throw errc::peer_failed) and
//! the first root-cause exception, by rank, is rethrown here.
template <class Fn>
void run_in_process(int size, memory_space memory, Fn&& fn) {
  auto comms = in_process_communicator::create_group(size, memory);
  int device = 0;
  if (memory == memory_space::device) SEQPAR_CUDA_TRY(cudaGetDevice(&device));
  std::vector<std::exception_ptr> failures(size);
  std::vector<char> root_cause(size, 0);
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < size; ++r)
      threads.emplace_back([&, r] {
        scoped_rank attribute(r);
        try {
          if (memory == memory_space::device) SEQPAR_CUDA_TRY(cudaSetDevice(device));
          fn(comms[r]);
        } catch (const error& e) {
          failures[r] = std::current_exception();
          root_cause[r] = e.code() != errc::peer_failed;
          comms[r].abort_group();
        } catch (...) {
          failures[r] = std::current_exception();
          root_cause[r] = true;
          comms[r].abort_group();
        }
      });
  }
  for (int r = 0; r < size; ++r)
    if (root_cause[r]) std::rethrow_exception(failures[r]);
  for (int r = 0; r < size; ++r)
    if (failures[r]) std::rethrow_exception(failures[r]);
}

SEQPAR_NAMESPACE_END
