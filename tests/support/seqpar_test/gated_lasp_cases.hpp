//! @file gated_lasp_cases.hpp
//! Gated LASP on P in-process ranks against the token-by-token recurrence (o) and the one-device
//! backward of gated_linear_reference (dq, dk, dv, dg), shared by the host, emulation and device
//! tests: every rank's outputs and gradients, poisoned before the run.
#pragma once

#include <seqpar/comm/in_process.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/gated_linear_reference.hpp>
#include <seqpar_test/buffers.hpp>
#include <seqpar_test/lasp_cases.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace seqpar_test {

using seqpar::gate_kind;
using seqpar::lasp_strategy;

//! One gated LASP configuration.
struct gated_case {
  int P = 1;
  std::int64_t B = 2, S = 7, H = 2, D = 3, E = 4;
  gate_kind gates = gate_kind::scalar;
  double lo = 0.5, hi = 1.0;  // exp(g) drawn log-uniformly from [lo, hi]
  lasp_strategy strategy = lasp_strategy::chain;
  std::string name() const {
    return "P=" + std::to_string(P) + " S=" + std::to_string(S) + " " + seqpar::to_string(gates) + " gates in [" +
           std::to_string(lo) + ", " + std::to_string(hi) + "] " + seqpar::to_string(strategy);
  }
  std::int64_t gate_width() const { return gates == gate_kind::scalar ? 1 : D; }
};

//! Log-gates of a case, exp(g) log-uniform in [lo, hi].
inline dense4 log_gates(const gated_case& c) {
  dense4 g(c.B, c.S, c.H, c.gate_width());
  for (auto& x : g.v) x = random_log_gate(c.lo, c.hi);
  return g;
}

//! o of the recurrence M_t = diag(exp(g_t)) M_{t-1} + k_t v_t^T, o_t = q_t^T M_t, in double; a
//! gate of -inf resets the state. `state`, when given, gets the final M [B, H, D, E].
inline dense4 gated_recurrence(const dense4& q, const dense4& k, const dense4& v, const dense4& g,
                               std::vector<double>* state = nullptr) {
  const std::int64_t D = q.X, E = v.X;
  dense4 o(q.B, q.S, q.H, E);
  std::vector<double> all(q.B * q.H * D * E, 0.0);
  for (std::int64_t b = 0; b < q.B; ++b)
    for (std::int64_t h = 0; h < q.H; ++h) {
      double* M = &all[(b * q.H + h) * D * E];
      for (std::int64_t t = 0; t < q.S; ++t) {
        for (std::int64_t d = 0; d < D; ++d)
          for (std::int64_t e = 0; e < E; ++e)
            M[d * E + e] = std::exp(g(b, t, h, g.X == 1 ? 0 : d)) * M[d * E + e] + k(b, t, h, d) * v(b, t, h, e);
        for (std::int64_t e = 0; e < E; ++e) {
          double sum = 0;
          for (std::int64_t d = 0; d < D; ++d) sum += q(b, t, h, d) * M[d * E + e];
          o(b, t, h, e) = sum;
        }
      }
    }
  if (state) *state = std::move(all);
  return o;
}

//! A dense array's values as floats, and packed [B, S, H, X] values back into a dense array.
inline std::vector<float> floats(const dense4& a) { return seqpar_test::rows_of<float>(a, 0, a.S); }
template <class U>
dense4 dense(const std::vector<U>& x, std::int64_t B, std::int64_t S, std::int64_t H, std::int64_t X) {
  dense4 out(B, S, H, X);
  for (std::size_t i = 0; i < x.size(); ++i) out.v[i] = as_double(x[i]);
  return out;
}

//! dq, dk, dv, dg of the whole sequence as one chunk with no state in or out (each document of
//! `docs` alone), from the reference's pieces in fp32 views of the rounded inputs.
inline std::vector<dense4> one_device_gradients(const dense4& q, const dense4& k, const dense4& v, const dense4& g,
                                         const dense4& dout, const seqpar::document_layout& docs) {
  const std::int64_t B = q.B, S = q.S, H = q.H, D = q.X, E = v.X, W = g.X;
  auto fq = floats(q), fk = floats(k), fv = floats(v), fg = floats(g), fdo = floats(dout);
  std::vector<float> dq(fq.size()), dk(fk.size()), dv(fv.size()), dg(fg.size());
  auto view = [&](std::vector<float>& x, std::int64_t X, std::int64_t first, std::int64_t n) {
    return seqpar::make_strided(x.data() + first * H * X, {B, n, H, X}, {S * H * X, H * X, X, 1});
  };
  auto cview = [&](std::vector<float>& x, std::int64_t X, std::int64_t first, std::int64_t n) {
    return seqpar::tensor_view<const float>(view(x, X, first, n));
  };
  for (int d = 0; d < docs.count(); ++d) {
    const std::int64_t first = docs.split() ? docs.begin(d) : 0, n = docs.split() ? docs.end(d) - first : S;
    seqpar::gated_linear_reference{}.backward_intra(seqpar::gated_chunk<float>{.q = cview(fq, D, first, n),
                                                                               .k = cview(fk, D, first, n),
                                                                               .v = cview(fv, E, first, n),
                                                                               .dout = cview(fdo, E, first, n),
                                                                               .g = cview(fg, W, first, n)},
                                                    seqpar::linear_gradients<float>{.dq = view(dq, D, first, n),
                                                                                    .dk = view(dk, D, first, n),
                                                                                    .dv = view(dv, E, first, n),
                                                                                    .dg = view(dg, W, first, n)},
                                                    nullptr);
  }
  return {dense(dq, B, S, H, D), dense(dk, B, S, H, D), dense(dv, B, S, H, E), dense(dg, B, S, H, W)};
}

