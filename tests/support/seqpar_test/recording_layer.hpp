//! @file recording_layer.hpp
//! A layer's whole device path recorded on the host: with the recording_launcher in its policy (its
//! kernels, its side stream, waits and zero fills), a recording_communicator as its group and a
//! recording_resource for its memory, a layer call runs nothing and logs, into one
//! stream_order_log, every kernel, message, allocation, free, zero fill and wait between its streams. One rank at a
//! time: the communicator moves no bytes, so the ranks need not run together, and each rank's log holds what that rank
//! enqueues. For the kernel-emulation tests only (the Ulysses pack kernels compile here as host code).
#pragma once

#include <seqpar_test/stream_recording.hpp>

#include <seqpar/comm/communicator.hpp>
#include <seqpar/memory_space.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/ring/ring_pass.hpp>
#include <seqpar/ulysses/detail/heads_pack_cuda.cuh>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace seqpar_test {

namespace pack = seqpar::detail::device;

//! True when `kernel` is exchange_copy_kernel for walk W (of any vector width and index type).
template <pack::walk W, class T>
bool walks(void (*kernel)(seqpar::detail::heads_geometry, seqpar::detail::segment_views<T>, T*, pack::row_walk)) {
  constexpr int wide = pack::vec16<T>;
  return kernel == &pack::exchange_copy_kernel<W, T, 1, std::int32_t> ||
         kernel == &pack::exchange_copy_kernel<W, T, 1, std::int64_t> ||
         kernel == &pack::exchange_copy_kernel<W, T, wide, std::int32_t> ||
         kernel == &pack::exchange_copy_kernel<W, T, wide, std::int64_t>;
}

//! The Ulysses exchange's copies: a pack reads the views' inputs and writes the seq-side (forward)
//! or heads-side (inverse) buffer, the forward unpack reads the heads-side buffer and writes the
//! outputs; the buffers' extents are the geometry's last displacements.
template <class T>
void log_launch(stream_order_log& log,
                void (*kernel)(seqpar::detail::heads_geometry, seqpar::detail::segment_views<T>, T*, pack::row_walk),
                cudaStream_t s, const std::string& who, const seqpar::detail::heads_geometry& g,
                const seqpar::detail::segment_views<T>& views, T* const& buffer, const pack::row_walk&) {
  const int P = g.seq.ranks;
  if (walks<pack::walk::heads_side_unpack>(kernel)) {
    log.read(std::span<const T>(buffer, static_cast<std::size_t>(g.heads_displ[P])), s, who);
    for (int t = 0; t < g.segments; ++t) log.write(views.out[t], s, who);
    return;
  }
  const bool seq_side = walks<pack::walk::seq_side_pack>(kernel);
  for (int t = 0; t < g.segments; ++t) log.read(views.in[t], s, who);
  log.write(std::span<T>(buffer, static_cast<std::size_t>(seq_side ? g.seq_displ[P] : g.heads_displ[P])), s, who);
}

//! The inverse unpack: reads the seq-side buffer, sums into the outputs.
template <class T>
void log_launch(stream_order_log& log,
                void (*)(seqpar::detail::heads_geometry, seqpar::detail::segment_views<T>, const T*, pack::row_walk),
                cudaStream_t s, const std::string& who, const seqpar::detail::heads_geometry& g,
                const seqpar::detail::segment_views<T>& views, const T* const& buffer, const pack::row_walk&) {
  log.read(std::span<const T>(buffer, static_cast<std::size_t>(g.seq_displ[g.seq.ranks])), s, who);
  for (int t = 0; t < g.segments; ++t) log.write(views.out[t], s, who);
}

//! The ring's element-wise steps: a copy reads its source and writes its destination.
template <class From, class To>
void log_element_wise(stream_order_log& log, const seqpar::detail::copy_elements<From, To>& op, std::int64_t,
                      cudaStream_t s, const std::string& who) {
  log.read(op.from, s, who);
  log.write(op.to, s, who);
}
//! The row dots read dO and O and write the dots.
template <class T>
void log_element_wise(stream_order_log& log, const seqpar::detail::row_dots_of<T>& op, std::int64_t, cudaStream_t s,
                      const std::string& who) {
  log.read(op.dout, s, who);
  log.read(op.o, s, who);
  log.write(op.dots, s, who);
}
//! A merge reads the partial and its lse and rewrites the running output and lse.
inline void log_element_wise(stream_order_log& log, const seqpar::merge_partial_rows& op, std::int64_t, cudaStream_t s,
                             const std::string& who) {
  log.read(op.o_part, s, who);
  log.read(op.lse_part, s, who);
  log.write(op.o_acc, s, who);
  log.write(op.lse_acc, s, who);
}

//! Rank `rank` of `size` over device memory that is host memory: each message logs the read of
//! what it sends and the write of what it receives, on the stream it is enqueued on, and moves
//! nothing. The group's control channel answers at once (every rank passed this rank's value).
class recording_communicator {
 public:
  using communicator_concept = seqpar::communicator_tag;  //!< opts in

  //! Rank `rank` of `size`, logging into `log`.
  recording_communicator(std::shared_ptr<stream_order_log> log, int rank, int size)
      : log_(std::move(log)), rank_(rank), size_(size) {}

  int rank() const { return rank_; }                                            //!< this rank
  int size() const { return size_; }                                            //!< P
  seqpar::memory_space memory() const { return seqpar::memory_space::device; }  //!< what the layers see
  //! Every rank's value: this rank's, P times (no rank runs beside it to differ).
  std::vector<std::int64_t> all_gather_value(std::int64_t value, cudaStream_t) const {
    return std::vector<std::int64_t>(static_cast<std::size_t>(size_), value);
  }

