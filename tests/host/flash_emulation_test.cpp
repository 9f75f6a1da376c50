// The flash_attention policy on the host, its kernels under an emulated warp (one std::thread per
// CUDA thread, mma.sync from the PTX fragment tables), against reference_attention in double: the
// policy's own launch planning and every fragment layout, mask, tile edge and softmax rescale of the
// real kernel code, without a GPU.
// Tolerances: 2e-3 (half) and 2e-2 (bfloat16) of the largest reference magnitude; lse 1e-4.
#include <seqpar_test/warp_emulation.hpp>  // first: the kernel headers below compile as host code

#include <seqpar/documents.hpp>
#include <seqpar/policy/flash_attention.cuh>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_pass.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>
#include <seqpar_test/host_tensor.hpp>
#include <seqpar_test/recording_layer.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

// Kernel parameters of the flash and Ulysses pack kernels that hold no pointer, for the recording launcher.
template <>
inline constexpr bool seqpar_test::pointer_free<seqpar::gqa_map> = true;
template <>
inline constexpr bool seqpar_test::pointer_free<seqpar::detail::heads_geometry> = true;
template <>
inline constexpr bool seqpar_test::pointer_free<seqpar::detail::device::row_walk> = true;

namespace {
template <class T>
using tensor = seqpar_test::host_tensor<T>;
using seqpar_test::relative_gap;

struct flash_case {
  std::int64_t B, S;
  int H, H_kv;
  bool causal;
  std::int64_t pad;
  float q_amp;  // > 1 sharpens the softmax, so the running max moves between key tiles
};

// o, dq, dk, dv (of element type T, or fp32 accumulators) against the reference's, within
// 2e-3 (half) or 2e-2 (bfloat16) of the largest reference magnitude; lse within 1e-4.
template <class T, class Got>
void check_outputs(const std::array<const tensor<Got>*, 4>& got, const std::array<const tensor<T>*, 4>& want,
                   const std::vector<float>& lse, const std::vector<float>& lse_ref) {
  const double tol = std::is_same_v<T, __half> ? 2e-3 : 2e-2;
  const char* names[] = {"o", "dq", "dk", "dv"};
  for (int w = 0; w < 4; ++w) {
    INFO(std::string(names[w]));
    CHECK(relative_gap(got[w]->view, want[w]->view) <= tol);
  }
  double lse_gap = 0;
  for (std::size_t i = 0; i < lse.size(); ++i) lse_gap = std::max(lse_gap, double(std::abs(lse[i] - lse_ref[i])));
  CHECK(lse_gap <= 1e-4);
}

template <class T, int D>
void check_flash(const flash_case& c, const seqpar::document_layout& docs = {}) {
  INFO("D=" << D << " B=" << c.B << " S=" << c.S << " H=" << c.H << " H_kv=" << c.H_kv << " causal=" << c.causal
            << " pad=" << c.pad);
  const tensor<T> q(c.B, c.S, c.H, D, c.pad, c.q_amp), k(c.B, c.S, c.H_kv, D, c.pad, 1), v(c.B, c.S, c.H_kv, D, c.pad, 1),
      dout(c.B, c.S, c.H, D, c.pad, 1);
  tensor<T> o(c.B, c.S, c.H, D, c.pad, 0), dq(c.B, c.S, c.H, D, c.pad, 0), dk(c.B, c.S, c.H_kv, D, c.pad, 0),
      dv(c.B, c.S, c.H_kv, D, c.pad, 0), o_ref(c.B, c.S, c.H, D, 0, 0), dq_ref(c.B, c.S, c.H, D, 0, 0),
      dk_ref(c.B, c.S, c.H_kv, D, 0, 0), dv_ref(c.B, c.S, c.H_kv, D, 0, 0);
  std::vector<float> lse(c.B * c.H * c.S, NAN), lse_ref(lse.size());
  const seqpar::lse_view l(lse.data(), c.B, c.H, c.S), l_ref(lse_ref.data(), c.B, c.H, c.S);
  const seqpar::gqa_map map{0, c.H / c.H_kv, 0};
  const seqpar::attention_options opt{static_cast<float>(1.0 / std::sqrt(double(D))), c.causal, docs.host_ids()};

  // Forward into o and lse, then backward from that o and lse (as a layer runs it), by `policy`.
  auto run = [&](const auto& policy, tensor<T>& o, tensor<T>& dq, tensor<T>& dk, tensor<T>& dv, seqpar::lse_view l) {
    policy.forward(
        seqpar::policy_forward_args<T>{
            .q = q.cview(), .k = k.cview(), .v = v.cview(), .o = o.view, .lse = l, .map = map, .options = opt},
        nullptr);
    policy.backward(seqpar::policy_backward_args<T>{.q = q.cview(),
                                                    .k = k.cview(),
                                                    .v = v.cview(),
                                                    .o = o.cview(),
                                                    .lse = seqpar::const_lse_view(l),
                                                    .dout = dout.cview(),
                                                    .dq = dq.view,
                                                    .dk = dk.view,
                                                    .dv = dv.view,
                                                    .map = map,
                                                    .options = opt},
                    nullptr);
  };
  run(seqpar::reference_attention{}, o_ref, dq_ref, dk_ref, dv_ref, l_ref);
  const seqpar::basic_flash_attention<seqpar_emulation::launcher> flash;
  run(flash, o, dq, dk, dv, l);
  CHECK(flash.launcher.within_shared);

  check_outputs<T, T>({&o, &dq, &dk, &dv}, {&o_ref, &dq_ref, &dk_ref, &dv_ref}, lse, lse_ref);
  // Padding between tokens stays poison: nothing was written outside the views.
  for (const auto* t : {&o, &dq, &dk, &dv}) CHECK(t->padding_untouched());
}
}  // namespace

