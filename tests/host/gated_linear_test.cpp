// gated_linear_reference: the gated chunk algebra (intra, inter, contribution, chunk decay, update)
// chained over the chunks of P ranks against the token-by-token recurrence in double, for scalar
// and vector gates, gates near 0 and near 1, uneven chunks, fp32 and bf16 activations; and the
// constant-decay special case against linear_reference; the backward pieces composed into a
// chunk's backward (dq, dk, dv, dg and the incoming state's gradient) against central differences
// of the recurrence.
#include <seqpar/policy/gated_linear_reference.hpp>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/detail/balanced_split.hpp>
#include <seqpar_test/gated_lasp_cases.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace {
struct gated_case {
  std::int64_t B, S, H, D, E;
  bool vector_gate;
  double lo, hi;  // exp(g) drawn log-uniformly from [lo, hi]
};

template <class T>
std::vector<T> randoms(std::size_t n) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<T> x(n);
  for (auto& e : x) e = seqpar::from_float<T>(u(seqpar_test::rng()));
  return x;
}

std::vector<float> log_gates(std::size_t n, double lo, double hi) {
  std::vector<float> g(n);
  for (auto& e : g) e = seqpar_test::random_log_gate(lo, hi);
  return g;
}

// The chunk algebra over P contiguous chunks (the first S % P one token longer), states passed
// along as the chain does (fp32): returns o and the last chunk's outgoing state.
template <class T>
std::vector<T> chained(const gated_case& c, int P, std::vector<T>& q, std::vector<T>& k, std::vector<T>& v,
                       std::vector<float>& g, std::vector<float>& state) {
  const std::int64_t B = c.B, S = c.S, H = c.H, D = c.D, E = c.E, gd = c.vector_gate ? D : 1;
  const seqpar::gated_linear_reference ref;
  std::vector<T> o(B * S * H * E, seqpar::from_float<T>(0.0f));
  std::vector<float> in(B * H * D * E, 0.0f), m(in.size()), total(B * H * D);
  auto view = [&](auto& x, std::int64_t X, std::int64_t first, std::int64_t n) {
    return seqpar::make_strided(x.data() + first * H * X, {B, n, H, X}, {S * H * X, H * X, X, 1});
  };
  for (int r = 0; r < P; ++r) {
    const std::int64_t first = seqpar::detail::balanced_offset<std::int64_t>(S, P, r),
                       n = seqpar::detail::balanced_size<std::int64_t>(S, P, r);
    const seqpar::tensor_view<const T> cq = view(q, D, first, n), ck = view(k, D, first, n), cv = view(v, E, first, n);
    const seqpar::tensor_view<const float> cg = view(g, gd, first, n);
    const auto co = view(o, E, first, n);
    ref.forward_intra(seqpar::gated_chunk<T>{.q = cq, .k = ck, .v = cv, .g = cg}, co, nullptr);
    if (r > 0)
      ref.forward_inter(seqpar::gated_chunk<T>{.q = cq, .g = cg}, seqpar::const_state_view(in.data(), B, H, D, E), co,
                        nullptr);
    const seqpar::state_view mv(m.data(), B, H, D, E), iv(in.data(), B, H, D, E);
    ref.state_contribution(seqpar::gated_chunk<T>{.k = ck, .v = cv, .g = cg}, mv, nullptr);
    ref.chunk_decay(cg, seqpar::chunk_decay_view(total.data(), B, H, D), nullptr);
    ref.state_update(seqpar::const_chunk_decay_view(total.data(), B, H, D),
                     r > 0 ? seqpar::const_state_view(iv) : seqpar::const_state_view(), mv, iv, nullptr);
  }
  state = in;
  return o;
}

template <class U, class W>
double gap(const std::vector<U>& got, const std::vector<W>& want) {
  double err = 0, scale = 1e-300;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double x = seqpar_test::as_double(got[i]), y = seqpar_test::as_double(want[i]);
    if (!std::isfinite(x)) return INFINITY;
    err = std::max(err, std::abs(x - y));
    scale = std::max(scale, std::abs(y));
  }
  return err / scale;
}
}  // namespace