//! Runs the gated layer forward and backward on P ranks (memory `where`, policy `policy`) and checks
//! every rank's o, dq, dk, dv, dg.
template <class T, class Policy = seqpar::gated_linear_reference>
void check_gated_lasp(const gated_case& c, const seqpar::document_layout& docs = {},
                      seqpar::memory_space where = seqpar::memory_space::host, Policy policy = {}) {
  INFO(c.name() << (docs.split() ? " documents=" + std::to_string(docs.count()) : std::string()));
  const auto q = seqpar_test::random_input<T>(c.B, c.S, c.H, c.D), k = seqpar_test::random_input<T>(c.B, c.S, c.H, c.D),
             v = seqpar_test::random_input<T>(c.B, c.S, c.H, c.E),
             dout = seqpar_test::random_input<T>(c.B, c.S, c.H, c.E);
  const dense4 g = log_gates(c);
  dense4 reset = g;  // documents are a log-gate of minus infinity at every document start
  for (int d = 1; d < docs.count(); ++d)
    for (std::int64_t b = 0; b < c.B; ++b)
      for (std::int64_t h = 0; h < c.H; ++h)
        for (std::int64_t x = 0; x < g.X; ++x) reset(b, docs.begin(d), h, x) = -INFINITY;
  const dense4 want_o = gated_recurrence(q, k, v, reset);
  const auto want = one_device_gradients(q, k, v, g, dout, docs);
  const auto part = seqpar::make_seq_partition(c.S, c.P);
  std::vector<std::vector<std::vector<T>>> got(c.P);  // per rank: o, dq, dk, dv
  std::vector<std::vector<float>> got_dg(c.P);
  seqpar::run_in_process(c.P, where, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    const std::int64_t n = part.size(r), at = part.offset(r), W = c.gate_width();
    buffer<T> bq(where, seqpar_test::rows_of<T>(q, at, n)), bk(where, seqpar_test::rows_of<T>(k, at, n)),
        bv(where, seqpar_test::rows_of<T>(v, at, n)), bdo(where, seqpar_test::rows_of<T>(dout, at, n));
    buffer<float> bg(where, seqpar_test::rows_of<float>(g, at, n)),
        bdg(where, std::vector<float>(c.B * n * c.H * W, poison<float>()));
    buffer<T> bo(where, std::vector<T>(c.B * n * c.H * c.E, poison<T>())),
        bdq(where, std::vector<T>(c.B * n * c.H * c.D, poison<T>())),
        bdk(where, std::vector<T>(c.B * n * c.H * c.D, poison<T>())),
        bdv(where, std::vector<T>(c.B * n * c.H * c.E, poison<T>()));
    auto view = [&](auto& b, std::int64_t x) { return seqpar::make_bshd(b.data(), c.B, n, c.H, x); };
    auto cview = [&](auto& b, std::int64_t x) {
      return seqpar::tensor_view<const std::remove_pointer_t<decltype(b.data())>>(view(b, x));
    };
    const seqpar::attention_shape shape{.batch = c.B, .heads = int(c.H), .head_dim = c.D, .value_dim = c.E};
    seqpar_test::rank_stream stream(where);
    seqpar::lasp_attention layer(policy, comm, part, shape, seqpar::elements<T>, c.gates, c.strategy);
    const auto saved = layer.forward({.q = cview(bq, c.D),
                                      .k = cview(bk, c.D),
                                      .v = cview(bv, c.E),
                                      .g = cview(bg, W),
                                      .o = view(bo, c.E),
                                      .documents = &docs},
                                     {.stream = seqpar::stream_t(stream)});
    layer.backward(saved,
                   {.dout = cview(bdo, c.E),
                    .dq = view(bdq, c.D),
                    .dk = view(bdk, c.D),
                    .dv = view(bdv, c.E),
                    .dg = view(bdg, W)},
                   {.stream = seqpar::stream_t(stream)});
    stream.sync();
    got[r] = {bo.values(), bdq.values(), bdk.values(), bdv.values()};
    got_dg[r] = bdg.values();
  });
  const double tol = seqpar_test::lasp_tolerance<T>();
  for (int r = 0; r < c.P; ++r) {
    CAPTURE(r);
    const std::int64_t n = part.size(r), at = part.offset(r);
    CHECK(seqpar_test::relative_error(got[r][0], want_o, at, n) <= tol);
    CHECK(seqpar_test::relative_error(got[r][1], want[0], at, n) <= tol);
    CHECK(seqpar_test::relative_error(got[r][2], want[1], at, n) <= tol);
    CHECK(seqpar_test::relative_error(got[r][3], want[2], at, n) <= tol);
    CHECK(seqpar_test::relative_error(got_dg[r], want[3], at, n) <= tol);
  }
}

}  // namespace seqpar_test
