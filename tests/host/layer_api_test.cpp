// The layer API: saved contexts (several forwards in flight), memory held between calls, caller
// workspaces, the default softmax scale, and shapes by name.
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/in_process.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <random>
#include <sstream>
#include <vector>

using seqpar::memory_space;

namespace {

//! The default resource, counting the bytes it has handed out and not yet taken back.
struct counted_resource {
  std::shared_ptr<std::atomic<long>> live = std::make_shared<std::atomic<long>>(0);
  void* allocate(std::size_t bytes, memory_space where) const {
    *live += static_cast<long>(bytes);
    return seqpar::default_memory_resource{}.allocate(bytes, where);
  }
  void deallocate(void* p, std::size_t bytes, memory_space where) const {
    *live -= static_cast<long>(bytes);
    seqpar::default_memory_resource{}.deallocate(p, bytes, where);
  }
};
static_assert(seqpar::memory_resource<counted_resource>);

constexpr int P = 3, H = 4, H_kv = 2;
constexpr std::int64_t B = 2, S = 7, D = 4;

seqpar::tensor_view<const float> cview(const std::vector<float>& x, std::int64_t n, std::int64_t h,
                                       std::int64_t d = D) {
  return seqpar::make_bshd<const float>(x.data(), B, n, h, d);
}
seqpar::tensor_view<float> view(std::vector<float>& x, std::int64_t n, std::int64_t h, std::int64_t d = D) {
  return seqpar::make_bshd(x.data(), B, n, h, d);
}

}  // namespace

TEST_CASE("ulysses_attention: two forwards in flight, backwards in reverse order, equal one at a time") {
  const auto part = seqpar::make_seq_partition(S, P);
  const seqpar::attention_shape shape{.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D};
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const std::int64_t n = part.size(comm.rank());
    counted_resource resource;
    seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part, shape, seqpar::elements<float>,
                                    {.causal = true}, seqpar::ulysses_options{}, resource);
    CHECK(*resource.live == 0);  // the layer itself holds no activation buffers
    std::vector<std::vector<float>> q, kv, dout;
    for (unsigned m = 0; m < 2; ++m) {
      q.push_back(seqpar_test::uniform_floats(B * n * H * D, 10 * m + comm.rank()));
      kv.push_back(seqpar_test::uniform_floats(B * n * H_kv * D, 10 * m + 5 + comm.rank()));
      dout.push_back(seqpar_test::uniform_floats(B * n * H * D, 10 * m + 7 + comm.rank()));
    }
    auto grads = [&](int m, const auto& saved) {
      std::vector<float> dq(B * n * H * D), dk(B * n * H_kv * D), dv(dk.size());
      layer.backward(saved,
                     {.dout = cview(dout[m], n, H), .dq = view(dq, n, H), .dk = view(dk, n, H_kv),
                      .dv = view(dv, n, H_kv)},
                     {.stream = nullptr});
      return std::vector<std::vector<float>>{dq, dk, dv};
    };
    std::vector<float> o0(B * n * H * D), o1(o0.size());
    // One at a time.
    std::vector<std::vector<std::vector<float>>> want;
    for (int m = 0; m < 2; ++m) {
      std::vector<float> o(o0.size());
      const auto saved = layer.forward(
          {.q = cview(q[m], n, H), .k = cview(kv[m], n, H_kv), .v = cview(kv[m], n, H_kv), .o = view(o, n, H)},
          {.stream = nullptr});
      want.push_back(grads(m, saved));
    }
    CHECK(*resource.live == 0);
    // Interleaved: both forwards first, backwards in reverse order.
    auto saved0 = layer.forward(
        {.q = cview(q[0], n, H), .k = cview(kv[0], n, H_kv), .v = cview(kv[0], n, H_kv), .o = view(o0, n, H)},
        {.stream = nullptr});
    const auto saved1 = layer.forward(
        {.q = cview(q[1], n, H), .k = cview(kv[1], n, H_kv), .v = cview(kv[1], n, H_kv), .o = view(o1, n, H)},
        {.stream = nullptr});
    CHECK(*resource.live == static_cast<long>(2 * layer.context_bytes()));
    CHECK(saved0.bytes() == layer.context_bytes());
    CHECK(grads(1, saved1) == want[1]);
    CHECK(grads(0, saved0) == want[0]);
    saved0 = {};
    CHECK(*resource.live == static_cast<long>(layer.context_bytes()));
  });
}

