// LASP on the GPU: the CUDA linear-attention policies (constant decays, and per-token gates)
// through lasp_attention over the in-process backend on device memory, against the single-device
// references; chunks long enough to span several sub-blocks and segments, with partial last ones;
// both the tensor-core and CUDA-core paths; packed documents.
#include <seqpar_test/all_or_nothing.hpp>
#include <seqpar_test/gated_lasp_cases.hpp>
#include <seqpar_test/lasp_cases.hpp>

#include <seqpar/documents.hpp>
#include <seqpar/policy/gated_linear_cuda.cuh>
#include <seqpar/policy/linear_cuda.cuh>

#include <vector>

using seqpar::lasp_strategy;
using seqpar::memory_space;

TEST_CASE_TEMPLATE("lasp_attention with linear_cuda: o, dq, dk, dv equal the single-device reference", T, float,
                   __half, __nv_bfloat16) {
  for (int P : {1, 2, 3, 4, 8})
    for (float lambda : {1.0f, 0.99f, 0.9f})
      for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather})
        seqpar_test::check_lasp<T>({P, 2, 37 * P + 5, 2, 3, 5, lambda, strategy}, memory_space::device,
                                   seqpar::linear_cuda{});
}

TEST_CASE_TEMPLATE("lasp_attention with linear_cuda over packed documents: the state resets at each start", T, float,
                   __half) {
  const std::vector<std::int32_t> lengths{1, 150, 64, 3, 40, 42};  // S = 300 over 4 ranks of 75
  for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather})
    seqpar_test::check_lasp<T>({4, 1, 300, 2, 16, 16, 0.97f, strategy}, memory_space::device, seqpar::linear_cuda{},
                               seqpar::documents_of_lengths(lengths));
}

TEST_CASE("lasp_attention with linear_cuda: head dims 64 and 128, a normalised variant") {
  seqpar_test::check_lasp<__nv_bfloat16>({4, 1, 300, 2, 64, 64, 0.99f, lasp_strategy::chain}, memory_space::device,
                                         seqpar::linear_cuda{});
  seqpar_test::check_lasp<__half>({2, 1, 130, 1, 128, 96, 1.0f, lasp_strategy::all_gather}, memory_space::device,
                                  seqpar::linear_cuda{});
  seqpar_test::check_lasp<float>({4, 1, 77, 2, 16, 8, 0.95f, lasp_strategy::chain, true}, memory_space::device,
                                 seqpar::linear_cuda{});
  seqpar_test::check_lasp<__half>({2, 1, 90, 2, 16, 8, 0.95f, lasp_strategy::all_gather, true}, memory_space::device,
                                  seqpar::linear_cuda{});
}

TEST_CASE("lasp_attention with linear_cuda: chunks long enough to run in parallel segments, D > 128") {
  // 1500 and 1000 tokens per rank over few heads: the tensor-core path cuts them into segments.
  seqpar_test::check_lasp<__nv_bfloat16>({2, 1, 3000, 2, 64, 64, 0.99f, lasp_strategy::chain}, memory_space::device,
                                         seqpar::linear_cuda{});
  seqpar_test::check_lasp<__half>({2, 1, 2000, 1, 128, 96, 0.9f, lasp_strategy::all_gather}, memory_space::device,
                                  seqpar::linear_cuda{});
  // D = 160 > 128 contracts on CUDA cores for q . k, on tensor cores for dO . v (E = 32).
  seqpar_test::check_lasp<__nv_bfloat16>({2, 1, 300, 1, 160, 32, 0.95f, lasp_strategy::chain}, memory_space::device,
                                         seqpar::linear_cuda{});
}

TEST_CASE("linear_cuda refuses more than 256 heads and batch * heads over 65535 before any launch") {
  std::vector<__nv_bfloat16> in(8193 * 8 * 16), out(in.size());  // host memory: nothing may be read
  const std::vector<float> decay_300(300, 0.9f), decay_8(8, 0.9f);
  const auto many_heads = seqpar::make_bshd<const __nv_bfloat16>(in.data(), 1, 1, 300, 16);
  CHECK_THROWS_WITH_AS(
      seqpar::linear_cuda{}.forward_intra(
          seqpar::linear_chunk<__nv_bfloat16>{.q = many_heads, .k = many_heads, .v = many_heads, .decay = decay_300},
          seqpar::make_bshd(out.data(), 1, 1, 300, 16), nullptr),
      doctest::Contains("decay: linear_cuda takes up to 256 heads, got 300"), seqpar::error);
  const auto many_rows = seqpar::make_bshd<const __nv_bfloat16>(in.data(), 8193, 1, 8, 16);
  CHECK_THROWS_WITH_AS(
      seqpar::linear_cuda{}.forward_intra(
          seqpar::linear_chunk<__nv_bfloat16>{.q = many_rows, .k = many_rows, .v = many_rows, .decay = decay_8},
          seqpar::make_bshd(out.data(), 8193, 1, 8, 16), nullptr),
      doctest::Contains("batch * heads: linear_cuda takes up to 65535, got 8193 * 8"), seqpar::error);
}

