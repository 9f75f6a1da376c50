// Attention work saved by packed-document masking for a long-tailed length mix (document_mix.hpp)
// against the same total length as one document:
// - BM_document_work: the score pairs (and so FLOPs: 4 D per pair forward, 2.5 times that backward)
//   with and without the documents, S = 8K to 1M; its time is building the checked layout;
// - BM_ring_documents: the ring_attention layer on 4 in-process ranks (host, reference policy in
//   double, causal, zigzag), forward and backward, packed against one document: block pairs that
//   share no document are skipped, the rest masked.
#include "document_mix.hpp"

#include <seqpar/comm/in_process.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>

#include <benchmark/benchmark.h>

#include <vector>

namespace {

void BM_document_work(benchmark::State& state) {
  const std::int64_t S = state.range(0) << 10;
  const auto docs = seqpar_bench::long_tailed_documents(S);
  const std::vector<std::int32_t> cu(docs.cu_seqlens().begin(), docs.cu_seqlens().end());
  for (auto _ : state) benchmark::DoNotOptimize(seqpar::make_document_layout(cu, S));
  const double packed = seqpar_bench::score_pairs(docs, S, true), whole = seqpar_bench::score_pairs({}, S, true);
  state.counters["documents"] = docs.count();
  state.counters["causal_pairs"] = packed;
  state.counters["work_fraction"] = packed / whole;
}
BENCHMARK(BM_document_work)->ArgName("Ktokens")->RangeMultiplier(8)->Range(8, 1024)->Unit(benchmark::kMicrosecond);

void BM_ring_documents(benchmark::State& state) {
  const std::int64_t S = state.range(0), H = 2, D = 16;
  const int P = 4;
  const bool packed = state.range(1) != 0;
  const auto docs = packed ? seqpar_bench::long_tailed_documents(S) : seqpar::document_layout{};
  const auto part = seqpar::make_seq_partition(S, P, seqpar::shard_strategy::zigzag);
  for (auto _ : state)
    seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& comm) {
      seqpar::ring_attention layer(seqpar::reference_attention{}, comm, part, {.batch = 1, .heads = H, .head_dim = D},
                                   seqpar::elements<float>, {.causal = true});
      const std::int64_t n = part.size(comm.rank());
      std::vector<float> x(n * H * D, 0.25f), o(x.size()), dq(x.size()), dk(x.size()), dv(x.size());
      const auto in = seqpar::make_bshd<const float>(x.data(), 1, n, H, D);
      auto out = [&](std::vector<float>& y) { return seqpar::make_bshd(y.data(), 1, n, H, D); };
      const auto saved = layer.forward({.q = in, .k = in, .v = in, .o = out(o), .documents = &docs}, {.stream = nullptr});
      layer.backward(saved, {.dout = in, .dq = out(dq), .dk = out(dk), .dv = out(dv)}, {.stream = nullptr});
    });
  state.counters["documents"] = docs.count();
  state.counters["work_fraction"] = seqpar_bench::score_pairs(docs, S, true) / seqpar_bench::score_pairs({}, S, true);
}
BENCHMARK(BM_ring_documents)
    ->ArgNames({"S", "packed"})
    ->Args({2048, 0})
    ->Args({2048, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