TEST_CASE("ulysses_attention: a caller workspace gives the same results; too small a one is refused") {
  const auto part = seqpar::make_seq_partition(S, P);
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const std::int64_t n = part.size(comm.rank());
    counted_resource resource;
    seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part,
                                    {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, seqpar::elements<float>,
                                    {}, seqpar::ulysses_options{}, resource);
    using layer_type = decltype(layer);
    const std::size_t forward_bytes = layer.workspace_bytes(layer_type::forward_args{}),
                      backward_bytes = layer.workspace_bytes(layer_type::backward_args{});
    const auto q = seqpar_test::uniform_floats(B * n * H * D, 1 + comm.rank()), kv = seqpar_test::uniform_floats(B * n * H_kv * D, 9 + comm.rank());
    std::vector<float> o1(q.size()), o2(q.size()), dq1(q.size()), dq2(q.size()), dk1(kv.size()), dk2(kv.size()),
        dv1(kv.size()), dv2(kv.size());
    std::vector<float> ws(backward_bytes / sizeof(float) + 1);
    const auto bytes = std::as_writable_bytes(std::span(ws));
    CHECK(forward_bytes <= backward_bytes);
    {
      const auto a = layer.forward(
          {.q = cview(q, n, H), .k = cview(kv, n, H_kv), .v = cview(kv, n, H_kv), .o = view(o1, n, H)},
          {.stream = nullptr});
      layer.backward(a,
                     {.dout = cview(q, n, H), .dq = view(dq1, n, H), .dk = view(dk1, n, H_kv),
                      .dv = view(dv1, n, H_kv)},
                     {.stream = nullptr});
    }
    const long before = *resource.live;
    const auto b = layer.forward(
        {.q = cview(q, n, H), .k = cview(kv, n, H_kv), .v = cview(kv, n, H_kv), .o = view(o2, n, H),
         .workspace = bytes},
        {.stream = nullptr});
    CHECK(*resource.live - before == static_cast<long>(layer.context_bytes()));  // no exchange buffers taken
    layer.backward(b,
                   {.dout = cview(q, n, H), .dq = view(dq2, n, H), .dk = view(dk2, n, H_kv),
                    .dv = view(dv2, n, H_kv), .workspace = bytes},
                   {.stream = nullptr});
    CHECK(o1 == o2);
    CHECK(dq1 == dq2);
    CHECK(dk1 == dk2);
    CHECK(dv1 == dv2);
    CHECK_THROWS_WITH_AS(
        layer.backward(b,
                       {.dout = cview(q, n, H), .dq = view(dq2, n, H), .dk = view(dk2, n, H_kv),
                        .dv = view(dv2, n, H_kv), .workspace = bytes.first(forward_bytes)},
                       {.stream = nullptr}),
        doctest::Contains(
            ("workspace: expected at least workspace_bytes(args) = " + std::to_string(backward_bytes)).c_str()),
        seqpar::error);
  });
}

