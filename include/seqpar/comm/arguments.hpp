//! @file arguments.hpp
//! Argument checks shared by every communicator backend, run before any byte moves.
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <utility>
#include <vector>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! Throws unless `buf` is non-null whenever it holds elements.
template <class T>
void check_not_null(const char* name, std::span<T> buf) {
  SEQPAR_EXPECTS(buf.data() != nullptr || buf.empty(),
                 name << ": null pointer with " << buf.size() << " elements; expected a valid buffer");
}

//! Throws unless `buf` holds exactly `expected` elements; `how` explains where `expected` comes from.
template <class T>
void check_size(const char* name, std::span<T> buf, std::size_t expected, const char* how) {
  check_not_null(name, buf);
  SEQPAR_EXPECTS(buf.size() == expected, name << ": expected " << how << " = " << expected
                                              << " elements, got " << buf.size());
}

//! Throws when the byte ranges of `a` and `b` overlap (a collective must not overwrite its input).
template <class T, class U>
void check_disjoint(const char* a_name, std::span<T> a, const char* b_name, std::span<U> b) {
  if (a.empty() || b.empty()) return;
  const auto a0 = reinterpret_cast<std::uintptr_t>(a.data()), a1 = a0 + a.size_bytes();
  const auto b0 = reinterpret_cast<std::uintptr_t>(b.data()), b1 = b0 + b.size_bytes();
  SEQPAR_EXPECTS(a1 <= b0 || b1 <= a0,
                 b_name << " overlaps " << a_name << "; expected separate buffers for this operation");
}

//! Throws unless `peer` is a rank of a group of `size` ranks or no_rank (-1).
inline void check_peer(const char* name, int peer, int size) {
  SEQPAR_EXPECTS(peer >= -1 && peer < size,
                 name << ": expected a rank in [0, " << size << ") or no_rank (-1), got " << peer);
}

//! Checks per-peer counts and displacements of an all_to_all_v side: both hold `size` entries,
//! every block [displs[j], displs[j] + counts[j]) lies inside `buf` and, when `disjoint` (the
//! receiving side), no two blocks overlap.
template <class T>
void check_blocks(const char* buf_name, std::span<T> buf, const char* counts_name,
                  std::span<const std::size_t> counts, const char* displs_name,
                  std::span<const std::size_t> displs, int size, bool disjoint) {
  check_not_null(buf_name, buf);
  SEQPAR_EXPECTS(counts.size() == static_cast<std::size_t>(size),
                 counts_name << ": expected one count per rank = " << size << " entries, got " << counts.size());
  SEQPAR_EXPECTS(displs.size() == static_cast<std::size_t>(size),
                 displs_name << ": expected one displacement per rank = " << size << " entries, got "
                             << displs.size());
  std::vector<std::pair<std::size_t, std::size_t>> blocks;
  for (int j = 0; j < size; ++j) {
    const std::size_t c = counts[j], d = displs[j];
    SEQPAR_EXPECTS(d <= buf.size() && c <= buf.size() - d,
                   counts_name << "[" << j << "] + " << displs_name << "[" << j << "] = " << c << " + " << d
                               << " elements; expected at most " << buf_name << "'s " << buf.size());
    if (c > 0) blocks.emplace_back(d, d + c);
  }
  if (!disjoint) return;
  std::sort(blocks.begin(), blocks.end());
  for (std::size_t i = 1; i < blocks.size(); ++i)
    SEQPAR_EXPECTS(blocks[i].first >= blocks[i - 1].second,
                   buf_name << ": blocks [" << blocks[i - 1].first << ", " << blocks[i - 1].second << ") and ["
                            << blocks[i].first << ", " << blocks[i].second
                            << ") overlap; expected disjoint receive blocks");
}

//! Throws unless `count` fits the int counts of an API such as MPI.
inline void check_fits_int(const char* name, std::size_t count) {
  SEQPAR_EXPECTS(count <= static_cast<std::size_t>(std::numeric_limits<int>::max()),
                 name << ": " << count << " exceeds the backend's limit of "
                      << std::numeric_limits<int>::max() << " per call");
}

