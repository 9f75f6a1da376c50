// The call shape every layer shares: can_run names the reason of each refusal (the checks the call
// runs), workspace_bytes(args) is what a call takes from its resource and all it needs from a
// caller's workspace, and a policy that does not declare packed documents is never handed them.
#include <seqpar/comm/in_process.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/gated_linear_reference.hpp>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>
#include <seqpar_test/all_or_nothing.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

using seqpar::memory_space;

namespace {

constexpr int P = 4, H = 4, H_kv = 2;
constexpr std::int64_t B = 2, S = 12, D = 4;
const seqpar::attention_shape attention{.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D};
const seqpar::attention_shape linear{.batch = B, .heads = 2, .head_dim = D};

//! The default resource, recording the bytes of every stream-ordered allocation (what a call's
//! workspace is taken as) apart from the plain ones (what contexts own).
struct recording_resource {
  std::shared_ptr<std::vector<std::size_t>> ordered = std::make_shared<std::vector<std::size_t>>();
  void* allocate(std::size_t bytes, memory_space where) const {
    return seqpar::default_memory_resource{}.allocate(bytes, where);
  }
  void deallocate(void* p, std::size_t bytes, memory_space where) const {
    seqpar::default_memory_resource{}.deallocate(p, bytes, where);
  }
  void* allocate_async(std::size_t bytes, memory_space where, seqpar::stream_t stream) const {
    ordered->push_back(bytes);
    return seqpar::default_memory_resource{}.allocate_async(bytes, where, stream);
  }
  void deallocate_async(void* p, std::size_t bytes, memory_space where, seqpar::stream_t stream) const {
    seqpar::default_memory_resource{}.deallocate_async(p, bytes, where, stream);
  }
};
static_assert(seqpar::memory_resource<recording_resource>);

//! reference_attention (with its block functions) that does not declare packed documents, as a
//! user's policy written before documents existed would.
struct undeclared_documents {
  using policy_concept = seqpar::attention_policy_tag;
  seqpar::reference_attention inner;
  memory_space memory() const { return memory_space::host; }
  bool supports(seqpar::dtype t, std::int64_t d) const { return inner.supports(t, d); }
  bool supports_causal() const { return true; }
  template <class... A>
  void forward(A&&... a) const { inner.forward(std::forward<A>(a)...); }
  template <class... A>
  void backward(A&&... a) const { inner.backward(std::forward<A>(a)...); }
  template <class... A>
  void block_forward(A&&... a) const { inner.block_forward(std::forward<A>(a)...); }
  template <class... A>
  void block_backward(A&&... a) const { inner.block_backward(std::forward<A>(a)...); }
};
static_assert(seqpar::block_attention_policy<undeclared_documents>);
static_assert(!seqpar::detail::declares_documents<undeclared_documents>);

//! A rank's inputs and outputs for one layer: q, k, v, g, o, dout, dq, dk, dv, dg as flat buffers.
struct rank_buffers {
  std::vector<float> q, k, v, g, o, dout, dq, dk, dv, dg;
  rank_buffers(std::int64_t n, int heads, int kv_heads, std::int64_t gate_width, int rank) {
    auto fill = [&](std::vector<float>& x, std::size_t size, int which) {
      x.resize(size);
      for (std::size_t i = 0; i < size; ++i) x[i] = std::sin(0.37f * static_cast<float>(i) + 1.3f * which + rank);
    };
    const auto qn = static_cast<std::size_t>(B * n * heads * D), kn = static_cast<std::size_t>(B * n * kv_heads * D);
    fill(q, qn, 0), fill(k, kn, 1), fill(v, kn, 2), fill(dout, qn, 3);
    g.assign(static_cast<std::size_t>(B * n * heads * gate_width), -0.05f);
    o.assign(qn, seqpar_test::poison<float>()), dq.assign(qn, seqpar_test::poison<float>());
    dk.assign(kn, seqpar_test::poison<float>()), dv.assign(kn, seqpar_test::poison<float>());
    dg.assign(g.size(), seqpar_test::poison<float>());
  }
  //! Every output, in order.
  std::vector<float> outputs() const {
    std::vector<float> all;
    for (const auto* x : {&o, &dq, &dk, &dv, &dg}) all.insert(all.end(), x->begin(), x->end());
    return all;
  }
};

seqpar::tensor_view<const float> in(const std::vector<float>& x, std::int64_t n, std::int64_t h, std::int64_t d = D) {
  return seqpar::make_bshd<const float>(x.data(), B, n, h, d);
}
seqpar::tensor_view<float> out(std::vector<float>& x, std::int64_t n, std::int64_t h, std::int64_t d = D) {
  return seqpar::make_bshd(x.data(), B, n, h, d);
}

//! The softmax layers' arguments over a rank's buffers.
seqpar::attention_forward_args<float> attention_forward(rank_buffers& x, std::int64_t n, int h = H, int kv = H_kv) {
  return {.q = in(x.q, n, h), .k = in(x.k, n, kv), .v = in(x.v, n, kv), .o = out(x.o, n, h)};
}
seqpar::attention_backward_args<float> attention_backward(rank_buffers& x, std::int64_t n, int h = H, int kv = H_kv) {
  return {.dout = in(x.dout, n, h), .dq = out(x.dq, n, h), .dk = out(x.dk, n, kv), .dv = out(x.dv, n, kv)};
}

//! A call's reason, or "" when it can run.
std::string reason(const seqpar::call_status& s) { return s ? "" : s.reason(); }

//! Runs forward and backward twice on `layer`: from its resource (each call takes one stream-ordered
//! allocation of workspace_bytes(args)), then from caller workspaces of exactly workspace_bytes(args)
//! (no allocation); both give the same bits. A workspace one byte short cannot run, by name.
template <class Layer>
void check_workspaces(Layer& layer, const recording_resource& resource, rank_buffers& x,
                      const typename Layer::forward_args& f, const typename Layer::backward_args& b) {
  const std::size_t fwd = layer.workspace_bytes(f), bwd = layer.workspace_bytes(b);
  CHECK(fwd > 0);
  CHECK(bwd > 0);
  resource.ordered->clear();
  {
    const auto saved = layer.forward(f, {.stream = nullptr});
    CHECK(*resource.ordered == std::vector<std::size_t>{fwd});
    layer.backward(saved, b, {.stream = nullptr});
    CHECK(*resource.ordered == std::vector<std::size_t>{fwd, bwd});
  }
  const std::vector<float> from_resource = x.outputs();
  std::vector<float> fwd_bytes((fwd + 3) / 4), bwd_bytes((bwd + 3) / 4);
  const std::span<std::byte> fws(reinterpret_cast<std::byte*>(fwd_bytes.data()), fwd),
      bws(reinterpret_cast<std::byte*>(bwd_bytes.data()), bwd);
  auto f2 = f;
  auto b2 = b;
  f2.workspace = fws, b2.workspace = bws;
  resource.ordered->clear();
  {
    const auto saved = layer.forward(f2, {.stream = nullptr});
    layer.backward(saved, b2, {.stream = nullptr});
    CHECK(resource.ordered->empty());
    f2.workspace = fws.first(fwd - 1);
    CHECK(reason(layer.can_run(f2)).find("workspace: expected at least workspace_bytes(args) = " +
                                         std::to_string(fwd)) != std::string::npos);
    b2.workspace = bws.first(bwd - 1);
    CHECK(reason(layer.can_run(saved, b2)).find("workspace: expected at least workspace_bytes(args) = " +
                                                std::to_string(bwd)) != std::string::npos);
  }
  CHECK(seqpar_test::first_mismatch(x.outputs(), from_resource) == -1);
}

}  // namespace

