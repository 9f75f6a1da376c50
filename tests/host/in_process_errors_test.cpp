// Bad input to the in-process backend: the rank at fault throws an error naming the argument and the
// expected value, every other rank throws peer_failed, and no receive buffer is touched.
#include <seqpar/comm/in_process.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

using seqpar::errc;
using seqpar::in_process_communicator;
using seqpar_test::poison;

namespace {
struct outcome {
  std::optional<errc> code;
  std::string what;
  int rank = -2;
  bool recv_untouched = false;
};

// Runs `op(comm, recv)` on P ranks; each rank's recv starts poisoned and must stay so.
std::vector<outcome> run_bad(int P, std::size_t recv_size,
                             const std::function<void(in_process_communicator&, std::vector<float>&)>& op) {
  std::vector<outcome> out(P);
  seqpar::run_in_process(P, seqpar::memory_space::host, [&](in_process_communicator& comm) {
    std::vector<float> recv(recv_size, poison<float>());
    auto& o = out[comm.rank()];
    try {
      op(comm, recv);
    } catch (const seqpar::error& e) {
      o.code = e.code(), o.what = e.what(), o.rank = e.rank();
    }
    o.recv_untouched = true;
    for (float x : recv) o.recv_untouched = o.recv_untouched && seqpar_test::same_bits(x, poison<float>());
  });
  return out;
}

// Exactly `culprit` reports `message` as invalid_argument; the others report peer_failed; nothing moved.
void expect_rejected(const std::vector<outcome>& out, int culprit, const std::string& message) {
  for (int r = 0; r < static_cast<int>(out.size()); ++r) {
    CAPTURE(r);
    CHECK(out[r].recv_untouched);
    REQUIRE(out[r].code.has_value());
    CHECK(out[r].rank == r);
    if (r == culprit) {
      CHECK(*out[r].code == errc::invalid_argument);
      CHECK(out[r].what.find(message) != std::string::npos);
    } else {
      CHECK(*out[r].code == errc::peer_failed);
      CHECK(out[r].what.find("rank(s) " + std::to_string(culprit) + " rejected") != std::string::npos);
    }
  }
}

std::vector<float> filled(std::size_t n) { return std::vector<float>(n, 1.0f); }
}  // namespace

TEST_CASE("all_to_all: a send buffer of the wrong size on one rank") {
  auto out = run_bad(4, 8, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(c.rank() == 2 ? 7 : 8);
    c.all_to_all<float>(send, recv, 2, nullptr);
  });
  expect_rejected(out, 2, "send: expected group size * count = 8 elements, got 7");
}

TEST_CASE("all_to_all: a count whose product with the group size wraps around") {
  // 2^63 * 2 wraps to 0, which empty buffers would match.
  auto out = run_bad(2, 4, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(4);
    if (c.rank() == 1)
      c.all_to_all<float>({}, std::span<float>(), std::size_t{1} << 63, nullptr);
    else
      c.all_to_all<float>(send, recv, 2, nullptr);
  });
  expect_rejected(out, 1, "count: 9223372036854775808 elements per rank times a group of 2 overflows");
}

TEST_CASE("all_to_all: ranks disagree on the count") {
  auto out = run_bad(3, 6, [](in_process_communicator& c, std::vector<float>& recv) {
    const std::size_t count = c.rank() == 1 ? 1 : 2;
    auto send = filled(3 * count);
    c.all_to_all<float>(send, std::span<float>(recv).first(3 * count), count, nullptr);
  });
  for (const auto& o : out) {
    CHECK(o.recv_untouched);
    REQUIRE(o.code.has_value());
  }
  CHECK(out[0].what.find("count: rank 1 passed 1, this rank 2; expected the same on every rank") != std::string::npos);
  CHECK(*out[0].code == errc::invalid_argument);
}

TEST_CASE("all_to_all_v: counts for a group of another size") {
  auto out = run_bad(4, 4, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(4);
    std::vector<std::size_t> ones(4, 1), displs{0, 1, 2, 3}, short_counts(3, 1);
    c.all_to_all_v<float>(send, c.rank() == 0 ? short_counts : ones, displs, recv, ones, displs, nullptr);
  });
  expect_rejected(out, 0, "send_counts: expected one count per rank = 4 entries, got 3");
}

TEST_CASE("all_to_all_v: a block that does not fit its buffer") {
  auto out = run_bad(2, 4, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(4);
    std::vector<std::size_t> counts{2, 2}, displs{0, 2}, bad_displs{0, 3};
    c.all_to_all_v<float>(send, counts, c.rank() == 1 ? bad_displs : displs, recv, counts, displs, nullptr);
  });
  expect_rejected(out, 1, "send_counts[1] + send_displs[1] = 2 + 3 elements; expected at most send's 4");
}

TEST_CASE("all_to_all_v: overlapping receive blocks would overwrite each other") {
  auto out = run_bad(2, 4, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(4);
    std::vector<std::size_t> counts{2, 2}, displs{0, 2}, overlapping{0, 1};
    c.all_to_all_v<float>(send, counts, displs, recv, counts, c.rank() == 0 ? overlapping : displs, nullptr);
  });
  expect_rejected(out, 0, "recv: blocks [0, 2) and [1, 3) overlap; expected disjoint receive blocks");
}