TEST_CASE("flash_attention kernels under an emulated warp equal reference_attention") {
  // Several key tiles, ragged last tiles, GQA, causal and not, sharp softmax, both load paths.
  check_flash<__half, 64>({1, 100, 4, 2, true, 0, 3.0f});
  check_flash<__half, 64>({2, 70, 2, 1, false, 0, 1.0f});
  check_flash<__nv_bfloat16, 128>({1, 70, 2, 2, true, 1, 1.0f});
  check_flash<__nv_bfloat16, 64>({1, 33, 3, 1, false, 0, 3.0f});
  check_flash<__half, 128>({1, 150, 4, 1, true, 0, 2.0f});
  check_flash<__nv_bfloat16, 64>({2, 130, 2, 2, false, 3, 1.0f});
}

namespace {
// Cuts [0, n) at the given interior points into (first, length) blocks.
std::vector<std::pair<std::int64_t, std::int64_t>> cut(std::int64_t n, std::vector<std::int64_t> at) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  std::int64_t from = 0;
  at.push_back(n);
  for (std::int64_t c : at) out.emplace_back(from, c - from), from = c;
  return out;
}

template <class T>
void fill(const seqpar::tensor_view<T>& x, float value) {
  for (std::int64_t b = 0; b < x.batch(); ++b)
    for (std::int64_t s = 0; s < x.seq(); ++s)
      for (std::int64_t h = 0; h < x.heads(); ++h)
        for (std::int64_t d = 0; d < x.head_dim(); ++d) x(b, s, h, d) = seqpar::from_float<T>(value);
}

