//! @file mpi.hpp
//! mpi_communicator: one rank per process over host memory, on a private duplicate of an MPI_Comm.
#pragma once

#include <seqpar/comm/arguments.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/comm/reduce.hpp>

#include <mpi.h>

#include <cstdint>
#include <exception>
#include <span>
#include <utility>
#include <vector>

//! Calls an MPI function; on failure throws seqpar::error with MPI's message and the call text.
#define SEQPAR_MPI_TRY(call)                                                                      \
  do {                                                                                            \
    const int seqpar_status_ = (call);                                                            \
    if (seqpar_status_ != MPI_SUCCESS) {                                                          \
      char seqpar_text_[MPI_MAX_ERROR_STRING];                                                    \
      int seqpar_len_ = 0;                                                                        \
      MPI_Error_string(seqpar_status_, seqpar_text_, &seqpar_len_);                               \
      throw ::seqpar::error(::seqpar::errc::mpi, std::string(seqpar_text_, seqpar_len_), #call,   \
                            __FILE__, __LINE__);                                                  \
    }                                                                                             \
  } while (0)

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! The MPI datatype that carries T (16-bit floats travel as MPI_UINT16_T).
template <wire_type T>
MPI_Datatype mpi_type() {
  if constexpr (std::same_as<T, float>) return MPI_FLOAT;
  else if constexpr (std::same_as<T, double>) return MPI_DOUBLE;
  else if constexpr (std::same_as<T, std::int32_t>) return MPI_INT32_T;
  else if constexpr (std::same_as<T, std::int64_t>) return MPI_INT64_T;
  else return MPI_UINT16_T;
}

template <class T>
void mpi_sum_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const T*>(in);
  auto* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = add_in_float(a[i], b[i]);
}

//! The MPI sum for T: MPI_SUM, or a commutative user op summing 16-bit floats in fp32.
template <wire_type T>
MPI_Op mpi_sum() {
  if constexpr (element<T> && !std::same_as<T, float>) {
    static const MPI_Op op = [] {
      MPI_Op created;
      SEQPAR_MPI_TRY(MPI_Op_create(&mpi_sum_16bit<T>, 1, &created));
      return created;
    }();
    return op;
  } else {
    return MPI_SUM;
  }
}

}  // namespace detail

//! One rank per process over host memory. Works on its own duplicate of the MPI communicator it is
//! given (so its messages never match the application's) with errors returned, not fatal. Every
//! operation is collective over the group; arguments are checked locally and across ranks (one
//! small extra collective) before any payload moves, so a mismatch throws on every rank and no
//! receive buffer is touched.
class mpi_communicator {
 public:
  //! Opts into seqpar::communicator.
  using communicator_concept = communicator_tag;

