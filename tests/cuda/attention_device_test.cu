// ulysses_attention, ring_attention and the 2-D layer on the GPU with the device attention
// policies, over the in-process backend on device memory, against the host reference policy on one
// device.
#include <seqpar_test/attention_cases.hpp>
#include <seqpar_test/device_policy_run.hpp>

#include <seqpar/policy/attention_cuda.cuh>
#include <seqpar/policy/flash_attention.cuh>
#include <seqpar/policy/block_sparse_attention.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>

#include <utility>
#include <vector>

using seqpar::memory_space;

namespace {
const auto everything = [](std::int64_t, std::int64_t) { return true; };
}

TEST_CASE_TEMPLATE("ulysses_attention with reference_attention_cuda equals the host reference", T, float, __half,
                   __nv_bfloat16) {
  for (int P : {1, 2, 3, 4, 8})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2, 4})
        seqpar_test::check_ulysses_attention<T>({P, 4, H_kv, 2, 4 * P + 3, 16, causal}, memory_space::device,
                                                seqpar::reference_attention_cuda{}, seqpar::reference_attention{},
                                                everything);
  seqpar_test::check_ulysses_attention<T>({4, 7, 7, 1, 29, 64, true}, memory_space::device,
                                          seqpar::reference_attention_cuda{}, seqpar::reference_attention{}, everything);
}

// Head groups on a device: exchanges on the side stream, attention on the rank's stream, events
// between them; a missing wait shows as wrong or poisoned outputs.
TEST_CASE_TEMPLATE("ulysses_attention in head groups with flash_attention equals the host reference", T, __half,
                   __nv_bfloat16) {
  struct grouped {
    int P, H, H_kv, groups;
  };
  for (const grouped g : {grouped{2, 8, 8, 4}, grouped{2, 6, 3, 2}, grouped{3, 10, 5, 2}, grouped{4, 16, 8, 2}})
    for (bool causal : {false, true})
      (void)seqpar_test::check_parallel_attention<T>(
          {g.P, g.H, g.H_kv, 2, 40 * g.P + 3, 64, causal}, memory_space::device,
          [&](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
            return seqpar::ulysses_attention(seqpar::flash_attention{}, comm, part, shape, type, opt,
                                             seqpar::ulysses_options{.head_groups = g.groups});
          },
          seqpar::reference_attention{}, everything);
}

TEST_CASE("ulysses_attention with block_sparse_attention_cuda equals the host block-sparse policy") {
  const seqpar::block_mask mask{4, 2, 1};
  const auto allowed = [&](std::int64_t i, std::int64_t j) { return mask.allowed(i, j); };
  for (int P : {1, 2, 4})
    for (bool causal : {false, true})
      seqpar_test::check_ulysses_attention<float>({P, 4, 2, 1, 32, 8, causal}, memory_space::device,
                                                  seqpar::block_sparse_attention_cuda{mask},
                                                  seqpar::block_sparse_attention{mask}, allowed);
}

// flash_attention (tensor cores, half and bfloat16, head dims 64 and 128). Tolerances are those of
// lasp_tolerance: 4e-3 (half) and 3e-2 (bfloat16) of the largest reference magnitude, covering
// P and dS rounded to the element type before their products, as in FlashAttention-2.
TEST_CASE_TEMPLATE("ulysses_attention with flash_attention equals the host reference", T, __half, __nv_bfloat16) {
  for (int P : {1, 2, 3, 4, 8})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2, 4})
        seqpar_test::check_ulysses_attention<T>({P, 4, H_kv, 2, 24 * P + 5, 64, causal}, memory_space::device,
                                                seqpar::flash_attention{}, seqpar::reference_attention{}, everything);
  for (bool causal : {false, true}) {
    seqpar_test::check_ulysses_attention<T>({4, 7, 7, 1, 150, 128, causal}, memory_space::device,
                                            seqpar::flash_attention{}, seqpar::reference_attention{}, everything);
    seqpar_test::check_ulysses_attention<T>({2, 4, 1, 1, 133, 128, causal}, memory_space::device,
                                            seqpar::flash_attention{}, seqpar::reference_attention{}, everything);
  }
}