TEST_CASE("all_to_all_v: a receive count that differs from what the peer sends") {
  auto out = run_bad(3, 3, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(3);
    std::vector<std::size_t> counts{1, 1, 1}, displs{0, 1, 2}, wrong{1, 0, 1};
    c.all_to_all_v<float>(send, counts, displs, recv, c.rank() == 2 ? wrong : counts, displs, nullptr);
  });
  for (int r = 0; r < 3; ++r) CHECK(out[r].recv_untouched);
  CHECK(*out[2].code == errc::invalid_argument);
  CHECK(out[2].what.find("recv_counts[1] = 0; expected rank 1's send_counts[2] = 1") != std::string::npos);
  CHECK(*out[0].code == errc::peer_failed);
  CHECK(*out[1].code == errc::peer_failed);
}

TEST_CASE("a null pointer with a non-zero count") {
  auto out = run_bad(2, 4, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(4);
    std::span<const float> null_send(static_cast<const float*>(nullptr), 4);
    c.all_to_all<float>(c.rank() == 1 ? null_send : std::span<const float>(send), recv, 2, nullptr);
  });
  expect_rejected(out, 1, "send: null pointer with 4 elements; expected a valid buffer");
}

TEST_CASE("send and recv that overlap") {
  auto out = run_bad(2, 4, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(4);
    if (c.rank() == 0)
      c.all_gather<float>(std::span<const float>(recv).first(2), recv, nullptr);
    else
      c.all_gather<float>(std::span<const float>(send).first(2), recv, nullptr);
  });
  expect_rejected(out, 0, "recv overlaps send");
}

TEST_CASE("neighbor_exchange: a peer outside the group, a receiver expecting another size, an unmatched send") {
  auto bad_peer = run_bad(4, 2, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(2);
    c.neighbor_exchange<float>(send, c.rank() == 3 ? 4 : (c.rank() + 1) % 4, recv, (c.rank() + 3) % 4, nullptr);
  });
  expect_rejected(bad_peer, 3, "dest: expected a rank in [0, 4) or no_rank (-1), got 4");

  auto bad_size = run_bad(2, 2, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(c.rank() == 0 ? 3 : 2);
    c.neighbor_exchange<float>(send, 1 - c.rank(), recv, 1 - c.rank(), nullptr);
  });
  CHECK(*bad_size[1].code == errc::invalid_argument);
  CHECK(bad_size[1].what.find("recv: expected rank 0's send size = 3 elements, got 2") != std::string::npos);
  CHECK(bad_size[0].recv_untouched);
  CHECK(bad_size[1].recv_untouched);

  auto unmatched = run_bad(2, 2, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(2);
    c.neighbor_exchange<float>(send, c.rank() == 0 ? 1 : seqpar::no_rank, recv, seqpar::no_rank, nullptr);
  });
  CHECK(*unmatched[0].code == errc::invalid_argument);
  CHECK(unmatched[0].what.find("dest: rank 1 receives from -1; expected it to receive from this rank 0") !=
        std::string::npos);
}

TEST_CASE("all_gather, reduce_scatter and all_reduce with buffers of the wrong size") {
  auto gather = run_bad(4, 7, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(2);
    c.all_gather<float>(send, recv, nullptr);
  });
  for (const auto& o : gather) CHECK(o.what.find("recv: expected group size * send elements = 8 elements, got 7") != std::string::npos);

  auto scatter = run_bad(3, 2, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(c.rank() == 1 ? 5 : 6);
    c.reduce_scatter<float>(send, recv, nullptr);
  });
  expect_rejected(scatter, 1, "send: expected group size * recv elements = 6 elements, got 5");

  auto reduce = run_bad(2, 3, [](in_process_communicator& c, std::vector<float>& recv) {
    auto send = filled(c.rank() == 0 ? 3 : 4);
    c.all_reduce<float>(send, std::span<float>(recv).first(c.rank() == 0 ? 3 : 3), nullptr);
  });
  expect_rejected(reduce, 1, "recv: expected send elements = 4 elements, got 3");
}

TEST_CASE("split with a negative colour") {
  auto out = run_bad(3, 0, [](in_process_communicator& c, std::vector<float>&) { (void)c.split(c.rank() == 2 ? -1 : 0, 0); });
  expect_rejected(out, 2, "color: expected a colour >= 0, got -1");
}

TEST_CASE("run_in_process: a rank that dies outside a collective does not leave the others waiting") {
  CHECK_THROWS_WITH_AS(seqpar::run_in_process(4, seqpar::memory_space::host,
                                              [](in_process_communicator& c) {
                                                if (c.rank() == 1) throw std::logic_error("rank 1 gave up");
                                                c.barrier(nullptr);
                                              }),
                       "rank 1 gave up", std::logic_error);
  CHECK_THROWS_WITH_AS(in_process_communicator::create_group(0), doctest::Contains("size: expected at least 1 rank, got 0"),
                       seqpar::error);
}

TEST_CASE("counts beyond an int-counted backend's limit are refused, not truncated") {
  CHECK_NOTHROW(seqpar::detail::check_fits_int("count", 2147483647u));
  CHECK_THROWS_WITH_AS(seqpar::detail::check_fits_int("send_counts", std::size_t{1} << 31),
                       doctest::Contains("send_counts: 2147483648 exceeds the backend's limit of 2147483647 per call"),
                       seqpar::error);
}