//! The checks of all_to_all: send and recv hold size * count elements each, and do not overlap.
template <class T>
void check_all_to_all(std::span<const T> send, std::span<T> recv, std::size_t count, int size) {
  SEQPAR_EXPECTS(size <= 0 || count <= std::numeric_limits<std::size_t>::max() / static_cast<std::size_t>(size),
                 "count: " << count << " elements per rank times a group of " << size
                           << " overflows; expected a count that fits the buffers");
  check_size("send", send, count * size, "group size * count");
  check_size("recv", recv, count * size, "group size * count");
  check_disjoint("send", send, "recv", recv);
}

//! The checks of all_to_all_v, as check_blocks for each side plus non-overlap of send and recv.
template <class T>
void check_all_to_all_v(std::span<const T> send, std::span<const std::size_t> send_counts,
                        std::span<const std::size_t> send_displs, std::span<T> recv,
                        std::span<const std::size_t> recv_counts, std::span<const std::size_t> recv_displs,
                        int size) {
  check_blocks("send", send, "send_counts", send_counts, "send_displs", send_displs, size, false);
  check_blocks("recv", recv, "recv_counts", recv_counts, "recv_displs", recv_displs, size, true);
  check_disjoint("send", send, "recv", recv);
}

//! The checks of neighbor_exchange: valid peers, non-null buffers, no overlap.
template <class T>
void check_neighbor_exchange(std::span<const T> send, int dest, std::span<T> recv, int source, int size) {
  check_peer("dest", dest, size);
  check_peer("source", source, size);
  check_not_null("send", send);
  check_not_null("recv", recv);
  check_disjoint("send", send, "recv", recv);
}

//! One rank's side of a neighbor_exchange, as the cross-rank checks see it.
struct neighbor_side {
  int dest;                //!< the rank it sends to, or no_rank (-1)
  int source;              //!< the rank it receives from, or no_rank (-1)
  std::size_t send_elems;  //!< the elements it sends
};

//! The cross-rank checks of neighbor_exchange on rank `rank`, once every rank's side is known
//! (`side_of(j)` returns rank j's neighbor_side): rank `source` sends to this rank exactly
//! `recv_elems` elements, and rank `dest` receives from this rank.
template <class SideOf>
void check_neighbor_pairing(int rank, int dest, int source, std::size_t recv_elems, SideOf&& side_of) {
  if (source != -1) {
    const neighbor_side s = side_of(source);
    SEQPAR_EXPECTS(s.dest == rank, "source: rank " << source << " sends to " << s.dest
                                                   << "; expected it to send to this rank " << rank);
    SEQPAR_EXPECTS(s.send_elems == recv_elems, "recv: expected rank " << source << "'s send size = " << s.send_elems
                                                                      << " elements, got " << recv_elems);
  }
  if (dest != -1) {
    const neighbor_side d = side_of(dest);
    SEQPAR_EXPECTS(d.source == rank, "dest: rank " << dest << " receives from " << d.source
                                                   << "; expected it to receive from this rank " << rank);
  }
}

//! The checks of all_gather: recv holds size * send.size() elements.
template <class T>
void check_all_gather(std::span<const T> send, std::span<T> recv, int size) {
  check_not_null("send", send);
  check_size("recv", recv, send.size() * size, "group size * send elements");
  check_disjoint("send", send, "recv", recv);
}

//! The checks of reduce_scatter: send holds size * recv.size() elements.
template <class T>
void check_reduce_scatter(std::span<const T> send, std::span<T> recv, int size) {
  check_not_null("recv", recv);
  check_size("send", send, recv.size() * size, "group size * recv elements");
  check_disjoint("send", send, "recv", recv);
}

//! The checks of all_reduce: equal sizes; recv is either send itself (in place) or separate.
template <class T>
void check_all_reduce(std::span<const T> send, std::span<T> recv) {
  check_not_null("send", send);
  check_size("recv", recv, send.size(), "send elements");
  if (static_cast<const void*>(send.data()) != static_cast<const void*>(recv.data()))
    check_disjoint("send", send, "recv", recv);
}

}  // namespace detail
SEQPAR_NAMESPACE_END