TEST_CASE("ulysses_attention: the default scale is 1 / sqrt(head_dim)") {
  const auto part = seqpar::make_seq_partition(S, P);
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const std::int64_t n = part.size(comm.rank());
    const seqpar::attention_shape shape{.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D};
    seqpar::ulysses_attention by_default(seqpar::reference_attention{}, comm, part, shape, seqpar::elements<float>);
    seqpar::ulysses_attention stated(seqpar::reference_attention{}, comm, part, shape, seqpar::elements<float>,
                                     {.scale = 0.5f});  // 1 / sqrt(4)
    seqpar::ulysses_attention other(seqpar::reference_attention{}, comm, part, shape, seqpar::elements<float>,
                                    {.scale = 0.25f});
    CHECK(by_default.options().scale == 0.5f);
    const auto q = seqpar_test::uniform_floats(B * n * H * D, 3 + comm.rank()), kv = seqpar_test::uniform_floats(B * n * H_kv * D, 4 + comm.rank());
    std::vector<float> a(q.size()), b(q.size()), c(q.size());
    auto args = [&](std::vector<float>& o) {
      return decltype(by_default)::forward_args{
          .q = cview(q, n, H), .k = cview(kv, n, H_kv), .v = cview(kv, n, H_kv), .o = view(o, n, H)};
    };
    (void)by_default.forward(args(a), {.stream = nullptr});
    (void)stated.forward(args(b), {.stream = nullptr});
    (void)other.forward(args(c), {.stream = nullptr});
    CHECK(a == b);
    CHECK(a != c);
  });
}

TEST_CASE("ulysses_attention: a context of a layer with other shapes is refused") {
  const auto part = seqpar::make_seq_partition(S, P);
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const std::int64_t n = part.size(comm.rank());
    seqpar::ulysses_attention causal(seqpar::reference_attention{}, comm, part,
                                     {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, seqpar::elements<float>,
                                     {.causal = true});
    seqpar::ulysses_attention plain(seqpar::reference_attention{}, comm, part,
                                    {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, seqpar::elements<float>);
    const auto q = seqpar_test::uniform_floats(B * n * H * D, 1), kv = seqpar_test::uniform_floats(B * n * H_kv * D, 2);
    std::vector<float> o(q.size()), dq(q.size()), dk(kv.size()), dv(kv.size());
    const auto saved = causal.forward(
        {.q = cview(q, n, H), .k = cview(kv, n, H_kv), .v = cview(kv, n, H_kv), .o = view(o, n, H)},
        {.stream = nullptr});
    CHECK_THROWS_WITH_AS(plain.backward(saved,
                                        {.dout = cview(q, n, H), .dq = view(dq, n, H), .dk = view(dk, n, H_kv),
                                         .dv = view(dv, n, H_kv)},
                                        {.stream = nullptr}),
                         doctest::Contains("saved: a context of a layer with other shapes"), seqpar::error);
  });
}

TEST_CASE("lasp_attention: two forwards in flight, backwards in reverse order, equal one at a time") {
  const std::int64_t E = 3;
  const auto part = seqpar::make_seq_partition(S, P);
  for (auto strategy : {seqpar::lasp_strategy::chain, seqpar::lasp_strategy::all_gather})
    seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
      const std::int64_t n = part.size(comm.rank());
      counted_resource resource;
      seqpar::lasp_attention layer(seqpar::linear_reference{}, comm, part,
                                   {.batch = B, .heads = H, .head_dim = D, .value_dim = E}, seqpar::elements<float>,
                                   {0.9f, 1.f, 0.5f, 0.99f}, strategy, resource);
      CHECK(*resource.live == 0);
      std::vector<std::vector<float>> q, k, v, dout;
      for (unsigned m = 0; m < 2; ++m) {
        q.push_back(seqpar_test::uniform_floats(B * n * H * D, 10 * m + comm.rank()));
        k.push_back(seqpar_test::uniform_floats(B * n * H * D, 10 * m + 3 + comm.rank()));
        v.push_back(seqpar_test::uniform_floats(B * n * H * E, 10 * m + 5 + comm.rank()));
        dout.push_back(seqpar_test::uniform_floats(B * n * H * E, 10 * m + 7 + comm.rank()));
      }
      auto forward = [&](int m, std::vector<float>& o) {
        return layer.forward(
            {.q = cview(q[m], n, H), .k = cview(k[m], n, H), .v = cview(v[m], n, H, E), .o = view(o, n, H, E)},
            {.stream = nullptr});
      };
      auto grads = [&](int m, const auto& saved) {
        std::vector<float> dq(B * n * H * D), dk(dq.size()), dv(B * n * H * E);
        layer.backward(saved,
                       {.dout = cview(dout[m], n, H, E), .dq = view(dq, n, H), .dk = view(dk, n, H),
                        .dv = view(dv, n, H, E)},
                       {.stream = nullptr});
        return std::vector<std::vector<float>>{dq, dk, dv};
      };
      std::vector<std::vector<std::vector<float>>> want;
      std::vector<float> o0(B * n * H * E), o1(o0.size());
      for (int m = 0; m < 2; ++m) want.push_back(grads(m, forward(m, m ? o1 : o0)));
      const auto saved0 = forward(0, o0);
      const auto saved1 = forward(1, o1);
      CHECK(*resource.live == static_cast<long>(2 * layer.context_bytes()));
      CHECK(grads(1, saved1) == want[1]);
      CHECK(grads(0, saved0) == want[0]);
    });
}

