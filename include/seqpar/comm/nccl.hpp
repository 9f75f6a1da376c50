//! @file nccl.hpp
//! nccl_communicator: one GPU per rank, device memory, every operation ordered on a cudaStream_t.
#pragma once

#include <seqpar/comm/arguments.hpp>
#include <seqpar/comm/bounded_wait.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/cuda_check.hpp>

#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <vector>
#include <utility>

//! Calls an NCCL function; on failure throws seqpar::error with NCCL's message and the call text.
#define SEQPAR_NCCL_TRY(call)                                                                     \
  do {                                                                                            \
    const ncclResult_t seqpar_status_ = (call);                                                   \
    if (seqpar_status_ != ncclSuccess) {                                                          \
      (void)cudaGetLastError();                                                                   \
      throw ::seqpar::error(::seqpar::errc::nccl, ncclGetErrorString(seqpar_status_), #call,      \
                            __FILE__, __LINE__);                                                  \
    }                                                                                             \
  } while (0)

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! The NCCL datatype of T.
template <wire_type T>
constexpr ncclDataType_t nccl_type() {
  if constexpr (std::same_as<T, float>) return ncclFloat32;
  else if constexpr (std::same_as<T, __half>) return ncclFloat16;
  else if constexpr (std::same_as<T, __nv_bfloat16>) return ncclBfloat16;
  else if constexpr (std::same_as<T, double>) return ncclFloat64;
  else if constexpr (std::same_as<T, std::int32_t>) return ncclInt32;
  else return ncclInt64;
}

//! Opens an NCCL group on construction and closes it on destruction, so every send and receive
//! between them is issued as one fused operation.
class nccl_group_guard {
 public:
  nccl_group_guard() { SEQPAR_NCCL_TRY(ncclGroupStart()); }
  ~nccl_group_guard() noexcept(false) {
    if (std::uncaught_exceptions() > unwinding_) {
      (void)ncclGroupEnd();  // already unwinding: a second exception would terminate
      return;
    }
    SEQPAR_NCCL_TRY(ncclGroupEnd());
  }
  nccl_group_guard(const nccl_group_guard&) = delete;
  nccl_group_guard& operator=(const nccl_group_guard&) = delete;

 private:
  int unwinding_ = std::uncaught_exceptions();
};

}  // namespace detail

//! One rank per GPU over an ncclComm_t, owned or borrowed. Buffers are device memory; operations
//! are enqueued on the stream they are given and return without waiting. Arguments are checked on
//! this rank before anything is enqueued (NCCL offers no cheap cross-rank check).
class nccl_communicator {
 public:
  //! Opts into seqpar::communicator.
  using communicator_concept = communicator_tag;

  //! Collective over `size` processes: rank `rank` of the clique named by `id` (owned).
  nccl_communicator(const ncclUniqueId& id, int size, int rank) {
    SEQPAR_EXPECTS(size >= 1 && rank >= 0 && rank < size,
                   "rank: expected a rank in [0, " << size << ") of a group of size >= 1, got rank " << rank);
    scoped_rank attribute(rank);
    SEQPAR_NCCL_TRY(ncclCommInitRank(&comm_, size, id, rank));
    owned_ = true;
    adopt_or_release();
  }

  //! Borrows an existing communicator; the caller keeps ownership and destroys it after this object.
  static nccl_communicator borrow(ncclComm_t comm) {
    SEQPAR_EXPECTS(comm != nullptr, "comm: null ncclComm_t; expected an initialised communicator");
    return nccl_communicator(comm, false);
  }

  //! A group of one rank on the current GPU.
  static nccl_communicator single_gpu() {
    ncclUniqueId id;
    SEQPAR_NCCL_TRY(ncclGetUniqueId(&id));
    return nccl_communicator(id, 1, 0);
  }

  //! Takes over `other`'s communicator and scratch buffer; `other` is left empty.
  nccl_communicator(nccl_communicator&& other) noexcept
      : comm_(std::exchange(other.comm_, nullptr)),
        owned_(std::exchange(other.owned_, false)),
        scratch_(std::exchange(other.scratch_, nullptr)),
        done_(std::exchange(other.done_, nullptr)),
        wait_limit_(other.wait_limit_),
        rank_(other.rank_),
        size_(other.size_) {}
  //! Swaps state with `other`, which then releases this object's former communicator.
  nccl_communicator& operator=(nccl_communicator&& other) noexcept {
    std::swap(comm_, other.comm_), std::swap(owned_, other.owned_), std::swap(scratch_, other.scratch_);
    std::swap(done_, other.done_);
    wait_limit_ = other.wait_limit_, rank_ = other.rank_, size_ = other.size_;
    return *this;
  }
  nccl_communicator(const nccl_communicator&) = delete;             //!< move-only: it may own its communicator
  nccl_communicator& operator=(const nccl_communicator&) = delete;  //!< move-only: it may own its communicator
  //! Frees the scratch buffer and destroys the communicator if owned (a borrowed one is kept).
  ~nccl_communicator() { release(); }

