// seqpar::error, the check macros and the versioned namespaces.
#include <seqpar/cuda_check.hpp>
#include <seqpar/error.hpp>

#include <doctest/doctest.h>

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