// Ring and 2-D layers on device memory: flash_attention's block functions, the merge and the
// element-wise steps as device launches, each next shard arriving on a side stream.
TEST_CASE_TEMPLATE("ring_attention with flash_attention on the GPU equals the host reference", T, __half,
                   __nv_bfloat16) {
  seqpar_test::check_ring_on_device<T>(seqpar::flash_attention{}, {1, 2, 4, 8});
}

TEST_CASE("ring and 2-D layers with the device oracles (fp32, block-sparse) equal the host policies") {
  const auto ring = [](const auto& policy) {
    return [policy](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
      return seqpar::ring_attention(policy, comm, part, shape, type, opt);
    };
  };
  for (int P : {2, 3, 4, 8})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2}) {
        (void)seqpar_test::check_parallel_attention<float>({P, 2, H_kv, 2, 4 * P + 3, 16, causal},
                                                           memory_space::device, ring(seqpar::reference_attention_cuda{}),
                                                           seqpar::reference_attention{}, everything);
        (void)seqpar_test::check_parallel_attention<float>(
            {P, 2, H_kv, 2, 6 * P, 16, causal, seqpar::shard_strategy::zigzag}, memory_space::device,
            ring(seqpar::reference_attention_cuda{}), seqpar::reference_attention{}, everything);
      }
  const seqpar::block_mask mask{4, 1, 1};
  const auto allowed = [&](std::int64_t i, std::int64_t j) { return mask.allowed(i, j); };
  (void)seqpar_test::check_parallel_attention<float>({4, 4, 2, 1, 48, 8, true, seqpar::shard_strategy::zigzag},
                                                     memory_space::device, ring(seqpar::block_sparse_attention_cuda{mask}),
                                                     seqpar::block_sparse_attention{mask}, allowed);
  seqpar_test::check_ulysses_ring_on_device<float>(seqpar::reference_attention_cuda{}, {{2, 2}, {2, 4}, {4, 2}, {2, 3}},
                                                   5, 16);
}

TEST_CASE("packed documents on the GPU: ids from a device scan, each document alone as the reference") {
  const std::vector<std::int32_t> lengths{1, 60, 3, 64, 1, 63};  // S = 192
  const auto docs = seqpar::documents_of_lengths(lengths);
  for (bool causal : {false, true}) {
    (void)seqpar_test::check_parallel_attention<float>(
        {4, 4, 2, 1, 192, 16, causal}, memory_space::device,
        [](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
          return seqpar::ulysses_attention(seqpar::reference_attention_cuda{}, comm, part, shape, type, opt);
        },
        seqpar::reference_attention{}, everything, docs);
    (void)seqpar_test::check_parallel_attention<__half>(
        {4, 2, 1, 1, 192, 64, causal, seqpar::shard_strategy::zigzag}, memory_space::device,
        [](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
          return seqpar::ring_attention(seqpar::flash_attention{}, comm, part, shape, type, opt);
        },
        seqpar::reference_attention{}, everything, docs);
  }
}

TEST_CASE_TEMPLATE("ulysses_ring_attention with flash_attention on the GPU equals the host reference", T, __half,
                   __nv_bfloat16) {
  for (auto [u, r] : std::vector<std::pair<int, int>>{{2, 2}, {2, 4}, {4, 2}, {1, 4}, {4, 1}})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2, 4}) {
        CAPTURE(u);
        CAPTURE(r);
        const auto layout = seqpar::make_token_layout_2d(2 * r * 70, {u, r});
        (void)seqpar_test::check_parallel_attention_on<T>(
            {u * r, 4, H_kv, 2, layout.tokens, 64, causal}, layout, memory_space::device,
            [](auto& comm, const auto& l, const auto& shape, auto type, const auto& opt) {
              return seqpar::ulysses_ring_attention(seqpar::flash_attention{}, comm, l, shape, type, opt);
            },
            seqpar::reference_attention{}, everything);
      }
}

TEST_CASE_TEMPLATE("flash_attention equals the device reference over many tiles, packed and strided", T, __half,
                   __nv_bfloat16) {
  seqpar_test::check_against_device_reference<T>(seqpar::flash_attention{}, seqpar::reference_attention_cuda{},
                                                 {{1, 1000, 2, 1, 64, 0}, {2, 517, 4, 2, 128, 0}, {1, 300, 2, 2, 64, 1},
                                                  {1, 129, 3, 1, 128, 1}, {1, 1, 1, 1, 64, 0}});
}

