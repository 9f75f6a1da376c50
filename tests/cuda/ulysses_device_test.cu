// all_to_all_heads and seq_shard on device memory: the pack/unpack kernels, vectorized (D a
// multiple of 16 bytes) and scalar, through the in-process backend with one stream per rank.
#include <seqpar_test/ulysses_cases.hpp>

#include <seqpar/group_shard.hpp>
#include <seqpar/shard.hpp>

using seqpar::memory_space;
using seqpar::order;
using seqpar::shard_strategy;

TEST_CASE_TEMPLATE("all_to_all_heads on the GPU: every element lands where the maps say", T, float, __half,
                   __nv_bfloat16) {
  for (int P : {1, 2, 3, 4, 8})
    for (int H : {1, 7, 8, 32})
      for (int H_kv : {1, 2, H}) {
        if (H % H_kv) continue;
        for (std::int64_t D : {3, 16})  // scalar and 16-byte-vector kernels
          for (order layout : {order::bshd, order::sbhd})
            for (std::int64_t B : {1, 3})
              for (std::int64_t S : {std::int64_t(2 * P), std::int64_t(2 * P + 1)})  // even, and uneven for P > 1
                seqpar_test::check_exact_maps<T>({P, H, H_kv, B, S, D, layout, shard_strategy::contiguous},
                                                 memory_space::device);
      }
  seqpar_test::check_exact_maps<T>({4, 8, 2, 2, 16, 8, order::bshd, shard_strategy::zigzag}, memory_space::device);
}

TEST_CASE("all_to_all_heads on the GPU: the inverse is the adjoint, GQA sums included") {
  for (int P : {2, 3, 4, 8})
    for (int H_kv : {1, 2, 8})
      seqpar_test::check_adjoint({P, 8, H_kv, 2, 2 * P + 1, 8, order::bshd, shard_strategy::contiguous},
                                 memory_space::device);
}

TEST_CASE_TEMPLATE("seq_shard and seq_unshard on the GPU match the host copies", T, float, __half) {
  const std::int64_t B = 2, S = 24, H = 3;
  for (std::int64_t D : {5, 16})
    for (auto strategy : {shard_strategy::contiguous, shard_strategy::zigzag})
      for (int P : {1, 3, 4}) {
        const auto part = seqpar::make_seq_partition(S, P, strategy);
        std::vector<T> global(B * S * H * D);
        for (std::size_t i = 0; i < global.size(); ++i) global[i] = seqpar_test::tagged<T>(i);
        seqpar_test::buffer<T> g_dev(memory_space::device, global);
        seqpar_test::buffer<T> rebuilt(memory_space::device, std::vector<T>(global.size(), seqpar_test::poison<T>()));
        const auto g = seqpar::make_sbhd<const T>(g_dev.data(), B, S, H, D);
        for (int r = 0; r < P; ++r) {
          std::vector<T> want(B * part.size(r) * H * D);
          seqpar::seq_shard(part, r,
                            seqpar::seq_shard_args<T>{.global = seqpar::make_sbhd<const T>(global.data(), B, S, H, D),
                                                      .shard = seqpar::make_bshd(want.data(), B, part.size(r), H, D)});
          seqpar_test::buffer<T> shard(memory_space::device, std::vector<T>(want.size(), seqpar_test::poison<T>()));
          const auto local = seqpar::make_bshd(shard.data(), B, part.size(r), H, D);
          seqpar::detail::group_shard_copy<true>(memory_space::device, part, r, g, local, nullptr);
          seqpar::detail::group_shard_copy<false>(memory_space::device, part, r, seqpar::tensor_view<const T>(local),
                                                  seqpar::make_sbhd(rebuilt.data(), B, S, H, D), nullptr);
          SEQPAR_CUDA_TRY(cudaDeviceSynchronize());
          CHECK(seqpar_test::first_mismatch(shard.values(), want) == -1);
        }
        CHECK(seqpar_test::first_mismatch(rebuilt.values(), global) == -1);
      }
}