TEST_CASE("can_run names the reason a call would throw, and the call throws it") {
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const auto part = seqpar::make_seq_partition(S, P);
    const std::int64_t n = part.size(comm.rank());
    rank_buffers x(n, H, H_kv, 1, comm.rank());
    seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part, attention, seqpar::elements<float>,
                                    {.causal = true});
    const auto f = attention_forward(x, n);
    CHECK(layer.can_run(f));
    auto bad = f;
    bad.k = in(x.k, n, H);
    CHECK(reason(layer.can_run(bad)).find("k: ") == 0);
    const auto docs = seqpar::make_document_layout(std::vector<std::int32_t>{0, 5, S + 1}, S + 1);
    bad = f;
    bad.documents = &docs;
    CHECK(reason(layer.can_run(bad)).find("docs: the layout covers 13 tokens; expected the layer's 12") == 0);
    // The call runs the same checks: every rank throws the reason can_run gave (the same on every rank).
    const std::string refusal = reason(layer.can_run(bad));
    CHECK_THROWS_WITH_AS((void)layer.forward(bad, {.stream = nullptr}), doctest::Contains(refusal.c_str()),
                         seqpar::error);
    const seqpar::ulysses_attention<seqpar::reference_attention, seqpar::in_process_communicator, float>::context empty;
    const auto b = attention_backward(x, n);
    CHECK(reason(layer.can_run(empty, b)).find("saved: an empty context") == 0);
    const auto saved = layer.forward(f, {.stream = nullptr});
    CHECK(layer.can_run(saved, b));
    auto bad_b = b;
    bad_b.dv = out(x.dv, n + 1, H_kv);
    CHECK(reason(layer.can_run(saved, bad_b)).find("dv: ") == 0);
    CHECK(seqpar_test::first_mismatch(x.dq, std::vector<float>(x.dq.size(), seqpar_test::poison<float>())) == -1);
  });
}

