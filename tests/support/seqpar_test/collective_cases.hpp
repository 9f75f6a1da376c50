//! @file collective_cases.hpp
//! Checks of every communicator operation on P in-process ranks, shared by the host tests and the
//! device tests (same cases, buffers in the other memory space). Each rank stores what it received;
//! the test thread compares it with what the senders' inputs say it must be.
#pragma once

#include <seqpar/comm/in_process.hpp>
#include <seqpar_test/buffers.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

namespace seqpar_test {

using seqpar::in_process_communicator;
using seqpar::memory_space;

//! The group sizes every operation is checked at.
inline const std::vector<int> group_sizes{1, 2, 3, 4, 8};

//! Compares a rank's result with the expectation, naming the case on failure.
template <class T>
void expect_bits(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  INFO(what);
  CHECK(got.size() == want.size());
  CHECK(first_mismatch(got, want) == -1);
}

// Elements rank `src` sends to rank `dst` in an all_to_all_v: uneven, some zero, own block too.
inline std::size_t uneven_count(int src, int dst) { return static_cast<std::size_t>((3 * src + 5 * dst) % 4 + (src == dst)); }

template <class T>
void check_all_to_all(int P, memory_space where) {
  const std::size_t count = 3;
  std::vector<std::vector<T>> got(P);
  seqpar::run_in_process(P, where, [&](in_process_communicator& comm) {
    const int r = comm.rank();
    std::vector<T> in(P * count);
    for (int j = 0; j < P; ++j)
      for (std::size_t i = 0; i < count; ++i) in[j * count + i] = tagged<T>(key_of(r, j, i));
    buffer<T> send(where, in), recv(where, std::vector<T>(P * count, poison<T>()));
    rank_stream stream(where);
    comm.all_to_all(send.cspan(), recv.span(), count, stream);
    stream.sync();
    got[r] = recv.values();
  });
  for (int r = 0; r < P; ++r) {
    std::vector<T> want(P * count);
    for (int j = 0; j < P; ++j)
      for (std::size_t i = 0; i < count; ++i) want[j * count + i] = tagged<T>(key_of(j, r, i));
    expect_bits(got[r], want, "all_to_all P=" + std::to_string(P) + " rank " + std::to_string(r));
  }
}

template <class T>
void check_all_to_all_v(int P, memory_space where) {
  // Receive blocks are laid out in reverse rank order with a one-element gap before each, so a
  // backend that ignores displacements, or writes past a block, is caught by the poison in the gaps.
  auto recv_layout = [&](int r, std::vector<std::size_t>& counts, std::vector<std::size_t>& displs) {
    counts.assign(P, 0), displs.assign(P, 0);
    std::size_t at = 0;
    for (int j = P - 1; j >= 0; --j) {
      at += 1;
      counts[j] = uneven_count(j, r), displs[j] = at;
      at += counts[j];
    }
    return at + 1;
  };
  std::vector<std::vector<T>> got(P);
  seqpar::run_in_process(P, where, [&](in_process_communicator& comm) {
    const int r = comm.rank();
    std::vector<std::size_t> sc(P), sd(P), rc, rd;
    std::vector<T> in;
    for (int j = 0; j < P; ++j) {
      sc[j] = uneven_count(r, j), sd[j] = in.size();
      for (std::size_t i = 0; i < sc[j]; ++i) in.push_back(tagged<T>(key_of(r, j, i)));
    }
    const std::size_t recv_size = recv_layout(r, rc, rd);
    buffer<T> send(where, in), recv(where, std::vector<T>(recv_size, poison<T>()));
    rank_stream stream(where);
    comm.all_to_all_v(send.cspan(), std::span<const std::size_t>(sc), sd, recv.span(), rc, rd, stream);
    stream.sync();
    got[r] = recv.values();
  });
  for (int r = 0; r < P; ++r) {
    std::vector<std::size_t> rc, rd;
    std::vector<T> want(recv_layout(r, rc, rd), poison<T>());
    for (int j = 0; j < P; ++j)
      for (std::size_t i = 0; i < rc[j]; ++i) want[rd[j] + i] = tagged<T>(key_of(j, r, i));
    expect_bits(got[r], want, "all_to_all_v P=" + std::to_string(P) + " rank " + std::to_string(r));
  }
}

template <class T>
void check_neighbor_exchange(int P, memory_space where, bool ring) {
  // A ring (r -> r+1 mod P) or an open chain where rank 0 receives nothing and rank P-1 sends nothing.
  const std::size_t n = 5;
  auto dest_of = [&](int r) { return ring ? (r + 1) % P : (r + 1 < P ? r + 1 : seqpar::no_rank); };
  auto source_of = [&](int r) { return ring ? (r + P - 1) % P : (r > 0 ? r - 1 : seqpar::no_rank); };
  std::vector<std::vector<T>> got(P);
  seqpar::run_in_process(P, where, [&](in_process_communicator& comm) {
    const int r = comm.rank();
    std::vector<T> in(n);
    for (std::size_t i = 0; i < n; ++i) in[i] = tagged<T>(key_of(r, 7, i));
    buffer<T> send(where, in), recv(where, std::vector<T>(n, poison<T>()));
    rank_stream stream(where);
    comm.neighbor_exchange(send.cspan(), dest_of(r), recv.span(), source_of(r), stream);
    stream.sync();
    got[r] = recv.values();
  });
  for (int r = 0; r < P; ++r) {
    std::vector<T> want(n, poison<T>());
    if (const int s = source_of(r); s != seqpar::no_rank)
      for (std::size_t i = 0; i < n; ++i) want[i] = tagged<T>(key_of(s, 7, i));
    expect_bits(got[r], want, std::string(ring ? "ring" : "chain") + " P=" + std::to_string(P) + " rank " +
                                  std::to_string(r));
  }
}

template <class T>
void check_all_gather(int P, memory_space where) {
  const std::size_t n = 4;
  std::vector<std::vector<T>> got(P);
  seqpar::run_in_process(P, where, [&](in_process_communicator& comm) {
    const int r = comm.rank();
    std::vector<T> in(n);
    for (std::size_t i = 0; i < n; ++i) in[i] = tagged<T>(key_of(r, 9, i));
    buffer<T> send(where, in), recv(where, std::vector<T>(P * n, poison<T>()));
    rank_stream stream(where);
    comm.all_gather(send.cspan(), recv.span(), stream);
    stream.sync();
    got[r] = recv.values();
  });
  std::vector<T> want(P * n);
  for (int j = 0; j < P; ++j)
    for (std::size_t i = 0; i < n; ++i) want[j * n + i] = tagged<T>(key_of(j, 9, i));
  for (int r = 0; r < P; ++r) expect_bits(got[r], want, "all_gather P=" + std::to_string(P) + " rank " + std::to_string(r));
}

// Inputs of the reductions: small integers, so that every partial sum is exact in every type and
// the result must equal the double-precision reference exactly.
template <class T>
std::vector<std::vector<int>> reduction_inputs(int P, std::size_t n) {
  std::vector<std::vector<int>> in(P, std::vector<int>(n));
  for (auto& rank_in : in)
    for (int& v : rank_in) v = random_int(-15, 15);
  return in;
}

template <class T>
std::vector<T> to_wire(const std::vector<int>& v) {
  std::vector<T> out;
  for (int x : v) out.push_back(exact<T>(x));
  return out;
}

template <class T>
void check_reduce_scatter(int P, memory_space where) {
  const std::size_t n = 6;
  const auto in = reduction_inputs<T>(P, n * P);
  std::vector<std::vector<T>> got(P);
  seqpar::run_in_process(P, where, [&](in_process_communicator& comm) {
    const int r = comm.rank();
    buffer<T> send(where, to_wire<T>(in[r])), recv(where, std::vector<T>(n, poison<T>()));
    rank_stream stream(where);
    comm.reduce_scatter(send.cspan(), recv.span(), stream);
    stream.sync();
    got[r] = recv.values();
  });
  for (int r = 0; r < P; ++r)
    for (std::size_t i = 0; i < n; ++i) {
      double want = 0;
      for (int j = 0; j < P; ++j) want += in[j][r * n + i];
      CHECK(as_double(got[r][i]) == want);
    }
}

template <class T>
void check_all_reduce(int P, memory_space where, bool in_place) {
  const std::size_t n = 11;
  const auto in = reduction_inputs<T>(P, n);
  std::vector<std::vector<T>> got(P);
  seqpar::run_in_process(P, where, [&](in_process_communicator& comm) {
    const int r = comm.rank();
    buffer<T> send(where, to_wire<T>(in[r])), recv(where, std::vector<T>(n, poison<T>()));
    rank_stream stream(where);
    if (in_place) comm.all_reduce(send.cspan(), send.span(), stream);
    else comm.all_reduce(send.cspan(), recv.span(), stream);
    stream.sync();
    got[r] = in_place ? send.values() : recv.values();
  });
  for (int r = 0; r < P; ++r)
    for (std::size_t i = 0; i < n; ++i) {
      double want = 0;
      for (int j = 0; j < P; ++j) want += in[j][i];
      CHECK(as_double(got[r][i]) == want);
    }
}

//! Runs every operation at every group size in one memory space, for element type T.
template <class T>
void check_every_operation(memory_space where) {
  for (int P : group_sizes) {
    CAPTURE(P);
    check_all_to_all<T>(P, where);
    check_all_to_all_v<T>(P, where);
    check_neighbor_exchange<T>(P, where, true);
    check_neighbor_exchange<T>(P, where, false);
    check_all_gather<T>(P, where);
    check_reduce_scatter<T>(P, where);
    check_all_reduce<T>(P, where, false);
    check_all_reduce<T>(P, where, true);
  }
}

//! Splits 8 ranks by colour r % 3 with keys that reverse the order, and checks each subgroup's
//! size, the new ranks, and an all_gather inside it (which must list the members by key).
inline void check_split(memory_space where) {
  const int P = 8;
  std::vector<std::vector<int>> gathered(P);
  std::vector<int> new_rank(P), new_size(P);
  seqpar::run_in_process(P, where, [&](in_process_communicator& comm) {
    const int r = comm.rank();
    auto part = comm.split(r % 3, -r);
    new_rank[r] = part.rank(), new_size[r] = part.size();
    buffer<std::int32_t> send(where, {r}), recv(where, std::vector<std::int32_t>(part.size(), -1));
    rank_stream stream(where);
    part.all_gather(send.cspan(), recv.span(), stream);
    stream.sync();
    auto v = recv.values();
    gathered[r].assign(v.begin(), v.end());
  });
  for (int r = 0; r < P; ++r) {
    std::vector<int> members;
    for (int j = P - 1; j >= 0; --j)
      if (j % 3 == r % 3) members.push_back(j);
    CHECK(new_size[r] == static_cast<int>(members.size()));
    CHECK(new_rank[r] == static_cast<int>(std::find(members.begin(), members.end(), r) - members.begin()));
    CHECK(gathered[r] == members);
  }
}

}  // namespace seqpar_test
