// Every operation of the in-process backend over host memory, at P = 1, 2, 3, 4 and 8.
#include <seqpar_test/collective_cases.hpp>

using seqpar::memory_space;

TEST_CASE_TEMPLATE("in_process over host memory: every operation, P in {1,2,3,4,8}", T, float, __half,
                   __nv_bfloat16, double, std::int32_t, std::int64_t) {
  seqpar_test::check_every_operation<T>(memory_space::host);
}

TEST_CASE("in_process split: colour groups ranked by key, usable on their own") {
  seqpar_test::check_split(memory_space::host);
}

TEST_CASE("in_process split of a split, and a group of one") {
  std::vector<int> sizes(8), sums(8);
  seqpar::run_in_process(8, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    auto half = comm.split(r / 4, r);
    auto single = half.split(half.rank(), 0);
    std::vector<std::int32_t> v{r};
    single.all_reduce<std::int32_t>(v, v, nullptr);
    half.all_reduce<std::int32_t>(v, v, nullptr);
    sizes[r] = single.size() * 10 + half.size();
    sums[r] = v[0];
  });
  for (int r = 0; r < 8; ++r) {
    CHECK(sizes[r] == 14);
    CHECK(sums[r] == (r < 4 ? 0 + 1 + 2 + 3 : 4 + 5 + 6 + 7));
  }
}

TEST_CASE("in_process barrier: what a rank wrote before it is seen by every rank after it") {
  const int P = 4;
  for (int round = 0; round < 20; ++round) {
    std::vector<int> board(P, -1), seen(P * P, -2);
    seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
      const int r = comm.rank();
      board[r] = r * 10 + round;
      comm.barrier(nullptr);
      for (int j = 0; j < P; ++j) seen[r * P + j] = board[j];
      comm.barrier(nullptr);
    });
    for (int r = 0; r < P; ++r)
      for (int j = 0; j < P; ++j) CHECK(seen[r * P + j] == j * 10 + round);
  }
}

TEST_CASE("in_process float sums accumulate in fp32 and round once for 16-bit types") {
  // 2048 + 1 + 1 in __half: rounding after each addition would give 2048 (1 is below half an ulp at
  // 2048); accumulating in fp32 and rounding once gives 2050, which __half holds exactly.
  std::vector<float> got(3);
  seqpar::run_in_process(3, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    std::vector<__half> v{__float2half(comm.rank() == 0 ? 2048.0f : 1.0f)};
    comm.all_reduce<__half>(v, v, nullptr);
    got[comm.rank()] = __half2float(v[0]);
  });
  for (float g : got) CHECK(g == 2050.0f);
}