TEST_CASE("can_run of the ring, 2-D and LASP layers names each refusal") {
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    const auto part = seqpar::make_seq_partition(4 * P, P, seqpar::shard_strategy::zigzag);
    rank_buffers x(part.size(r), H, H_kv, 1, r);
    seqpar::ring_attention ring(seqpar::reference_attention{}, comm, part, attention, seqpar::elements<float>,
                                {.causal = true});
    auto f = attention_forward(x, part.size(r));
    CHECK(ring.can_run(f));
    f.o = out(x.o, part.size(r), H_kv);
    CHECK(reason(ring.can_run(f)).find("o: ") == 0);

    const auto layout = seqpar::make_token_layout_2d(S, {2, 2});
    rank_buffers y(layout.size(r), H, H_kv, 1, r);
    seqpar::ulysses_ring_attention two_d(seqpar::reference_attention{}, comm, layout, attention,
                                         seqpar::elements<float>, {.causal = true});
    auto g = attention_forward(y, layout.size(r));
    CHECK(two_d.can_run(g));
    g.q = in(y.q, layout.size(r) + 1, H);
    CHECK(reason(two_d.can_run(g)).find("q: ") == 0);

    const auto contiguous = seqpar::make_seq_partition(S, P);
    const std::int64_t n = contiguous.size(r);
    rank_buffers z(n, 2, 2, 1, r);
    seqpar::lasp_attention lasp(seqpar::linear_reference{}, comm, contiguous, linear, seqpar::elements<float>,
                                std::vector<float>{0.9f, 1.0f});
    const seqpar::linear_forward_args<float> lf{.q = in(z.q, n, 2), .k = in(z.k, n, 2), .v = in(z.v, n, 2),
                                                .o = out(z.o, n, 2)};
    CHECK(lasp.can_run(lf));
    auto with_gates = lf;
    with_gates.g = in(z.g, n, 2, 1);
    CHECK(reason(lasp.can_run(with_gates)).find("g: given with a policy of constant decays") == 0);

    seqpar::lasp_attention gated(seqpar::gated_linear_reference{}, comm, contiguous, linear, seqpar::elements<float>,
                                 seqpar::gate_kind::scalar);
    CHECK(reason(gated.can_run(lf)).find("g: last extent 0; expected 1 for the layer's scalar gates") == 0);
    CHECK(gated.can_run(with_gates));
    z.g[0] = 0.5f;
    CHECK(reason(gated.can_run(with_gates)).find("g(0, 0, 0, 0) = 0.5; expected a finite log-gate <= 0") == 0);
  });
}