TEST_CASE_TEMPLATE("gated chunk algebra chained over P chunks equals the token-by-token recurrence", T, float,
                   __nv_bfloat16) {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 2e-2;
  for (bool vector_gate : {false, true})
    for (auto [lo, hi] : {std::pair{0.5, 1.0}, std::pair{1e-6, 1e-5}, std::pair{1.0 - 1e-6, 1.0}})
      for (int P : {1, 2, 3, 4, 8}) {
        const gated_case c{2, 8 * P + 3, 2, 5, 3, vector_gate, lo, hi};
        INFO("P=" << P << " S=" << c.S << (vector_gate ? " vector" : " scalar") << " gates exp(g) in [" << lo << ", "
                  << hi << "]");
        auto q = randoms<T>(c.B * c.S * c.H * c.D), k = randoms<T>(q.size()), v = randoms<T>(c.B * c.S * c.H * c.E);
        auto g = log_gates(c.B * c.S * c.H * (vector_gate ? c.D : 1), lo, hi);
        std::vector<double> want_state;
        const std::int64_t gd = vector_gate ? c.D : 1;
        const auto want = seqpar_test::gated_recurrence(
            seqpar_test::dense(q, c.B, c.S, c.H, c.D), seqpar_test::dense(k, c.B, c.S, c.H, c.D),
            seqpar_test::dense(v, c.B, c.S, c.H, c.E), seqpar_test::dense(g, c.B, c.S, c.H, gd), &want_state).v;
        std::vector<float> state;
        const auto got = chained(c, P, q, k, v, g, state);
        CHECK(gap(got, want) <= tol);
        CHECK(gap(state, want_state) <= 1e-5);
      }
}

TEST_CASE("gated chunk algebra with g = log(lambda) equals linear_reference's constant decay") {
  const std::int64_t B = 1, C = 13, H = 2, D = 4, E = 3;
  const std::vector<float> decay{0.9f, 0.6f};
  auto q = randoms<float>(B * C * H * D), k = randoms<float>(q.size()), v = randoms<float>(B * C * H * E);
  std::vector<float> g(B * C * H);
  for (std::int64_t i = 0; i < C; ++i)
    for (std::int64_t h = 0; h < H; ++h) g[i * H + h] = std::log(decay[h]);
  std::vector<float> kv = randoms<float>(B * H * D * E);
  auto bshd = [&](std::vector<float>& x, std::int64_t X) { return seqpar::make_bshd(x.data(), B, C, H, X); };
  const auto cq = seqpar::tensor_view<const float>(bshd(q, D)), ck = seqpar::tensor_view<const float>(bshd(k, D)),
             cv = seqpar::tensor_view<const float>(bshd(v, E)), cg = seqpar::tensor_view<const float>(bshd(g, 1));
  std::vector<float> o1(B * C * H * E), o2(o1.size()), m1(B * H * D * E), m2(m1.size());
  const seqpar::gated_linear_reference gated;
  const seqpar::linear_reference plain;
  gated.forward_intra(seqpar::gated_chunk<float>{.q = cq, .k = ck, .v = cv, .g = cg}, bshd(o1, E), nullptr);
  plain.forward_intra(seqpar::linear_chunk<float>{.q = cq, .k = ck, .v = cv, .decay = decay}, bshd(o2, E), nullptr);
  const seqpar::const_state_view kv_view(kv.data(), B, H, D, E);
  gated.forward_inter(seqpar::gated_chunk<float>{.q = cq, .g = cg}, kv_view, bshd(o1, E), nullptr);
  plain.forward_inter(seqpar::linear_chunk<float>{.q = cq, .decay = decay}, kv_view, bshd(o2, E), nullptr);
  CHECK(gap(o1, o2) <= 1e-6);
  gated.state_contribution(seqpar::gated_chunk<float>{.k = ck, .v = cv, .g = cg},
                           seqpar::state_view(m1.data(), B, H, D, E), nullptr);
  plain.state_contribution(seqpar::linear_chunk<float>{.k = ck, .v = cv, .decay = decay},
                           seqpar::state_view(m2.data(), B, H, D, E), nullptr);
  CHECK(gap(m1, m2) <= 1e-6);
}

namespace {
// L = sum dO . o + sum dM_out . M_out of one chunk from M_in, token by token in double: the loss
// whose gradients the backward pieces compose to. x holds q, k, v, g, M_in back to back.
struct chunk_loss {
  std::int64_t C, H, D, E, gd;
  std::vector<double> dout, dm;
  double operator()(const std::vector<double>& x) const {
    const double *q = x.data(), *k = q + C * H * D, *v = k + C * H * D, *g = v + C * H * E, *in = g + C * H * gd;
    double loss = 0;
    for (std::int64_t h = 0; h < H; ++h) {
      std::vector<double> M(in + h * D * E, in + (h + 1) * D * E);
      for (std::int64_t t = 0; t < C; ++t) {
        const std::int64_t row = t * H + h;
        for (std::int64_t d = 0; d < D; ++d)
          for (std::int64_t e = 0; e < E; ++e)
            M[d * E + e] = std::exp(g[row * gd + (gd > 1 ? d : 0)]) * M[d * E + e] + k[row * D + d] * v[row * E + e];
        for (std::int64_t e = 0; e < E; ++e) {
          double o = 0;
          for (std::int64_t d = 0; d < D; ++d) o += q[row * D + d] * M[d * E + e];
          loss += dout[row * E + e] * o;
        }
      }
      for (std::int64_t i = 0; i < D * E; ++i) loss += dm[h * D * E + i] * M[i];
    }
    return loss;
  }
};
}  // namespace

