// The NCCL backend with one rank on one GPU (NCCL refuses two ranks on a GPU; multi-rank device
// runs use the in-process backend). Every operation, checked against the host's expectation.
#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/nccl.hpp>
#include <seqpar_test/buffers.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

using seqpar::memory_space;
using seqpar_test::buffer;
using seqpar_test::key_of;
using seqpar_test::poison;
using seqpar_test::tagged;

TEST_CASE_TEMPLATE("nccl at P = 1: every operation moves or sums exactly", T, float, __half, __nv_bfloat16) {
  auto comm = seqpar::nccl_communicator::single_gpu();
  CHECK(comm.size() == 1);
  CHECK(comm.rank() == 0);
  CHECK(comm.memory() == memory_space::device);
  seqpar_test::rank_stream stream(memory_space::device);
  std::vector<T> in(6);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = tagged<T>(key_of(0, i));
  buffer<T> send(memory_space::device, in);
  auto fresh = [&] { return std::make_unique<buffer<T>>(memory_space::device, std::vector<T>(6, poison<T>())); };

  auto a = fresh();
  comm.all_to_all(send.cspan(), a->span(), 6, stream);
  auto v = fresh();
  const std::vector<std::size_t> counts{4}, displs{1};
  comm.all_to_all_v(send.cspan(), counts, std::vector<std::size_t>{0}, v->span(), counts, displs, stream);
  auto g = fresh();
  comm.all_gather(send.cspan(), g->span(), stream);
  auto n = fresh();
  comm.neighbor_exchange(send.cspan(), 0, n->span(), 0, stream);
  std::vector<T> small(6);
  for (std::size_t i = 0; i < 6; ++i) small[i] = seqpar_test::exact<T>(static_cast<int>(i) - 3);
  buffer<T> nums(memory_space::device, small);
  auto s = fresh(), rs = fresh();
  comm.all_reduce(nums.cspan(), s->span(), stream);
  comm.reduce_scatter(nums.cspan(), rs->span(), stream);
  comm.barrier(stream);

  CHECK(seqpar_test::first_mismatch(a->values(), in) == -1);
  CHECK(seqpar_test::first_mismatch(g->values(), in) == -1);
  CHECK(seqpar_test::first_mismatch(n->values(), in) == -1);
  std::vector<T> want_v(6, poison<T>());
  for (int i = 0; i < 4; ++i) want_v[1 + i] = in[i];
  CHECK(seqpar_test::first_mismatch(v->values(), want_v) == -1);
  CHECK(seqpar_test::first_mismatch(s->values(), small) == -1);
  CHECK(seqpar_test::first_mismatch(rs->values(), small) == -1);
}

TEST_CASE("nccl: split, borrow, the counting decorator, and bad input before anything is enqueued") {
  auto comm = seqpar::nccl_communicator::single_gpu();
  auto part = comm.split(0, 0);
  CHECK(part.size() == 1);
  auto borrowed = seqpar::nccl_communicator::borrow(comm.native());
  CHECK(borrowed.size() == 1);
  CHECK_THROWS_WITH_AS(comm.split(-1, 0), doctest::Contains("color: expected a colour >= 0"), seqpar::error);

  seqpar::counting_communicator<seqpar::nccl_communicator> counted(std::move(part));
  buffer<float> send(memory_space::device, std::vector<float>(4, 1.0f));
  buffer<float> recv(memory_space::device, std::vector<float>(4, poison<float>()));
  counted.all_to_all(send.cspan(), recv.span(), 4, nullptr);
  CHECK(counted.records().size() == 1);
  CHECK(counted.bytes_sent() == 0);  // a single rank sends nothing over a link

  buffer<float> short_recv(memory_space::device, std::vector<float>(3, poison<float>()));
  CHECK_THROWS_WITH_AS(comm.all_to_all(send.cspan(), short_recv.span(), 4, nullptr),
                       doctest::Contains("recv: expected group size * count = 4 elements, got 3"), seqpar::error);
  CHECK(seqpar_test::first_mismatch(short_recv.values(), std::vector<float>(3, poison<float>())) == -1);
  CHECK_THROWS_WITH_AS(comm.neighbor_exchange(send.cspan(), 1, recv.span(), 0, nullptr),
                       doctest::Contains("dest: expected a rank in [0, 1)"), seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::nccl_communicator::borrow(nullptr), doctest::Contains("comm: null ncclComm_t"),
                       seqpar::error);
}

// A rank whose stream does not reach the collective in time (here: a host function that sleeps
// ahead of it, standing in for a dead peer) stops with a named timeout instead of waiting forever.
// The communicator is borrowed, so it is left to its owner (an owned one is aborted), whose next
// barrier, once the stream moves again, completes.
TEST_CASE("nccl: a host wait past wait_limit() throws errc::timeout naming the wait") {
  using namespace std::chrono_literals;
  auto owner = seqpar::nccl_communicator::single_gpu();
  CHECK(owner.wait_limit() == 10min);
  CHECK_THROWS_WITH_AS(owner.set_wait_limit(0ms), doctest::Contains("limit: expected a positive wait"),
                       seqpar::error);
  auto comm = seqpar::nccl_communicator::borrow(owner.native());
  comm.set_wait_limit(20ms);
  CHECK(comm.split(0, 0).wait_limit() == 20ms);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaLaunchHostFunc(
              stream, [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(500)); }, nullptr) ==
          cudaSuccess);
  try {
    comm.barrier(stream);
    FAIL("the barrier returned although its stream was held for 500 ms");
  } catch (const seqpar::error& e) {
    CHECK(e.code() == seqpar::errc::timeout);
    CHECK(std::string(e.what()).find("barrier: not complete after 20 ms") != std::string::npos);
  }
  CHECK(comm.native() == owner.native());  // borrowed: not aborted
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  CHECK_NOTHROW(owner.barrier(stream));
  cudaStreamDestroy(stream);
}
