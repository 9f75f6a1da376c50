// cudnn_attention (cuDNN's fused attention through the frontend graph API) against the device
// reference policy, one device, packed and strided; through ulysses_attention against the host
// reference, including ranks whose query heads start inside a GQA group (one cuDNN call per kv
// head); what it refuses; and its graph cache.
#include <seqpar_test/attention_cases.hpp>
#include <seqpar_test/device_policy_run.hpp>

#include <seqpar/policy/attention_cuda.cuh>
#include <seqpar/policy/cudnn_attention.hpp>
#include <seqpar/policy/reference_attention.hpp>

#include <cmath>
#include <vector>

using seqpar::memory_space;

namespace {
const auto everything = [](std::int64_t, std::int64_t) { return true; };
}

TEST_CASE_TEMPLATE("cudnn_attention equals the device reference, packed and strided", T, __half, __nv_bfloat16) {
  // cuDNN's softmax stats are the natural-log log-sum-exp, as the reference's lse.
  seqpar_test::check_against_device_reference<T>(seqpar::cudnn_attention{}, seqpar::reference_attention_cuda{},
                                                 {{1, 1000, 2, 1, 64, 0}, {2, 517, 4, 2, 128, 0}, {1, 300, 2, 2, 64, 8},
                                                  {1, 129, 4, 1, 128, 8}, {2, 64, 8, 8, 32, 0}});
}

TEST_CASE_TEMPLATE("ulysses_attention with cudnn_attention equals the host reference", T, __half, __nv_bfloat16) {
  for (int P : {1, 2, 4})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2, 4})
        seqpar_test::check_ulysses_attention<T>({P, 4, H_kv, 2, 24 * P + 5, 64, causal}, memory_space::device,
                                                seqpar::cudnn_attention{}, seqpar::reference_attention{}, everything);
  // 8 query heads over 3 ranks (3, 3, 2) with 2 kv heads: ranks 1 and 2 start inside a group, so
  // their kv heads' query heads get calls of their own.
  for (bool causal : {false, true})
    seqpar_test::check_ulysses_attention<T>({3, 8, 2, 1, 77, 128, causal}, memory_space::device,
                                            seqpar::cudnn_attention{}, seqpar::reference_attention{}, everything);
}

TEST_CASE("cudnn_attention refuses what it cannot compute, and builds each graph once") {
  auto comms = seqpar::in_process_communicator::create_group(1, memory_space::device);
  const auto part = seqpar::make_seq_partition(64, 1);
  auto layer = [&](seqpar::dtype t, std::int64_t D) {
    seqpar::ulysses_attention l(seqpar::cudnn_attention{}, comms[0], part, {.batch = 1, .heads = 2, .head_dim = D}, t);
  };
  CHECK_THROWS_WITH_AS(layer(seqpar::dtype::float32, 64),
                       doctest::Contains("policy: does not support element type float32 with head_dim 64"), seqpar::error);
  CHECK_THROWS_WITH_AS(layer(seqpar::dtype::bfloat16, 100),
                       doctest::Contains("policy: does not support element type bfloat16 with head_dim 100"), seqpar::error);

  using bf16 = __nv_bfloat16;
  const auto q = seqpar_test::random_input<bf16>(1, 64, 1, 64);
  const seqpar::cudnn_attention cudnn;
  const seqpar::attention_options opt{.causal = true};
  (void)seqpar_test::run_on_device<bf16>(cudnn, q, q, q, q, opt.resolved(64), 0);
  const auto built = cudnn.cached_graphs();
  CHECK(built == 2);  // a forward and a backward graph
  (void)seqpar_test::run_on_device<bf16>(cudnn, q, q, q, q, opt.resolved(64), 0);
  CHECK(cudnn.cached_graphs() == built);

  seqpar_test::buffer<std::int32_t> ids(memory_space::device, std::vector<std::int32_t>(64, 0));
  CHECK_THROWS_WITH_AS(
      (void)seqpar_test::run_on_device<bf16>(cudnn, q, q, q, q, opt.resolved(64).with_documents({ids.data()}), 0),
      doctest::Contains("options.documents: cudnn_attention does not take packed documents yet"), seqpar::error);
}