TEST_CASE("the device oracles refuse more than 65535 heads, before any output is written") {
  constexpr std::int64_t H = 65536;
  seqpar_test::buffer<float> x(memory_space::device, std::vector<float>(H, 1.0f)),
      o(memory_space::device, std::vector<float>(H, seqpar_test::poison<float>())),
      lse(memory_space::device, std::vector<float>(H, seqpar_test::poison<float>()));
  const auto xv = seqpar::make_bshd<const float>(x.data(), 1, 1, H, 1);
  CHECK_THROWS_WITH_AS(seqpar::reference_attention_cuda{}.forward(
                           seqpar::policy_forward_args<float>{.q = xv,
                                                              .k = xv,
                                                              .v = xv,
                                                              .o = seqpar::make_bshd(o.data(), 1, 1, H, 1),
                                                              .lse = seqpar::lse_view(lse.data(), 1, H, 1)},
                           nullptr),
                       doctest::Contains("views: 65536 heads and batch 1; expected at most 65535 of each"),
                       seqpar::error);
  CHECK(seqpar_test::first_mismatch(o.values(), std::vector<float>(H, seqpar_test::poison<float>())) == -1);
  CHECK(seqpar_test::first_mismatch(lse.values(), std::vector<float>(H, seqpar_test::poison<float>())) == -1);
}

TEST_CASE("flash_attention refuses what it cannot compute, before anything moves") {
  auto comms = seqpar::in_process_communicator::create_group(1, memory_space::device);
  const auto part = seqpar::make_seq_partition(64, 1);
  auto layer = [&](auto t, std::int64_t D) {
    seqpar::ulysses_attention l(seqpar::flash_attention{}, comms[0], part, {.batch = 1, .heads = 2, .head_dim = D}, t);
  };
  CHECK_THROWS_WITH_AS(layer(seqpar::elements<float>, 64),
                       doctest::Contains("policy: does not support element type float32 with head_dim 64"), seqpar::error);
  CHECK_THROWS_WITH_AS(layer(seqpar::elements<__nv_bfloat16>, 96),
                       doctest::Contains("policy: does not support element type bfloat16 with head_dim 96"), seqpar::error);
  // A direct call with k shorter than q: refused, o untouched.
  using bf16 = __nv_bfloat16;
  seqpar_test::buffer<bf16> q(memory_space::device, std::vector<bf16>(64 * 64, bf16(1.0f))),
      k(memory_space::device, std::vector<bf16>(32 * 64, bf16(1.0f))),
      o(memory_space::device, std::vector<bf16>(64 * 64, seqpar_test::poison<bf16>()));
  seqpar_test::buffer<float> lse(memory_space::device, std::vector<float>(64, 0.0f));
  const auto qv = seqpar::make_bshd<const bf16>(q.data(), 1, 64, 1, 64);
  const auto kv = seqpar::make_bshd<const bf16>(k.data(), 1, 32, 1, 64);
  auto call = [&](seqpar::tensor_view<const bf16> k, std::int64_t lse_rows) {
    const auto o_view = seqpar::make_bshd(o.data(), 1, 64, 1, 64);
    const seqpar::lse_view l(lse.data(), 1, 1, lse_rows);
    seqpar::flash_attention{}.forward(seqpar::policy_forward_args<bf16>{.q = qv, .k = k, .v = k, .o = o_view, .lse = l},
                                      nullptr);
  };
  CHECK_THROWS_WITH_AS(
      call(kv, 64), doctest::Contains("k, v: extents {1, 32, 1, 64}; expected q's batch, seq and head_dim (1, 64, 64)"),
      seqpar::error);
  CHECK_THROWS_WITH_AS(
      call(qv, 32), doctest::Contains("lse: extents {1, 1, 32}; expected q's {batch, heads, seq} = {1, 1, 64} floats"),
      seqpar::error);
  CHECK(seqpar_test::first_mismatch(o.values(), std::vector<bf16>(64 * 64, seqpar_test::poison<bf16>())) == -1);
}