  //! Logs the exchange of `count` elements with each peer.
  template <seqpar::wire_type T>
  void all_to_all(std::span<const T> send, std::span<T> recv, std::size_t count, cudaStream_t s) {
    message(send.first(std::min(send.size(), count * size_)), recv.first(std::min(recv.size(), count * size_)), s,
            "all_to_all");
  }
  //! Logs each peer's part of the exchange, as the counts and displacements say.
  template <seqpar::wire_type T>
  void all_to_all_v(std::span<const T> send, std::span<const std::size_t> send_counts,
                    std::span<const std::size_t> send_displs, std::span<T> recv,
                    std::span<const std::size_t> recv_counts, std::span<const std::size_t> recv_displs,
                    cudaStream_t s) {
    const std::string who = next("all_to_all_v", s);
    for (std::size_t j = 0; j < send_counts.size(); ++j)
      log_->read(send.subspan(send_displs[j], send_counts[j]), s, who);
    for (std::size_t j = 0; j < recv_counts.size(); ++j)
      log_->write(recv.subspan(recv_displs[j], recv_counts[j]), s, who);
  }
  //! Logs the send to `dest` and the receive from `source` (no_rank: none).
  template <seqpar::wire_type T>
  void neighbor_exchange(std::span<const T> send, int dest, std::span<T> recv, int source, cudaStream_t s) {
    message(dest == seqpar::no_rank ? std::span<const T>() : send, source == seqpar::no_rank ? std::span<T>() : recv, s,
            "neighbor_exchange");
  }
  //! Logs the gather.
  template <seqpar::wire_type T>
  void all_gather(std::span<const T> send, std::span<T> recv, cudaStream_t s) {
    message(send, recv, s, "all_gather");
  }
  //! Logs the reduction.
  template <seqpar::wire_type T>
  void reduce_scatter(std::span<const T> send, std::span<T> recv, cudaStream_t s) {
    message(send, recv, s, "reduce_scatter");
  }
  //! Logs the reduction.
  template <seqpar::wire_type T>
  void all_reduce(std::span<const T> send, std::span<T> recv, cudaStream_t s) {
    message(send, recv, s, "all_reduce");
  }
  //! Touches no memory.
  void barrier(cudaStream_t) {}
  //! Not recorded: a sub-group needs every rank's color at once.
  recording_communicator split(int, int) const {
    throw std::logic_error("recording_communicator: split needs the whole group, which a recording of one rank lacks");
  }

 private:
  std::string next(const char* what, cudaStream_t s) {
    return std::string(what) + " " + std::to_string(++messages_) + " (" + log_->next_launch(s) + ")";
  }
  template <class T>
  void message(std::span<const T> send, std::span<T> recv, cudaStream_t s, const char* what) {
    const std::string who = next(what, s);
    log_->read(send, s, who);
    log_->write(recv, s, who);
  }

  std::shared_ptr<stream_order_log> log_;
  int rank_, size_;
  int messages_ = 0;
};

static_assert(seqpar::communicator<recording_communicator>);

//! A named view of a layer call.
template <class T>
using named_view = std::pair<seqpar::tensor_view<T>, std::string>;

//! A layer's forward and backward on `stream`, recorded as a training step uses them: the inputs
//! written first by their producers, outputs[0] (o) read after forward(), the gradients (the other
//! outputs) after backward(context), then the inputs written anew by the next step.
template <class T, class Forward, class Backward>
void record_step(stream_order_log& log, cudaStream_t stream, const std::vector<named_view<const T>>& inputs,
                 const std::vector<named_view<T>>& outputs, Forward&& forward, Backward&& backward) {
  for (const auto& [view, name] : inputs) {
    log.name(view, name);
    log.write(view, stream, name + "'s producer");
  }
  for (const auto& [view, name] : outputs) log.name(view, name);
  auto saved = forward();
  log.read(outputs[0].first, stream, outputs[0].second + "'s consumer");
  backward(saved);
  for (std::size_t i = 1; i < outputs.size(); ++i)
    log.read(outputs[i].first, stream, outputs[i].second + "'s consumer");
  for (const auto& [view, name] : inputs) log.write(view, stream, "the next step's " + name);
}

//! Memory from the log: plain allocations outside stream order, scratch in the order of its stream.
struct recording_resource {
  std::shared_ptr<stream_order_log> log;  //!< shared by copies

  //! `bytes` bytes, ready for every stream.
  void* allocate(std::size_t bytes, seqpar::memory_space) const { return log->allocate_unordered(floats(bytes), 0.0f); }
  //! Frees after every stream's work.
  void deallocate(void* p, std::size_t, seqpar::memory_space) const { log->free_unordered(p); }
  //! `bytes` bytes for the work ordered on `stream` from now on.
  void* allocate_async(std::size_t bytes, seqpar::memory_space, cudaStream_t stream) const {
    return log->allocate(floats(bytes), stream, 0.0f);
  }
  //! Frees once the work on `stream` so far is done.
  void deallocate_async(void* p, std::size_t, seqpar::memory_space, cudaStream_t stream) const { log->free(p, stream); }

 private:
  static std::int64_t floats(std::size_t bytes) { return static_cast<std::int64_t>((bytes + 3) / 4); }
};

}  // namespace seqpar_test