TEST_CASE("workspace_bytes(args) is what each layer's call takes, and all it needs from a caller's workspace") {
  // Subcases outside the ranks' threads: each runs its own group.
  auto on_ranks = [](auto&& body) {
    seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
      recording_resource resource;
      body(comm, comm.rank(), resource);
    });
  };
  SUBCASE("ulysses_attention, one and two head groups") {
    on_ranks([](seqpar::in_process_communicator& comm, int r, const recording_resource& resource) {
      const auto part = seqpar::make_seq_partition(S + 1, P);
      const seqpar::attention_shape wide{.batch = B, .heads = 2 * P, .kv_heads = 2 * P, .head_dim = D};
      for (int groups : {1, 2}) {  // two kv heads a rank, so two groups of one
        CAPTURE(groups);
        rank_buffers x(part.size(r), 2 * P, 2 * P, 1, r);
        seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part, wide, seqpar::elements<float>,
                                        {.causal = true}, {.head_groups = groups}, resource);
        check_workspaces(layer, resource, x, attention_forward(x, part.size(r), 2 * P, 2 * P),
                         attention_backward(x, part.size(r), 2 * P, 2 * P));
      }
    });
  }
  SUBCASE("ring_attention, contiguous and zigzag") {
    on_ranks([](seqpar::in_process_communicator& comm, int r, const recording_resource& resource) {
      for (auto strategy : {seqpar::shard_strategy::contiguous, seqpar::shard_strategy::zigzag}) {
        const auto part = seqpar::make_seq_partition(4 * P, P, strategy);
        rank_buffers x(part.size(r), H, H_kv, 1, r);
        seqpar::ring_attention layer(seqpar::reference_attention{}, comm, part, attention, seqpar::elements<float>,
                                     {.causal = true}, resource);
        check_workspaces(layer, resource, x, attention_forward(x, part.size(r)), attention_backward(x, part.size(r)));
      }
    });
  }
  SUBCASE("ulysses_ring_attention") {
    on_ranks([](seqpar::in_process_communicator& comm, int r, const recording_resource& resource) {
      const auto layout = seqpar::make_token_layout_2d(S, {2, 2});
      rank_buffers x(layout.size(r), H, H_kv, 1, r);
      seqpar::ulysses_ring_attention layer(seqpar::reference_attention{}, comm, layout, attention,
                                           seqpar::elements<float>, {.causal = true}, resource);
      check_workspaces(layer, resource, x, attention_forward(x, layout.size(r)),
                       attention_backward(x, layout.size(r)));
    });
  }
  SUBCASE("lasp_attention, constant decays and gates, chain and all-gather") {
    on_ranks([](seqpar::in_process_communicator& comm, int r, const recording_resource& resource) {
      const auto part = seqpar::make_seq_partition(S + 1, P);
      const std::int64_t n = part.size(r);
      for (auto strategy : {seqpar::lasp_strategy::chain, seqpar::lasp_strategy::all_gather}) {
        rank_buffers x(n, 2, 2, D, r);
        seqpar::lasp_attention layer(seqpar::linear_reference{}, comm, part, linear, seqpar::elements<float>,
                                     std::vector<float>{0.9f, 1.0f}, strategy, resource);
        check_workspaces(layer, resource, x,
                         {.q = in(x.q, n, 2), .k = in(x.k, n, 2), .v = in(x.v, n, 2), .o = out(x.o, n, 2)},
                         {.dout = in(x.dout, n, 2), .dq = out(x.dq, n, 2), .dk = out(x.dk, n, 2),
                          .dv = out(x.dv, n, 2)});
        rank_buffers y(n, 2, 2, D, r);
        seqpar::lasp_attention gated(seqpar::gated_linear_reference{}, comm, part, linear, seqpar::elements<float>,
                                     seqpar::gate_kind::vector, strategy, resource);
        check_workspaces(gated, resource, y,
                         {.q = in(y.q, n, 2), .k = in(y.k, n, 2), .v = in(y.v, n, 2), .g = in(y.g, n, 2, D),
                          .o = out(y.o, n, 2)},
                         {.dout = in(y.dout, n, 2), .dq = out(y.dq, n, 2), .dk = out(y.dk, n, 2),
                          .dv = out(y.dv, n, 2), .dg = out(y.dg, n, 2, D)});
      }
    });
  }
}

