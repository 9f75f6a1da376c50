// The in-process backend over device memory: P ranks as threads sharing one GPU, each on its own
// stream; the same cases as the host tests, plus what only a GPU build can check.
#include <seqpar_test/collective_cases.hpp>

#include <seqpar/tensor.hpp>

using seqpar::memory_space;

TEST_CASE_TEMPLATE("in_process over device memory: every operation, P in {1,2,3,4,8}", T, float, __half,
                   __nv_bfloat16, std::int64_t) {
  seqpar_test::check_every_operation<T>(memory_space::device);
}

TEST_CASE("in_process over device memory: split") { seqpar_test::check_split(memory_space::device); }

TEST_CASE("in_process over device memory: bad input throws before any copy is enqueued") {
  std::vector<std::vector<float>> after(2);
  std::vector<int> threw(2, 0);
  seqpar::run_in_process(2, memory_space::device, [&](seqpar::in_process_communicator& comm) {
    seqpar_test::buffer<float> send(memory_space::device, std::vector<float>(comm.rank() == 0 ? 3 : 4, 1.0f));
    seqpar_test::buffer<float> recv(memory_space::device, std::vector<float>(4, seqpar_test::poison<float>()));
    seqpar_test::rank_stream stream(memory_space::device);
    try {
      comm.all_to_all(send.cspan(), recv.span(), 2, stream);
    } catch (const seqpar::error&) {
      threw[comm.rank()] = 1;
    }
    stream.sync();
    after[comm.rank()] = recv.values();
  });
  for (int r = 0; r < 2; ++r) {
    CHECK(threw[r] == 1);
    CHECK(seqpar_test::first_mismatch(after[r], std::vector<float>(4, seqpar_test::poison<float>())) == -1);
  }
}

TEST_CASE("kernels compiled by nvcc live in a namespace that names the target architectures") {
  const std::string name = SEQPAR_DETAIL_STR(SEQPAR_KERNEL_NAMESPACE);
  CHECK(name.rfind("kernels_sm", 0) == 0);
  CHECK(name != "kernels_host");
}
