// The counting decorator: bytes per peer per call, checked against the volumes each operation must
// send and against what the peers say they received.
#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/in_process.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

using counting = seqpar::counting_communicator<seqpar::in_process_communicator>;

namespace {
// Runs `fn` on P counting ranks and returns each rank's records.
template <class Fn>
std::vector<std::vector<seqpar::traffic_record>> counted(int P, Fn&& fn) {
  std::vector<std::vector<seqpar::traffic_record>> logs(P);
  seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& inner) {
    counting comm(inner);
    fn(comm);
    logs[comm.rank()] = comm.records();
  });
  return logs;
}
}  // namespace

TEST_CASE("counting: all_to_all_v bytes per peer equal the counts, and match what each peer received") {
  const int P = 4;
  auto send_count = [](int src, int dst) { return static_cast<std::size_t>(src * 3 + dst + 1); };
  std::vector<std::vector<std::size_t>> received(P, std::vector<std::size_t>(P));
  auto logs = counted(P, [&](counting& comm) {
    const int r = comm.rank();
    std::vector<std::size_t> sc(P), sd(P), rc(P), rd(P);
    std::size_t s_at = 0, r_at = 0;
    for (int j = 0; j < P; ++j) {
      sc[j] = send_count(r, j), sd[j] = s_at, s_at += sc[j];
      rc[j] = send_count(j, r), rd[j] = r_at, r_at += rc[j];
    }
    // Each block carries its (source, destination) tag; a peer counts the bytes that arrived with it.
    auto tag = [&](int src, int dst) { return __float2half(static_cast<float>(src * P + dst + 1)); };
    std::vector<__half> send(s_at), recv(r_at, __float2half(0.0f));
    for (int j = 0; j < P; ++j) std::fill_n(send.begin() + sd[j], sc[j], tag(r, j));
    comm.all_to_all_v<__half>(send, sc, sd, recv, rc, rd, nullptr);
    for (int j = 0; j < P; ++j)
      received[r][j] = sizeof(__half) * std::count_if(recv.begin() + rd[j], recv.begin() + rd[j] + rc[j], [&](__half x) {
                         return __half2float(x) == __half2float(tag(j, r));
                       });
  });
  for (int r = 0; r < P; ++r) {
    REQUIRE(logs[r].size() == 1);
    CHECK(logs[r][0].operation == "all_to_all_v");
    for (int j = 0; j < P; ++j) {
      CHECK(logs[r][0].bytes_to_peer[j] == (j == r ? 0 : send_count(r, j) * 2));
      if (j != r) CHECK(logs[r][0].bytes_to_peer[j] == received[j][r]);
    }
  }
}

TEST_CASE("counting: every operation's volume, for P = 3 and 8") {
  for (int P : {3, 8}) {
    CAPTURE(P);
    const std::size_t n = 10;
    auto logs = counted(P, [&](counting& comm) {
      const int r = comm.rank();
      std::vector<float> a(n * P), b(n * P), small(n);
      comm.all_to_all<float>(a, b, n, nullptr);
      comm.neighbor_exchange<float>(std::span<const float>(small).first(r + 1), (r + 1) % P,
                                    std::span<float>(b).first((r + P - 1) % P + 1), (r + P - 1) % P, nullptr);
      comm.all_gather<float>(small, b, nullptr);
      comm.reduce_scatter<float>(a, small, nullptr);
      comm.all_reduce<float>(small, small, nullptr);
      comm.barrier(nullptr);
      counting part = comm.split(0, 0);
      CHECK(part.records().empty());
    });
    // all_reduce of n elements over P near-equal blocks: block j has n / P (+1 for j < n % P).
    auto block = [&](int j) { return n / P + (static_cast<std::size_t>(j) < n % P ? 1 : 0); };
    for (int r = 0; r < P; ++r) {
      REQUIRE(logs[r].size() == 6);
      const char* names[] = {"all_to_all", "neighbor_exchange", "all_gather", "reduce_scatter", "all_reduce", "barrier"};
      for (int k = 0; k < 6; ++k) CHECK(logs[r][k].operation == names[k]);
      for (int j = 0; j < P; ++j) {
        CAPTURE(r);
        CAPTURE(j);
        const bool self = j == r;
        CHECK(logs[r][0].bytes_to_peer[j] == (self ? 0 : n * 4));
        CHECK(logs[r][1].bytes_to_peer[j] == (j == (r + 1) % P && !self ? (r + 1) * 4 : 0));
        CHECK(logs[r][2].bytes_to_peer[j] == (self ? 0 : n * 4));
        CHECK(logs[r][3].bytes_to_peer[j] == (self ? 0 : n * 4));
        CHECK(logs[r][4].bytes_to_peer[j] == (self ? 0 : (block(j) + block(r)) * 4));
        CHECK(logs[r][5].bytes_to_peer[j] == 0);
      }
      CHECK(logs[r][0].total() == (P - 1) * n * 4);
    }
  }
}

TEST_CASE("counting: a rejected call is not recorded") {
  std::vector<std::size_t> totals(2);
  seqpar::run_in_process(2, seqpar::memory_space::host, [&](seqpar::in_process_communicator& inner) {
    counting comm(inner);
    std::vector<float> send(4), recv(3);
    CHECK_THROWS_AS(comm.all_to_all<float>(send, recv, 2, nullptr), seqpar::error);
    totals[comm.rank()] = comm.records().size() + comm.bytes_sent();
  });
  CHECK(totals == std::vector<std::size_t>{0, 0});
}

TEST_CASE("counting: bytes_sent_to rejects a peer outside the group, with or without records") {
  const int P = 2;
  std::vector<std::vector<std::string>> messages(P);
  std::vector<std::size_t> to_peer(P);
  seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& inner) {
    counting comm(inner);
    const int r = comm.rank();
    auto try_peer = [&](int peer) {
      try {
        (void)comm.bytes_sent_to(peer);
        messages[r].push_back("no error");
      } catch (const seqpar::error& e) {
        messages[r].push_back(e.code() == seqpar::errc::invalid_argument ? e.what() : "wrong code");
      }
    };
    try_peer(P);  // nothing recorded yet
    std::vector<float> send(2 * P), recv(2 * P);
    comm.all_to_all<float>(send, recv, 2, nullptr);
    try_peer(-1);
    try_peer(P);
    to_peer[r] = comm.bytes_sent_to(1 - r);
  });
  for (int r = 0; r < P; ++r) {
    CAPTURE(r);
    REQUIRE(messages[r].size() == 3);
    CHECK(messages[r][0].find("peer: expected a rank in [0, 2), got 2") != std::string::npos);
    CHECK(messages[r][1].find("peer: expected a rank in [0, 2), got -1") != std::string::npos);
    CHECK(messages[r][2].find("peer: expected a rank in [0, 2), got 2") != std::string::npos);
    CHECK(to_peer[r] == 2 * sizeof(float));
  }
}
