// seqpar::error, the check macros, the versioned namespaces and the bounded wait of the NCCL
// backend's host waits.
#include <seqpar/comm/bounded_wait.hpp>
#include <seqpar/cuda_check.hpp>
#include <seqpar/error.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <sstream>
#include <string>
#include <type_traits>

namespace {
cudaError_t returns(cudaError_t e) { return e; }
int check_positive(int n) {
  SEQPAR_EXPECTS(n > 0, "n: expected a positive count, got " << n);
  return n;
}
}  // namespace

TEST_CASE("SEQPAR_EXPECTS throws seqpar::error carrying code, message, expression, place and rank") {
  seqpar::scoped_rank as(3);
  try {
    check_positive(-2);
    FAIL("no throw");
  } catch (const seqpar::error& e) {
    CHECK(e.code() == seqpar::errc::invalid_argument);
    CHECK(e.message() == "n: expected a positive count, got -2");
    CHECK(e.expression() == "n > 0");
    CHECK(std::string(e.file()).find("error_test.cpp") != std::string::npos);
    CHECK(e.line() > 0);
    CHECK(e.rank() == 3);
    const std::string what = e.what();
    CHECK(what.find("seqpar: invalid argument: n: expected a positive count, got -2 [rank 3]") == 0);
    CHECK(what.find("n > 0") != std::string::npos);
  }
  CHECK(check_positive(5) == 5);
  static_assert(std::is_base_of_v<std::runtime_error, seqpar::error>);
}

TEST_CASE("scoped_rank nests and restores; errors outside any rank say rank -1") {
  CHECK(seqpar::detail::this_thread_rank == -1);
  {
    seqpar::scoped_rank outer(1);
    {
      seqpar::scoped_rank inner(2);
      CHECK(seqpar::detail::this_thread_rank == 2);
    }
    CHECK(seqpar::detail::this_thread_rank == 1);
  }
  CHECK_THROWS_WITH_AS(check_positive(0), doctest::Contains("got 0 ("), seqpar::error);
}

TEST_CASE("SEQPAR_CUDA_TRY names the CUDA error and the call") {
  try {
    SEQPAR_CUDA_TRY(returns(cudaErrorInvalidValue));
    FAIL("no throw");
  } catch (const seqpar::error& e) {
    CHECK(e.code() == seqpar::errc::cuda);
    CHECK(e.message().find("cudaErrorInvalidValue") == 0);
    CHECK(e.expression() == "returns(cudaErrorInvalidValue)");
  }
  CHECK_NOTHROW(SEQPAR_CUDA_TRY(returns(cudaSuccess)));
}

TEST_CASE("every entity lives in the inline namespace named after the version") {
  std::ostringstream expected;
  expected << 'v' << SEQPAR_VERSION_MAJOR << '_' << SEQPAR_VERSION_MINOR << '_' << SEQPAR_VERSION_PATCH;
  CHECK(std::string(SEQPAR_DETAIL_STR(SEQPAR_ABI_NAMESPACE)) == expected.str());
  static_assert(std::is_same_v<seqpar::error, seqpar::SEQPAR_ABI_NAMESPACE::error>);
  CHECK(std::string(SEQPAR_DETAIL_STR(SEQPAR_KERNEL_NAMESPACE)) == "kernels_host");
  CHECK(std::string(SEQPAR_DETAIL_STR(SEQPAR_DETAIL_ARCH_TAG(800, 900))) == "_sm800_sm900");
  CHECK(SEQPAR_VERSION == SEQPAR_VERSION_MAJOR * 10000 + SEQPAR_VERSION_MINOR * 100 + SEQPAR_VERSION_PATCH);
}

TEST_CASE("bounded_wait returns on completion, and aborts and names the wait on an error or past its limit") {
  using namespace std::chrono_literals;
  int polls = 0, aborts = 0;
  auto abort = [&] { ++aborts; };
  auto no_failure = [] { return std::string(); };
  seqpar::detail::bounded_wait([&] { return ++polls == 3; }, no_failure, abort, 1000ms, "barrier");
  CHECK(polls == 3);
  CHECK(aborts == 0);

  auto never = [] { return false; };
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(seqpar::detail::bounded_wait(never, no_failure, abort, 20ms, "all_gather_value"),
                       doctest::Contains("all_gather_value: not complete after 20 ms (a peer stopped or fell far "
                                         "behind); the communicator was aborted"),
                       seqpar::error);
  CHECK(std::chrono::steady_clock::now() - start >= 20ms);
  CHECK(aborts == 1);
  try {
    seqpar::detail::bounded_wait(never, no_failure, abort, 1ms, "x");
  } catch (const seqpar::error& e) {
    CHECK(e.code() == seqpar::errc::timeout);
  }

  int checks = 0;
  auto fails_second_time = [&] { return ++checks == 2 ? std::string("remote process exited") : std::string(); };
  CHECK_THROWS_WITH_AS(seqpar::detail::bounded_wait(never, fails_second_time, abort, 60s, "barrier"),
                       doctest::Contains("barrier: remote process exited; the communicator was aborted"),
                       seqpar::error);
  CHECK(aborts == 3);
}