TEST_CASE("a caller's workspace one byte short stops every rank before anything moves, one bad rank at a time") {
  const auto layout = seqpar::make_token_layout_2d(S, {2, 2});
  seqpar_test::expect_all_or_nothing(P, "workspace: expected at least workspace_bytes(args) = ",
                                     [&](seqpar::in_process_communicator& comm, bool bad, seqpar_test::sentinels& s) {
    const std::int64_t n = layout.size(comm.rank());
    seqpar::ulysses_ring_attention layer(seqpar::reference_attention{}, comm, layout, attention,
                                         seqpar::elements<float>, {.causal = true});
    auto& q = s.input(static_cast<std::size_t>(B * n * H * D), 0.5f);
    auto& kv = s.input(static_cast<std::size_t>(B * n * H_kv * D), 0.25f);
    auto& o = s.make(static_cast<std::size_t>(B * n * H * D));
    seqpar::attention_forward_args<float> f{.q = seqpar::make_bshd<const float>(q.data(), B, n, H, D),
                                            .k = seqpar::make_bshd<const float>(kv.data(), B, n, H_kv, D),
                                            .v = seqpar::make_bshd<const float>(kv.data(), B, n, H_kv, D),
                                            .o = seqpar::make_bshd(o.data(), B, n, H, D)};
    std::vector<float> ws(layer.workspace_bytes(f) / 4 + 4);
    f.workspace = std::span<std::byte>(reinterpret_cast<std::byte*>(ws.data()), layer.workspace_bytes(f) - (bad ? 1 : 0));
    (void)layer.forward(f, {.stream = nullptr});
  });
}

TEST_CASE("a policy that does not declare packed documents is refused them by name, before anything moves") {
  const auto docs = seqpar::make_document_layout(std::vector<std::int32_t>{0, 5, 9, S}, S);
  const auto part = seqpar::make_seq_partition(S, P);
  for (bool ring : {false, true}) {
    CAPTURE(ring);
    std::vector<int> refused(P, 0), untouched(P, 0);
    std::vector<double> gap(P, 0.0);
    seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
      const int r = comm.rank();
      const std::int64_t n = part.size(r);
      rank_buffers x(n, H, H_kv, 1, r), want(n, H, H_kv, 1, r);
      auto run = [&](auto&& layer, auto&& reference) {
        auto f = attention_forward(x, n);
        f.documents = &docs;
        CHECK(reason(layer.can_run(f)).find("documents: the policy does not declare packed documents") == 0);
        try {
          (void)layer.forward(f, {.stream = nullptr});
        } catch (const seqpar::error& e) {
          refused[r] = e.code() == seqpar::errc::invalid_argument &&
                       std::string(e.what()).find("documents: the policy does not declare") != std::string::npos;
        }
        untouched[r] = seqpar_test::first_mismatch(x.o, std::vector<float>(x.o.size(), seqpar_test::poison<float>())) == -1;
        // Without documents the same policy runs, and equals the shipped reference.
        (void)layer.forward(attention_forward(x, n), {.stream = nullptr});
        (void)reference.forward(attention_forward(want, n), {.stream = nullptr});
        for (std::size_t i = 0; i < x.o.size(); ++i) gap[r] = std::max(gap[r], double(std::fabs(x.o[i] - want.o[i])));
      };
      // Each rank builds the two layers in the same order (construction is collective).
      if (ring) {
        seqpar::ring_attention user(undeclared_documents{}, comm, part, attention, seqpar::elements<float>,
                                    {.causal = true});
        seqpar::ring_attention shipped(seqpar::reference_attention{}, comm, part, attention, seqpar::elements<float>,
                                       {.causal = true});
        run(user, shipped);
      } else {
        seqpar::ulysses_attention user(undeclared_documents{}, comm, part, attention, seqpar::elements<float>,
                                       {.causal = true});
        seqpar::ulysses_attention shipped(seqpar::reference_attention{}, comm, part, attention,
                                          seqpar::elements<float>, {.causal = true});
        run(user, shipped);
      }
    });
    for (int r = 0; r < P; ++r) {
      CAPTURE(r);
      CHECK(refused[r]);
      CHECK(untouched[r]);
      CHECK(gap[r] == 0.0);
    }
  }
}