  //! This rank.
  int rank() const { return rank_; }
  //! Ranks in the group.
  int size() const { return size_; }
  //! Buffers are device memory.
  memory_space memory() const { return memory_space::device; }
  //! Always device memory (seqpar::device_only_communicator).
  static constexpr bool device_only = true;
  //! The NCCL communicator.
  ncclComm_t native() const { return comm_; }

  //! How long a host wait of this communicator (barrier, all_gather_value, hence every group-checked
  //! call's agreement) waits for its collective before it gives up: it then aborts an owned
  //! communicator (ncclCommAbort; a borrowed one is left to its owner) and throws errc::timeout, as
  //! an asynchronous NCCL error does with errc::nccl. Default: 10 minutes.
  std::chrono::milliseconds wait_limit() const { return wait_limit_; }
  //! Sets wait_limit() (split() passes it on).
  void set_wait_limit(std::chrono::milliseconds limit) {
    SEQPAR_EXPECTS(limit.count() > 0, "limit: expected a positive wait, got " << limit.count() << " ms");
    wait_limit_ = limit;
  }

  //! Sends block j of `send` (count elements) to rank j; receives rank j's block into block j of `recv`.
  template <wire_type T>
  void all_to_all(std::span<const T> send, std::span<T> recv, std::size_t count, stream_t stream) {
    scoped_rank attribute(rank_);
    detail::check_all_to_all(send, recv, count, size_);
    detail::nccl_group_guard group;
    for (int j = 0; j < size_; ++j) {
      SEQPAR_NCCL_TRY(ncclSend(send.data() + j * count, count, detail::nccl_type<T>(), j, comm_, stream));
      SEQPAR_NCCL_TRY(ncclRecv(recv.data() + j * count, count, detail::nccl_type<T>(), j, comm_, stream));
    }
  }

  //! Per-peer counts and displacements; recv_counts[j] must equal rank j's send_counts[rank()].
  template <wire_type T>
  void all_to_all_v(std::span<const T> send, std::span<const std::size_t> send_counts,
                    std::span<const std::size_t> send_displs, std::span<T> recv,
                    std::span<const std::size_t> recv_counts, std::span<const std::size_t> recv_displs,
                    stream_t stream) {
    scoped_rank attribute(rank_);
    detail::check_all_to_all_v(send, send_counts, send_displs, recv, recv_counts, recv_displs, size_);
    detail::nccl_group_guard group;
    for (int j = 0; j < size_; ++j) {
      if (send_counts[j] > 0)
        SEQPAR_NCCL_TRY(ncclSend(send.data() + send_displs[j], send_counts[j], detail::nccl_type<T>(), j, comm_, stream));
      if (recv_counts[j] > 0)
        SEQPAR_NCCL_TRY(ncclRecv(recv.data() + recv_displs[j], recv_counts[j], detail::nccl_type<T>(), j, comm_, stream));
    }
  }

  //! Sends `send` to `dest` while receiving from `source` into `recv` (either may be no_rank).
  template <wire_type T>
  void neighbor_exchange(std::span<const T> send, int dest, std::span<T> recv, int source, stream_t stream) {
    scoped_rank attribute(rank_);
    detail::check_neighbor_exchange(send, dest, recv, source, size_);
    detail::nccl_group_guard group;
    if (dest != no_rank) SEQPAR_NCCL_TRY(ncclSend(send.data(), send.size(), detail::nccl_type<T>(), dest, comm_, stream));
    if (source != no_rank)
      SEQPAR_NCCL_TRY(ncclRecv(recv.data(), recv.size(), detail::nccl_type<T>(), source, comm_, stream));
  }

  //! Concatenates every rank's `send` into `recv`, in rank order.
  template <wire_type T>
  void all_gather(std::span<const T> send, std::span<T> recv, stream_t stream) {
    scoped_rank attribute(rank_);
    detail::check_all_gather(send, recv, size_);
    SEQPAR_NCCL_TRY(ncclAllGather(send.data(), recv.data(), send.size(), detail::nccl_type<T>(), comm_, stream));
  }

  //! Sums block r of every rank's `send` into rank r's `recv`.
  template <wire_type T>
  void reduce_scatter(std::span<const T> send, std::span<T> recv, stream_t stream) {
    scoped_rank attribute(rank_);
    detail::check_reduce_scatter(send, recv, size_);
    SEQPAR_NCCL_TRY(ncclReduceScatter(send.data(), recv.data(), recv.size(), detail::nccl_type<T>(), ncclSum, comm_, stream));
  }