// The flash policy's block functions over every pair of query and key blocks the causal mask leaves,
// merged with the library's fp32 algebra, against reference_attention over the whole sequence.
template <class T, int D>
void check_flash_blocks(const flash_case& c, const seqpar::document_layout& docs,
                        const std::vector<std::int64_t>& q_cuts, const std::vector<std::int64_t>& kv_cuts) {
  INFO("D=" << D << " B=" << c.B << " S=" << c.S << " H=" << c.H << " H_kv=" << c.H_kv << " causal=" << c.causal
            << " pad=" << c.pad);
  using seqpar::detail::rows;
  const tensor<T> q(c.B, c.S, c.H, D, c.pad, c.q_amp), k(c.B, c.S, c.H_kv, D, c.pad, 1), v(c.B, c.S, c.H_kv, D, c.pad, 1),
      dout(c.B, c.S, c.H, D, c.pad, 1);
  tensor<T> o_ref(c.B, c.S, c.H, D, 0, 0), dq_ref(c.B, c.S, c.H, D, 0, 0), dk_ref(c.B, c.S, c.H_kv, D, 0, 0),
      dv_ref(c.B, c.S, c.H_kv, D, 0, 0), o_rounded(c.B, c.S, c.H, D, 0, 0);
  tensor<float> o(c.B, c.S, c.H, D, c.pad, 0), dq(c.B, c.S, c.H, D, c.pad, 0), dk(c.B, c.S, c.H_kv, D, c.pad, 0),
      dv(c.B, c.S, c.H_kv, D, c.pad, 0);
  for (auto* t : {&dq, &dk, &dv}) fill(t->view, 0.0f);
  std::vector<float> lse_ref(c.B * c.H * c.S), lse(lse_ref.size(), NAN);
  const seqpar::gqa_map map{0, c.H / c.H_kv, 0};
  const seqpar::attention_options opt{.causal = c.causal, .documents = docs.host_ids()};

  const seqpar::reference_attention ref;
  ref.forward(seqpar::policy_forward_args<T>{.q = q.cview(),
                                             .k = k.cview(),
                                             .v = v.cview(),
                                             .o = o_ref.view,
                                             .lse = seqpar::lse_view(lse_ref.data(), c.B, c.H, c.S),
                                             .map = map,
                                             .options = opt},
              nullptr);
  ref.backward(seqpar::policy_backward_args<T>{.q = q.cview(),
                                               .k = k.cview(),
                                               .v = v.cview(),
                                               .o = o_ref.cview(),
                                               .lse = seqpar::const_lse_view(lse_ref.data(), c.B, c.H, c.S),
                                               .dout = dout.cview(),
                                               .dq = dq_ref.view,
                                               .dk = dk_ref.view,
                                               .dv = dv_ref.view,
                                               .map = map,
                                               .options = opt},
               nullptr);

  const seqpar::basic_flash_attention<seqpar_emulation::launcher> flash;
  int pairs = 0, diagonal = 0;
  for (auto [q0, nq] : cut(c.S, q_cuts)) {
    std::vector<float> lse_q(c.B * c.H * nq, -INFINITY), part_lse(lse_q.size());
    tensor<float> part(c.B, nq, c.H, D, 0, 0);
    const auto o_q = rows(o.view, q0, nq);
    fill(o_q, 0.0f);
    for (auto [k0, nk] : cut(c.S, kv_cuts)) {
      const auto relation = seqpar::causal_relation(q0, nq, k0, nk, c.causal);
      if (relation == seqpar::block_relation::masked) continue;
      ++pairs, diagonal += relation == seqpar::block_relation::diagonal;
      flash.block_forward(seqpar::block_forward_args<T>{.q = rows(q.cview(), q0, nq),
                                                        .k = rows(k.cview(), k0, nk),
                                                        .v = rows(v.cview(), k0, nk),
                                                        .o_part = part.view,
                                                        .lse_part = seqpar::lse_view(part_lse.data(), c.B, c.H, nq),
                                                        .map = map,
                                                        .options = opt,
                                                        .pair = {q0, k0, relation}},
                          nullptr);
      seqpar::merge_partial(o_q, seqpar::lse_view(lse_q.data(), c.B, c.H, nq), part.cview(),
                            seqpar::const_lse_view(part_lse.data(), c.B, c.H, nq));
    }
    for (std::int64_t b = 0; b < c.B; ++b)
      for (int h = 0; h < c.H; ++h)
        for (std::int64_t i = 0; i < nq; ++i) lse[(b * c.H + h) * c.S + q0 + i] = lse_q[(b * c.H + h) * nq + i];
  }
  // Backward from the merged lse and the row dots of the output rounded to T, as the ring runs it.
  seqpar::detail::copy_view(o.cview(), o_rounded.view);
  std::vector<float> dots(lse.size(), 0.0f);
  for (std::int64_t b = 0; b < c.B; ++b)
    for (std::int64_t i = 0; i < c.S; ++i)
      for (int h = 0; h < c.H; ++h)
        for (int d = 0; d < D; ++d)
          dots[(b * c.H + h) * c.S + i] +=
              seqpar::to_float(dout.view(b, i, h, d)) * seqpar::to_float(o_rounded.view(b, i, h, d));
  for (auto [q0, nq] : cut(c.S, q_cuts)) {
    std::vector<float> lse_q(c.B * c.H * nq), dots_q(lse_q.size());
    for (std::int64_t b = 0; b < c.B; ++b)
      for (int h = 0; h < c.H; ++h)
        for (std::int64_t i = 0; i < nq; ++i) {
          lse_q[(b * c.H + h) * nq + i] = lse[(b * c.H + h) * c.S + q0 + i];
          dots_q[(b * c.H + h) * nq + i] = dots[(b * c.H + h) * c.S + q0 + i];
        }
    for (auto [k0, nk] : cut(c.S, kv_cuts)) {
      const auto relation = seqpar::causal_relation(q0, nq, k0, nk, c.causal);
      if (relation == seqpar::block_relation::masked) continue;
      flash.block_backward(
          seqpar::block_backward_args<T>{.q = rows(q.cview(), q0, nq),
                                         .k = rows(k.cview(), k0, nk),
                                         .v = rows(v.cview(), k0, nk),
                                         .dout = rows(dout.cview(), q0, nq),
                                         .lse = seqpar::const_lse_view(lse_q.data(), c.B, c.H, nq),
                                         .row_dots = seqpar::const_lse_view(dots_q.data(), c.B, c.H, nq),
                                         .dq = rows(dq.view, q0, nq),
                                         .dk = rows(dk.view, k0, nk),
                                         .dv = rows(dv.view, k0, nk),
                                         .map = map,
                                         .options = opt,
                                         .pair = {q0, k0, relation}},
          nullptr);
    }
  }
  CHECK(flash.launcher.within_shared);
  CHECK(pairs > 2);
  if (c.causal) CHECK(diagonal > 0);
  check_outputs<T, float>({&o, &dq, &dk, &dv}, {&o_ref, &dq_ref, &dk_ref, &dv_ref}, lse, lse_ref);
  for (const auto* t : {&o, &dq, &dk, &dv}) CHECK(t->padding_untouched());
}
}  // namespace