TEST_CASE("call_checks: group agrees in one control call per layer call; local makes none") {
  const auto part = seqpar::make_seq_partition(S, P);
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& inner) {
    seqpar::counting_communicator comm(inner);
    const std::int64_t n = part.size(comm.rank());
    seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part,
                                    {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, seqpar::elements<float>);
    CHECK(comm.control_calls() == 2);  // construction: the arguments, then the fingerprint
    const auto q = seqpar_test::uniform_floats(B * n * H * D, 1), kv = seqpar_test::uniform_floats(B * n * H_kv * D, 2);
    std::vector<float> o(q.size()), dq(q.size()), dk(kv.size()), dv(kv.size());
    using layer_type = decltype(layer);
    const layer_type::forward_args fwd{
        .q = cview(q, n, H), .k = cview(kv, n, H_kv), .v = cview(kv, n, H_kv), .o = view(o, n, H)};
    const layer_type::backward_args bwd{
        .dout = cview(q, n, H), .dq = view(dq, n, H), .dk = view(dk, n, H_kv), .dv = view(dv, n, H_kv)};
    auto saved = layer.forward(fwd, {.stream = nullptr});
    layer.backward(saved, bwd, {.stream = nullptr});
    CHECK(comm.control_calls() == 4);
    const auto payload = comm.bytes_sent();
    const seqpar::execution local{.stream = nullptr, .checks = seqpar::call_checks::local};
    saved = layer.forward(fwd, local);
    layer.backward(saved, bwd, local);
    CHECK(comm.control_calls() == 4);
    CHECK(comm.bytes_sent() == 2 * payload);  // the same payload either way
  });
}

TEST_CASE("attention_shape: names every size, resolves defaults, and checks the GQA rule") {
  const seqpar::attention_shape mha{.batch = 2, .heads = 8, .head_dim = 64};
  CHECK(mha.kv() == 8);
  CHECK(mha.values() == 64);
  std::ostringstream os;
  os << mha;
  CHECK(os.str() == "{batch = 2, heads = 8, kv_heads = 8, head_dim = 64, value_dim = 64}");
  CHECK_THROWS_WITH_AS(
      seqpar::check_attention_shape({.batch = 1, .heads = 8, .kv_heads = 3, .head_dim = 64}),
      doctest::Contains("shape.kv_heads: expected a divisor of heads = 8 (GQA groups of equal size), got 3"),
      seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::check_attention_shape({.batch = 0, .heads = 8, .head_dim = 64}),
                       doctest::Contains("shape.batch: expected at least 1, got 0"), seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::make_all_to_all_heads_plan(0, seqpar::make_seq_partition(8, 2),
                                                          {.batch = 1, .heads = 8, .head_dim = 64, .value_dim = 32},
                                                          seqpar::dtype::bfloat16),
                       doctest::Contains("shape.value_dim: the Ulysses exchange moves q, k and v of one head size"),
                       seqpar::error);
}