  //! Sums every rank's `send` into `recv`; recv may be send (in place).
  template <wire_type T>
  void all_reduce(std::span<const T> send, std::span<T> recv, stream_t stream) {
    scoped_rank attribute(rank_);
    detail::check_all_reduce(send, recv);
    SEQPAR_NCCL_TRY(ncclAllReduce(send.data(), recv.data(), send.size(), detail::nccl_type<T>(), ncclSum, comm_, stream));
  }

  //! Orders `stream` after every rank has reached this point, and waits for it (within wait_limit()).
  void barrier(stream_t stream) {
    scoped_rank attribute(rank_);
    SEQPAR_NCCL_TRY(ncclAllReduce(scratch_, scratch_, 1, ncclInt64, ncclSum, comm_, stream));
    wait_for(stream, "barrier");
  }

  //! Every rank's `value`, in rank order: one ncclAllGather of an int64 through the device scratch,
  //! ordered on `stream`, which it then waits for within wait_limit() (the host needs the values).
  std::vector<std::int64_t> all_gather_value(std::int64_t value, stream_t stream) {
    scoped_rank attribute(rank_);
    std::vector<std::int64_t> all(static_cast<std::size_t>(size_));
    SEQPAR_CUDA_TRY(cudaMemcpyAsync(scratch_, &value, sizeof value, cudaMemcpyHostToDevice, stream));
    SEQPAR_NCCL_TRY(ncclAllGather(scratch_, scratch_ + 1, 1, ncclInt64, comm_, stream));
    SEQPAR_CUDA_TRY(cudaMemcpyAsync(all.data(), scratch_ + 1, all.size() * sizeof value, cudaMemcpyDeviceToHost, stream));
    wait_for(stream, "all_gather_value");
    return all;
  }

  //! Collective: ranks with the same `color` (>= 0) form a new group, ranked by (key, old rank).
  nccl_communicator split(int color, int key) const {
    scoped_rank attribute(rank_);
    SEQPAR_EXPECTS(color >= 0, "color: expected a colour >= 0, got " << color);
    ncclComm_t part = nullptr;
    SEQPAR_NCCL_TRY(ncclCommSplit(comm_, color, key, &part, nullptr));
    nccl_communicator made(part, true);
    made.wait_limit_ = wait_limit_;
    return made;
  }

 private:
  nccl_communicator(ncclComm_t comm, bool owned) : comm_(comm), owned_(owned) { adopt_or_release(); }

  // Finishes constructing on comm_. A constructor that throws runs no destructor, so on failure
  // the scratch buffer and an owned comm_ are released here before the error propagates.
  void adopt_or_release() {
    try {
      adopt();
    } catch (...) {
      release();
      throw;
    }
  }

  // Frees the scratch buffer and destroys comm_ when owned; leaves an empty object.
  void release() noexcept {
    if (scratch_) cudaFree(scratch_);
    if (done_) cudaEventDestroy(done_);
    if (owned_ && comm_) ncclCommDestroy(comm_);
    scratch_ = nullptr, done_ = nullptr, comm_ = nullptr, owned_ = false;
  }

  void adopt() {
    SEQPAR_NCCL_TRY(ncclCommUserRank(comm_, &rank_));
    SEQPAR_NCCL_TRY(ncclCommCount(comm_, &size_));
    SEQPAR_CUDA_TRY(cudaMalloc(&scratch_, (static_cast<std::size_t>(size_) + 1) * sizeof(std::int64_t)));
    SEQPAR_CUDA_TRY(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }

  // Waits for what `stream` holds now, within wait_limit_ (detail::bounded_wait): a peer that
  // died leaves NCCL's kernels spinning, which cudaStreamSynchronize would wait for forever.
  void wait_for(stream_t stream, const char* what) {
    SEQPAR_CUDA_TRY(cudaEventRecord(done_, stream));
    detail::bounded_wait(
        [&] {
          const cudaError_t e = cudaEventQuery(done_);
          if (e != cudaErrorNotReady) SEQPAR_CUDA_TRY(e);
          return e == cudaSuccess;
        },
        [&] {
          ncclResult_t r = ncclSuccess;
          if (ncclCommGetAsyncError(comm_, &r) != ncclSuccess) return std::string("ncclCommGetAsyncError failed");
          return r == ncclSuccess || r == ncclInProgress ? std::string() : std::string(ncclGetErrorString(r));
        },
        [&] {
          if (!owned_) return;
          (void)ncclCommAbort(comm_);
          comm_ = nullptr, owned_ = false;
        },
        wait_limit_, what);
  }

  ncclComm_t comm_ = nullptr;
  bool owned_ = false;
  std::int64_t* scratch_ = nullptr;  // size() + 1 values: barrier and all_gather_value
  cudaEvent_t done_ = nullptr;       // marks what a host wait waits for
  std::chrono::milliseconds wait_limit_ = std::chrono::minutes(10);
  int rank_ = 0;
  int size_ = 0;
};

static_assert(communicator<nccl_communicator>);

SEQPAR_NAMESPACE_END
