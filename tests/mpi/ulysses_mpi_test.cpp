// all_to_all_heads over the MPI backend: the Q/K/V forward exchange lands every element where the
// maps say, with uneven heads, GQA and uneven shards, one process per rank.
#include <seqpar/comm/mpi.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>
#include <seqpar_test/ulysses_reference.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <vector>

namespace {
float encoded(int rank, int which, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
  return seqpar_test::tagged<float>(seqpar_test::key_of(rank * 4 + which, b, s, h * 64 + d));
}
}  // namespace

TEST_CASE("mpi: all_to_all_heads forward (Q/K/V, H = 7, H_kv = 7 and 1, uneven S) and the Q inverse") {
  seqpar::mpi_communicator comm(MPI_COMM_WORLD);
  const int P = comm.size(), r = comm.rank();
  const std::int64_t B = 2, S = 3 * P + 1, D = 3;
  for (int H_kv : {7, 1}) {
    const int H = 7;
    const seqpar_test::token_owners tok(S, P, seqpar::shard_strategy::contiguous);
    const seqpar_test::head_owners heads(H, H_kv, P);
    const auto plan = seqpar::make_all_to_all_heads_plan(r, seqpar::make_seq_partition(S, P),
                                                         {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D},
                                                         seqpar::dtype::float32);
    const std::int64_t S_r = tok.sizes[r];
    std::vector<std::vector<float>> in(3), out(3);
    for (int w = 0; w < 3; ++w) {
      const int h_in = w ? H_kv : H, h_out = w ? heads.kv_count[r] : heads.count[r];
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t s = 0; s < S_r; ++s)
          for (int h = 0; h < h_in; ++h)
            for (std::int64_t d = 0; d < D; ++d) in[w].push_back(encoded(r, w, b, s, h, d));
      out[w].assign(B * S * h_out * D, seqpar_test::poison<float>());
    }
    std::vector<std::byte> ws(plan.workspace_bytes());
    auto cin = [&](int w) { return seqpar::make_bshd<const float>(in[w].data(), B, S_r, w ? H_kv : H, D); };
    auto vout = [&](int w) {
      return seqpar::make_bshd(out[w].data(), B, S, w ? heads.kv_count[r] : heads.count[r], D);
    };
    seqpar::all_to_all_heads(plan, comm,
                             seqpar::qkv_exchange_args<float>{
                                 .in = {cin(0), cin(1), cin(2)}, .out = {vout(0), vout(1), vout(2)}, .workspace = ws},
                             {.stream = nullptr});
    long wrong = 0;
    for (int j = 0; j < P; ++j)
      for (std::int64_t s = 0; s < tok.sizes[j]; ++s)
        for (std::int64_t b = 0; b < B; ++b)
          for (std::int64_t d = 0; d < D; ++d) {
            const std::int64_t g = tok.global_of[j][s];
            for (int h = 0; h < heads.count[r]; ++h)
              wrong += !seqpar_test::same_bits(vout(0)(b, g, h, d), encoded(j, 0, b, s, heads.first[r] + h, d));
            for (int h = 0; h < heads.kv_count[r]; ++h)
              for (int w = 1; w < 3; ++w)
                wrong += !seqpar_test::same_bits(vout(w)(b, g, h, d), encoded(j, w, b, s, heads.kv_first[r] + h, d));
          }
    CHECK(wrong == 0);

    std::vector<float> back(in[0].size(), seqpar_test::poison<float>());
    seqpar::all_to_all_heads_inverse(
        plan, comm,
        seqpar::heads_exchange_args<float>{.in = seqpar::tensor_view<const float>(vout(0)),
                                           .out = seqpar::make_bshd(back.data(), B, S_r, H, D),
                                           .workspace = ws},
        {.stream = nullptr});
    CHECK(seqpar_test::first_mismatch(back, in[0]) == -1);
  }
}