TEST_CASE("flash_attention block functions under an emulated warp: block pairs merged equal reference_attention") {
  // Cuts off the 64-row tiles, a key block straddling the diagonal, blocks shorter than a tile.
  check_flash_blocks<__half, 64>({1, 150, 2, 1, true, 0, 3.0f}, {}, {70, 100}, {40, 100, 130});
  check_flash_blocks<__half, 64>({2, 90, 2, 2, false, 1, 1.0f}, {}, {30}, {50, 61});
  check_flash_blocks<__nv_bfloat16, 128>({1, 96, 4, 2, true, 0, 2.0f}, {}, {24, 48, 72}, {24, 48, 72});  // zigzag-like
}

TEST_CASE("flash_attention under an emulated warp with packed documents: masked, other documents' tiles skipped") {
  // The reference masks by document too (checked against each document alone in documents_test).
  const std::vector<std::int32_t> lengths{64, 1, 63, 22};  // whole 64-row tiles of one document: skipped pairs
  const auto docs = seqpar::documents_of_lengths(lengths);
  check_flash<__half, 64>({1, 150, 2, 1, true, 0, 2.0f}, docs);
  check_flash<__nv_bfloat16, 64>({1, 150, 2, 2, false, 0, 1.0f}, docs);
  check_flash_blocks<__half, 64>({1, 150, 2, 1, true, 0, 2.0f}, docs, {70, 100}, {40, 100, 130});
}

