//! @file communicator.hpp
//! The communicator concept: what a type must offer to move data among the P ranks of a group.
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/memory_space.hpp>
#include <seqpar/types.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

SEQPAR_NAMESPACE_BEGIN

//! Peer value for neighbor_exchange meaning "no send" or "no receive".
inline constexpr int no_rank = -1;

//! Tag a communicator names as `using communicator_concept = seqpar::communicator_tag;` to opt in.
struct communicator_tag {};

//! Types every communicator moves: the element types plus double, int32 and int64 (sums included).
template <class T>
concept wire_type = element<T> || std::same_as<T, double> || std::same_as<T, std::int32_t> ||
                    std::same_as<T, std::int64_t>;

namespace detail {
template <class C>
concept opts_into_communicator = std::same_as<typename C::communicator_concept, communicator_tag>;

template <class C>
concept reports_group = requires(const C& c) {
  { c.rank() } -> std::same_as<int>;
  { c.size() } -> std::same_as<int>;
  { c.memory() } -> std::same_as<memory_space>;
};

template <class C>
concept has_all_to_all = requires(C& c, std::span<const float> in, std::span<float> out, std::size_t n,
                                  stream_t s) { c.all_to_all(in, out, n, s); };

template <class C>
concept has_all_to_all_v = requires(C& c, std::span<const float> in, std::span<float> out,
                                    std::span<const std::size_t> v, stream_t s) {
  c.all_to_all_v(in, v, v, out, v, v, s);
};

template <class C>
concept has_neighbor_exchange = requires(C& c, std::span<const float> in, std::span<float> out, int peer,
                                         stream_t s) { c.neighbor_exchange(in, peer, out, peer, s); };

template <class C>
concept has_gather_and_reductions = requires(C& c, std::span<const float> in, std::span<float> out,
                                             stream_t s) {
  c.all_gather(in, out, s);
  c.reduce_scatter(in, out, s);
  c.all_reduce(in, out, s);
  c.barrier(s);
};

template <class C>
concept has_split = requires(const C& c, int color, int key) {
  { c.split(color, key) } -> std::same_as<C>;
};
}  // namespace detail

//! A type that moves data among P ranks. Each requirement is its own named concept so that a type
//! that falls short is told which part is missing:
//! - opts in with `using communicator_concept = seqpar::communicator_tag;`
//! - rank(), size() (int) and memory() (memory_space);
//! - all_to_all(send, recv, count_per_peer, stream), all_to_all_v(send, send_counts, send_displs,
//!   recv, recv_counts, recv_displs, stream), neighbor_exchange(send, dest, recv, source, stream),
//!   all_gather, reduce_scatter, all_reduce (sum), each (send, recv, stream), and barrier(stream),
//!   all templated on the wire_type element;
//! - split(color, key) returning a communicator of the same type.
template <class C>
concept communicator = detail::opts_into_communicator<C> && detail::reports_group<C> &&
                       detail::has_all_to_all<C> && detail::has_all_to_all_v<C> &&
                       detail::has_neighbor_exchange<C> && detail::has_gather_and_reductions<C> &&
                       detail::has_split<C>;

//! A communicator that works on device memory whatever it was built with (NCCL) says so as
//! `static constexpr bool device_only = true;`: code that needs nvcc for device memory then fails
//! to compile in a file a host compiler builds, instead of throwing at run time.
template <class C>
concept device_only_communicator = requires {
  requires C::device_only;
};

namespace detail {
//! True when this file's compiler can run seqpar's work in Comm's memory: device memory needs the
//! calling file compiled by nvcc (the kernels are CUDA). Communicators that choose their memory at
//! run time (in_process_communicator) are checked when they are used.
template <class Comm>
inline constexpr bool compiler_serves = SEQPAR_CUDA_COMPILER || !device_only_communicator<Comm>;
}  // namespace detail

SEQPAR_NAMESPACE_END