TEST_CASE("gated backward pieces compose to central differences of the recurrence, the gates' gradients included") {
  const std::int64_t C = 7, H = 2, D = 3, E = 2;
  for (bool vector_gate : {false, true}) {
    CAPTURE(vector_gate);
    const std::int64_t gd = vector_gate ? D : 1;
    auto q = randoms<float>(C * H * D), k = randoms<float>(q.size()), v = randoms<float>(C * H * E),
         dout = randoms<float>(C * H * E), in = randoms<float>(H * D * E), dm = randoms<float>(in.size());
    auto g = log_gates(C * H * gd, 0.3, 1.0);
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size()), dg(g.size()), din(in.size());
    auto bshd = [&](std::vector<float>& t, std::int64_t X) { return seqpar::make_bshd(t.data(), 1, C, H, X); };
    auto cview = [&](std::vector<float>& t, std::int64_t X) { return seqpar::tensor_view<const float>(bshd(t, X)); };
    // The chunk's whole backward from the pieces the ring composes; the incoming state's gradient
    // is the queries' share plus the outgoing gradient decayed through the chunk.
    const seqpar::gated_linear_reference ref;
    const seqpar::const_state_view in_view(in.data(), 1, H, D, E), dm_view(dm.data(), 1, H, D, E);
    const seqpar::state_view din_view(din.data(), 1, H, D, E);
    std::vector<float> total(H * D);
    ref.backward_intra(
        seqpar::gated_chunk<float>{
            .q = cview(q, D), .k = cview(k, D), .v = cview(v, E), .dout = cview(dout, E), .g = cview(g, gd)},
        seqpar::linear_gradients<float>{.dq = bshd(dq, D), .dk = bshd(dk, D), .dv = bshd(dv, E), .dg = bshd(dg, gd)},
        nullptr);
    ref.backward_inter(
        seqpar::gated_chunk<float>{
            .q = cview(q, D), .k = cview(k, D), .v = cview(v, E), .dout = cview(dout, E), .g = cview(g, gd)},
        in_view, dm_view,
        seqpar::linear_gradients<float>{.dq = bshd(dq, D), .dk = bshd(dk, D), .dv = bshd(dv, E), .dg = bshd(dg, gd)},
        nullptr);
    ref.backward_state_contribution(
        seqpar::gated_chunk<float>{.q = cview(q, D), .dout = cview(dout, E), .g = cview(g, gd)}, din_view, nullptr);
    ref.chunk_decay(cview(g, gd), seqpar::chunk_decay_view(total.data(), 1, H, D), nullptr);
    ref.state_update(seqpar::const_chunk_decay_view(total.data(), 1, H, D), dm_view, din_view, din_view, nullptr);
    chunk_loss loss{C, H, D, E, gd, {dout.begin(), dout.end()}, {dm.begin(), dm.end()}};
    std::vector<double> x;
    for (const auto* part : {&q, &k, &v, &g, &in}) x.insert(x.end(), part->begin(), part->end());
    std::vector<double> want(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double keep = x[i], eps = 1e-5;
      x[i] = keep + eps;
      const double up = loss(x);
      x[i] = keep - eps;
      want[i] = (up - loss(x)) / (2 * eps);
      x[i] = keep;
    }
    std::vector<float> got;
    for (const auto* part : {&dq, &dk, &dv, &dg, &din}) got.insert(got.end(), part->begin(), part->end());
    const char* names[] = {"dq", "dk", "dv", "dg", "dkv_in"};
    std::size_t at = 0;
    for (int p = 0; p < 5; ++p) {
      const std::size_t n = std::vector<std::size_t>{dq.size(), dk.size(), dv.size(), dg.size(), din.size()}[p];
      INFO(std::string(names[p]));
      CHECK(gap(std::vector<float>(got.begin() + at, got.begin() + at + n),
                std::vector<double>(want.begin() + at, want.begin() + at + n)) <= 1e-5);
      at += n;
    }
  }
}