  //! Collective over `comm`: duplicates it. MPI must be initialised.
  explicit mpi_communicator(MPI_Comm comm) {
    SEQPAR_MPI_TRY(MPI_Comm_dup(comm, &comm_));
    adopt_or_free();
  }
  //! Takes over `other`'s communicator; `other` is left empty (owning nothing).
  mpi_communicator(mpi_communicator&& other) noexcept
      : comm_(std::exchange(other.comm_, MPI_COMM_NULL)), rank_(other.rank_), size_(other.size_) {}
  //! Swaps communicators with `other`, which then frees this object's former one.
  mpi_communicator& operator=(mpi_communicator&& other) noexcept {
    std::swap(comm_, other.comm_), rank_ = other.rank_, size_ = other.size_;
    return *this;
  }
  mpi_communicator(const mpi_communicator&) = delete;             //!< move-only: it owns its communicator
  mpi_communicator& operator=(const mpi_communicator&) = delete;  //!< move-only: it owns its communicator
  //! Frees the private communicator (unless MPI is already finalised).
  ~mpi_communicator() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
  }

  //! This process's rank.
  int rank() const { return rank_; }
  //! Processes in the group.
  int size() const { return size_; }
  //! Buffers are host memory.
  memory_space memory() const { return memory_space::host; }
  //! The private MPI communicator.
  MPI_Comm native() const { return comm_; }

  //! Sends block j of `send` (count elements) to rank j; receives rank j's block into block j of `recv`.
  template <wire_type T>
  void all_to_all(std::span<const T> send, std::span<T> recv, std::size_t count, stream_t) {
    scoped_rank attribute(rank_);
    agree([&] {
      detail::check_all_to_all(send, recv, count, size_);
      detail::check_fits_int("count", count);
    });
    agree([&] { check_same_everywhere("count", count); });
    const int n = static_cast<int>(count);
    SEQPAR_MPI_TRY(MPI_Alltoall(send.data(), n, detail::mpi_type<T>(), recv.data(), n, detail::mpi_type<T>(), comm_));
  }

  //! Per-peer counts and displacements; recv_counts[j] must equal rank j's send_counts[rank()].
  template <wire_type T>
  void all_to_all_v(std::span<const T> send, std::span<const std::size_t> send_counts,
                    std::span<const std::size_t> send_displs, std::span<T> recv,
                    std::span<const std::size_t> recv_counts, std::span<const std::size_t> recv_displs, stream_t) {
    scoped_rank attribute(rank_);
    std::vector<int> sc, sd, rc, rd;
    agree([&] {
      detail::check_all_to_all_v(send, send_counts, send_displs, recv, recv_counts, recv_displs, size_);
      sc = to_int("send_counts", send_counts), sd = to_int("send_displs", send_displs);
      rc = to_int("recv_counts", recv_counts), rd = to_int("recv_displs", recv_displs);
    });
    std::vector<int> incoming(size_);
    SEQPAR_MPI_TRY(MPI_Alltoall(sc.data(), 1, MPI_INT, incoming.data(), 1, MPI_INT, comm_));
    agree([&] {
      for (int j = 0; j < size_; ++j)
        SEQPAR_EXPECTS(rc[j] == incoming[j], "recv_counts[" << j << "] = " << rc[j] << "; expected rank " << j
                                                            << "'s send_counts[" << rank_ << "] = " << incoming[j]);
    });
    SEQPAR_MPI_TRY(MPI_Alltoallv(send.data(), sc.data(), sd.data(), detail::mpi_type<T>(), recv.data(), rc.data(),
                                 rd.data(), detail::mpi_type<T>(), comm_));
  }

  //! Sends `send` to `dest` while receiving from `source` into `recv` (either may be no_rank).
  //! Collective: every rank calls it, with no_rank where it has nothing to send or receive. A rank
  //! whose source sends another size, or does not send to it, or whose dest does not receive from
  //! it, throws invalid_argument (the others peer_failed) before anything moves.
  template <wire_type T>
  void neighbor_exchange(std::span<const T> send, int dest, std::span<T> recv, int source, stream_t) {
    scoped_rank attribute(rank_);
    agree([&] {
      detail::check_neighbor_exchange(send, dest, recv, source, size_);
      detail::check_fits_int("send", send.size());
      detail::check_fits_int("recv", recv.size());
    });
    // Every rank learns every rank's (dest, source, send size), so each one checks that its source
    // sends it exactly recv.size() elements and that its dest receives from it, before any payload
    // moves: a mismatch would otherwise truncate the message, hang, or leave a stray message that a
    // later call receives.
    const std::int64_t mine[3] = {dest, source, static_cast<std::int64_t>(send.size())};
    std::vector<std::int64_t> sides(3 * static_cast<std::size_t>(size_));
    SEQPAR_MPI_TRY(MPI_Allgather(mine, 3, MPI_INT64_T, sides.data(), 3, MPI_INT64_T, comm_));
    agree([&] {
      detail::check_neighbor_pairing(rank_, dest, source, recv.size(), [&](int j) {
        const std::int64_t* s = sides.data() + 3 * j;
        return detail::neighbor_side{static_cast<int>(s[0]), static_cast<int>(s[1]), static_cast<std::size_t>(s[2])};
      });
    });
    const int to = dest == no_rank ? MPI_PROC_NULL : dest, from = source == no_rank ? MPI_PROC_NULL : source;
    SEQPAR_MPI_TRY(MPI_Sendrecv(send.data(), static_cast<int>(send.size()), detail::mpi_type<T>(), to, 0,
                                recv.data(), static_cast<int>(recv.size()), detail::mpi_type<T>(), from, 0, comm_,
                                MPI_STATUS_IGNORE));
  }

  //! Concatenates every rank's `send` (same size everywhere) into `recv`, in rank order.
  template <wire_type T>
  void all_gather(std::span<const T> send, std::span<T> recv, stream_t) {
    scoped_rank attribute(rank_);
    agree([&] {
      detail::check_all_gather(send, recv, size_);
      detail::check_fits_int("send", send.size());
    });
    agree([&] { check_same_everywhere("send size", send.size()); });
    const int n = static_cast<int>(send.size());
    SEQPAR_MPI_TRY(MPI_Allgather(send.data(), n, detail::mpi_type<T>(), recv.data(), n, detail::mpi_type<T>(), comm_));
  }

  //! Sums block r of every rank's `send` into rank r's `recv` (fp32 accumulation for 16-bit types).
  template <wire_type T>
  void reduce_scatter(std::span<const T> send, std::span<T> recv, stream_t) {
    scoped_rank attribute(rank_);
    agree([&] {
      detail::check_reduce_scatter(send, recv, size_);
      detail::check_fits_int("recv", recv.size());
    });
    agree([&] { check_same_everywhere("recv size", recv.size()); });
    SEQPAR_MPI_TRY(MPI_Reduce_scatter_block(send.data(), recv.data(), static_cast<int>(recv.size()),
                                            detail::mpi_type<T>(), detail::mpi_sum<T>(), comm_));
  }

  //! Sums every rank's `send` into `recv`; recv may be send (in place).
  template <wire_type T>
  void all_reduce(std::span<const T> send, std::span<T> recv, stream_t) {
    scoped_rank attribute(rank_);
    agree([&] {
      detail::check_all_reduce(send, recv);
      detail::check_fits_int("send", send.size());
    });
    agree([&] { check_same_everywhere("send size", send.size()); });
    const void* in = send.data() == recv.data() ? MPI_IN_PLACE : send.data();
    SEQPAR_MPI_TRY(MPI_Allreduce(in, recv.data(), static_cast<int>(recv.size()), detail::mpi_type<T>(),
                                 detail::mpi_sum<T>(), comm_));
  }

  //! Every rank's `value`, in rank order: the group's control channel (one MPI_Allgather).
  std::vector<std::int64_t> all_gather_value(std::int64_t value, stream_t) {
    scoped_rank attribute(rank_);
    std::vector<std::int64_t> all(static_cast<std::size_t>(size_));
    SEQPAR_MPI_TRY(MPI_Allgather(&value, 1, MPI_INT64_T, all.data(), 1, MPI_INT64_T, comm_));
    return all;
  }

  //! Returns once every rank has called it.
  void barrier(stream_t) {
    scoped_rank attribute(rank_);
    SEQPAR_MPI_TRY(MPI_Barrier(comm_));
  }

  //! Collective: ranks with the same `color` (>= 0) form a new group, ranked by (key, old rank).
  mpi_communicator split(int color, int key) const {
    scoped_rank attribute(rank_);
    agree([&] { SEQPAR_EXPECTS(color >= 0, "color: expected a colour >= 0, got " << color); });
    MPI_Comm part;
    SEQPAR_MPI_TRY(MPI_Comm_split(comm_, color, key, &part));
    return mpi_communicator(part, adopt_tag{});
  }

 private:
  struct adopt_tag {};
  mpi_communicator(MPI_Comm owned, adopt_tag) : comm_(owned) { adopt_or_free(); }

  // Finishes constructing on comm_, which this object owns. A constructor that throws runs no
  // destructor, so on failure comm_ is freed here before the error propagates.
  void adopt_or_free() {
    try {
      adopt();
    } catch (...) {
      MPI_Comm_free(&comm_);
      throw;
    }
  }

  void adopt() {
    SEQPAR_MPI_TRY(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    SEQPAR_MPI_TRY(MPI_Comm_rank(comm_, &rank_));
    SEQPAR_MPI_TRY(MPI_Comm_size(comm_, &size_));
  }

  // Runs `step` and lets every rank learn whether all passed; the failing ranks rethrow their own
  // error, the others throw errc::peer_failed. Nothing has moved yet when this throws.
  template <class Step>
  void agree(Step&& step) const {
    std::exception_ptr failure;
    try {
      step();
    } catch (...) {
      failure = std::current_exception();
    }
    int ok = failure ? 0 : 1, all_ok = 0;
    SEQPAR_MPI_TRY(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm_));
    if (failure) std::rethrow_exception(failure);
    if (!all_ok) SEQPAR_FAIL(errc::peer_failed, "another rank rejected its arguments; nothing was moved");
  }

  void check_same_everywhere(const char* name, std::size_t value) const {
    std::uint64_t v = value, lo = 0, hi = 0;
    SEQPAR_MPI_TRY(MPI_Allreduce(&v, &lo, 1, MPI_UINT64_T, MPI_MIN, comm_));
    SEQPAR_MPI_TRY(MPI_Allreduce(&v, &hi, 1, MPI_UINT64_T, MPI_MAX, comm_));
    SEQPAR_EXPECTS(lo == hi, name << ": this rank passed " << value << ", others between " << lo << " and " << hi
                                  << "; expected the same on every rank");
  }

  static std::vector<int> to_int(const char* name, std::span<const std::size_t> values) {
    std::vector<int> out;
    for (std::size_t v : values) {
      detail::check_fits_int(name, v);
      out.push_back(static_cast<int>(v));
    }
    return out;
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 0;
};

static_assert(communicator<mpi_communicator>);

SEQPAR_NAMESPACE_END