TEST_CASE_TEMPLATE("gated lasp_attention with gated_linear_cuda: o equals the recurrence, dq, dk, dv, dg one device's",
                   T, float, __nv_bfloat16) {
  for (int P : {1, 2, 3, 4, 8})
    for (auto gates : {seqpar::gate_kind::scalar, seqpar::gate_kind::vector})
      for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather})
        seqpar_test::check_gated_lasp<T>({.P = P, .S = 37 * P + 5, .gates = gates, .lo = 0.3, .hi = 1.0,
                                          .strategy = strategy},
                                         {}, memory_space::device, seqpar::gated_linear_cuda{});
  const std::vector<std::int32_t> lengths{1, 150, 64, 3, 40, 42};  // S = 300 over 4 ranks, D = E = 64
  for (auto gates : {seqpar::gate_kind::scalar, seqpar::gate_kind::vector})
    seqpar_test::check_gated_lasp<T>({.P = 4, .B = 1, .S = 300, .H = 2, .D = 64, .E = 64, .gates = gates},
                                     seqpar::documents_of_lengths(lengths), memory_space::device,
                                     seqpar::gated_linear_cuda{});
}

TEST_CASE("gated lasp_attention with gated_linear_cuda: a bad device log-gate on one rank stops every rank") {
  const std::int64_t B = 1, H = 2, D = 4, E = 4;
  const int P = 2;
  const auto part = seqpar::make_seq_partition(40, P);
  seqpar_test::expect_all_or_nothing(
      P, "g(0, 5, 1, 3) = 0.5; expected a finite log-gate <= 0",
      [&](seqpar::in_process_communicator& comm, bool bad, seqpar_test::sentinels& s) {
        seqpar::lasp_attention layer(seqpar::gated_linear_cuda{}, comm, part,
                                     {.batch = B, .heads = int(H), .head_dim = D, .value_dim = E},
                                     seqpar::elements<float>, seqpar::gate_kind::vector);
        const std::int64_t n = part.size(comm.rank());
        std::vector<float> gates(B * n * H * D, -0.1f);
        if (bad) gates[(5 * H + 1) * D + 3] = 0.5f;
        seqpar_test::buffer<float> g(memory_space::device, gates);
        auto& x = s.input(B * n * H * D, 0.5f);
        auto& o = s.make(B * n * H * E);
        const auto in = seqpar::make_bshd<const float>(x.data(), B, n, H, D);
        (void)layer.forward({.q = in,
                             .k = in,
                             .v = in,
                             .g = seqpar::make_bshd<const float>(g.data(), B, n, H, D),
                             .o = seqpar::make_bshd(o.data(), B, n, H, E)},
                            {.stream = nullptr});
      },
      memory_space::device);
}

// Local checks make no host wait, so a whole layer call can be captured into a CUDA graph (relaxed
// mode: the context's state is allocated during the capture); replaying it gives the bits of a
// call made directly.
TEST_CASE("a lasp_attention forward with local checks is captured in a CUDA graph and replays the same o") {
  using bf16 = __nv_bfloat16;
  constexpr std::int64_t S = 256, H = 2, D = 64;
  std::vector<bf16> init(S * H * D);
  for (std::size_t i = 0; i < init.size(); ++i) init[i] = bf16(0.02f * static_cast<float>(int(i * 7 % 23) - 11));
  seqpar::run_in_process(1, memory_space::device, [&](seqpar::in_process_communicator& comm) {
    seqpar_test::buffer<bf16> q(memory_space::device, init), k(memory_space::device, init),
        v(memory_space::device, init),
        direct(memory_space::device, std::vector<bf16>(init.size(), seqpar_test::poison<bf16>())),
        replayed(memory_space::device, std::vector<bf16>(init.size(), seqpar_test::poison<bf16>()));
    seqpar::lasp_attention layer(seqpar::linear_cuda{}, comm, seqpar::make_seq_partition(S, 1),
                                 {.batch = 1, .heads = H, .head_dim = D}, seqpar::elements<bf16>,
                                 std::vector<float>(H, 0.95f));
    cudaStream_t stream = nullptr;
    REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
    auto args = [&](bf16* o) {
      return seqpar::linear_forward_args<bf16>{.q = seqpar::make_bshd<const bf16>(q.data(), 1, S, H, D),
                                               .k = seqpar::make_bshd<const bf16>(k.data(), 1, S, H, D),
                                               .v = seqpar::make_bshd<const bf16>(v.data(), 1, S, H, D),
                                               .o = seqpar::make_bshd(o, 1, S, H, D)};
    };
    const seqpar::execution local{.stream = stream, .checks = seqpar::call_checks::local};
    { auto saved = layer.forward(args(direct.data()), local); }  // also makes the side stream and its events
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    cudaGraph_t graph = nullptr;
    REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed) == cudaSuccess);
    auto saved = layer.forward(args(replayed.data()), local);
    REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
    cudaGraphExec_t exec = nullptr;
    REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    CHECK(seqpar_test::first_mismatch(replayed.values(), std::vector<bf16>(init.size(), seqpar_test::poison<bf16>())) ==
          -1);  // captured, not run
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    CHECK(seqpar_test::first_mismatch(replayed.values(), direct.values()) == -1);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  });
}
