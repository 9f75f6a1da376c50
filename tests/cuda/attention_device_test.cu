// ulysses_attention on the GPU with the device attention policies, over the in-process backend on
// device memory, against the host reference policy on one device.
#include <seqpar_test/attention_cases.hpp>

#include <seqpar/policy/attention_cuda.cuh>
#include <seqpar/policy/block_sparse_attention.hpp>
#include <seqpar/policy/reference_attention.hpp>

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

TEST_CASE("ulysses_attention with block_sparse_attention_cuda equals the host block-sparse policy") {
  const seqpar::block_mask mask{4, 2, 1};
  const auto allowed = [&](std::int64_t i, std::int64_t j) { return mask.allowed(i, j); };
  for (int P : {1, 2, 4})
    for (bool causal : {false, true})
      seqpar_test::check_ulysses_attention<float>({P, 4, 2, 1, 32, 8, causal}, memory_space::device,
                                                  seqpar::block_sparse_attention_cuda{mask},
                                                  seqpar::block_sparse_attention{mask}, allowed);
}