namespace {
// A layer's whole device path on rank `rank`, recorded: forward, the caller reading o and writing
// the inputs anew on its stream, then backward and the gradients read. `make` builds the layer
// over (policy, comm, seq, shape, resource). Returns the log.
template <class T, class Make>
std::shared_ptr<seqpar_test::stream_order_log> record_softmax_layer(
    int rank, int P, int H, int H_kv, bool joins, Make&& make,
    seqpar::shard_strategy sharding = seqpar::shard_strategy::contiguous) {
  constexpr std::int64_t B = 1, S = 128;
  constexpr int D = 64;
  seqpar::basic_flash_attention<seqpar_test::recording_launcher> policy{};
  policy.launcher.joins = joins;
  const auto log = policy.launcher.log;
  seqpar_test::recording_communicator comm(log, rank, P);
  const auto seq = seqpar::make_seq_partition(S, P, sharding);
  const std::int64_t C = seq.size(rank);
  auto layer = make(policy, comm, seq, seqpar::attention_shape{.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D},
                    seqpar_test::recording_resource{log});
  const tensor<T> q(B, C, H, D, 0, 0.5f), k(B, C, H_kv, D, 0, 0.5f), v(B, C, H_kv, D, 0, 0.5f),
      dout(B, C, H, D, 0, 0.5f);
  tensor<T> o(B, C, H, D, 0, 0), dq(B, C, H, D, 0, 0), dk(B, C, H_kv, D, 0, 0), dv(B, C, H_kv, D, 0, 0);
  const auto stream = log->stream("stream");
  const seqpar::execution exec{.stream = stream, .checks = seqpar::call_checks::local};
  seqpar_test::record_step<T>(
      *log, stream, {{q.cview(), "q"}, {k.cview(), "k"}, {v.cview(), "v"}, {dout.cview(), "dout"}},
      {{o.view, "o"}, {dq.view, "dq"}, {dk.view, "dk"}, {dv.view, "dv"}},
      [&] { return layer.forward({.q = q.cview(), .k = k.cview(), .v = v.cview(), .o = o.view}, exec); },
      [&](const auto& saved) {
        layer.backward(saved, {.dout = dout.cview(), .dq = dq.view, .dk = dk.view, .dv = dv.view}, exec);
      });
  return log;
}

// A Ulysses layer of `groups` head groups on rank `rank` of `P`, recorded.
template <class T>
std::shared_ptr<seqpar_test::stream_order_log> record_ulysses(int rank, int P, int H, int H_kv, int groups,
                                                              bool joins = true) {
  return record_softmax_layer<T>(
      rank, P, H, H_kv, joins,
      [&](const auto& policy, auto& comm, const auto& seq, const auto& shape, const auto& resource) {
        using policy_type = std::remove_cvref_t<decltype(policy)>;
        using comm_type = std::remove_cvref_t<decltype(comm)>;
        return seqpar::ulysses_attention<policy_type, comm_type, T, seqpar_test::recording_resource>(
            policy, comm, seq, shape, seqpar::elements<T>, {.causal = true}, {.head_groups = groups}, resource);
      });
}

// A ring layer on rank `rank` of `P`, recorded.
template <class T>
std::shared_ptr<seqpar_test::stream_order_log> record_ring(int rank, int P, seqpar::shard_strategy sharding,
                                                           bool joins = true) {
  return record_softmax_layer<T>(
      rank, P, 4, 2, joins,
      [&](const auto& policy, auto& comm, const auto& seq, const auto& shape, const auto& resource) {
        using policy_type = std::remove_cvref_t<decltype(policy)>;
        using comm_type = std::remove_cvref_t<decltype(comm)>;
        return seqpar::ring_attention<policy_type, comm_type, T, seqpar_test::recording_resource>(
            policy, comm, seq, shape, seqpar::elements<T>, {.causal = true}, resource);
      },
      sharding);
}
}  // namespace

TEST_CASE("ring_attention keeps its stream order on every rank (recording launcher and communicator)") {
  for (auto sharding : {seqpar::shard_strategy::contiguous, seqpar::shard_strategy::zigzag})
    for (int rank = 0; rank < 4; ++rank) {
      INFO(seqpar::to_string(sharding) << ", rank " << rank << " of 4");
      const auto log = record_ring<__half>(rank, 4, sharding);
      CHECK_MESSAGE(log->findings().empty(), log->report());
    }
}

TEST_CASE("the recording finds a ring layer whose side stream is never joined") {
  const auto log = record_ring<__half>(2, 4, seqpar::shard_strategy::contiguous, /*joins=*/false);
  CHECK_MESSAGE(log->report().find("not ordered after") != std::string::npos, log->report());
}

TEST_CASE("ulysses_attention keeps its stream order in head groups (recording launcher and communicator)") {
  for (int groups : {1, 2, 4})
    for (int rank = 0; rank < 2; ++rank) {
      INFO(groups << " head groups, rank " << rank << " of 2");
      const auto log = record_ulysses<__half>(rank, 2, 8, 8, groups);
      CHECK_MESSAGE(log->findings().empty(), log->report());
    }
  // Grouped-query heads: 8 query heads reading 4 kv heads, 2 groups of one kv head a rank each.
  const auto gqa = record_ulysses<__nv_bfloat16>(1, 2, 8, 4, 2);
  CHECK_MESSAGE(gqa->findings().empty(), gqa->report());
}

TEST_CASE("the recording finds a Ulysses layer whose side stream is never joined") {
  const auto log = record_ulysses<__half>(0, 2, 8, 8, 2, /*joins=*/false);
  CHECK_MESSAGE(log->report().find("not ordered after") != std::string::npos, log->report());
}
