//! @file lasp_cases.hpp
//! LASP on P in-process ranks against the single-device reference, shared by the host and the
//! device tests: every rank's outputs and gradients, poisoned before the run.
#pragma once

#include <seqpar/comm/in_process.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar_test/buffers.hpp>
#include <seqpar_test/lasp_reference.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

namespace seqpar_test {

//! One LASP configuration.
struct lasp_case {
  int P = 1;
  std::int64_t B = 2, S = 7, H = 2, D = 3, E = 5;
  float lambda = 1.0f;
  seqpar::lasp_strategy strategy = seqpar::lasp_strategy::chain;
  bool normalised = false;  //!< append a ones column to V: the last output column is the denominator

  std::string name() const {
    return "P=" + std::to_string(P) + " S=" + std::to_string(S) + " lambda=" + std::to_string(lambda) + " " +
           seqpar::to_string(strategy) + (normalised ? " normalised" : "");
  }
  //! Per-head decays: lambda for head 0, a slightly stronger decay for the others.
  std::vector<float> decay() const {
    std::vector<float> d(H, lambda);
    for (std::int64_t h = 1; h < H; ++h) d[h] = lambda * 0.97f;
    return d;
  }
};

//! Largest error allowed, relative to the largest reference magnitude, for each element type.
template <class T>
double lasp_tolerance() {
  if constexpr (std::is_same_v<T, float>) return 2e-5;
  else if constexpr (std::is_same_v<T, __half>) return 4e-3;
  else return 3e-2;
}

//! Random inputs rounded to T, so the reference sees exactly what the ranks see.
template <class T>
dense4 random_input(std::int64_t B, std::int64_t S, std::int64_t H, std::int64_t X) {
  dense4 a(B, S, H, X);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& x : a.v) x = as_double(seqpar::from_float<T>(u(rng())));
  return a;
}

//! The rows [offset, offset + n) of a dense array, as T in BSHD order.
template <class T>
std::vector<T> rows_of(const dense4& a, std::int64_t offset, std::int64_t n) {
  std::vector<T> out;
  for (std::int64_t b = 0; b < a.B; ++b)
    for (std::int64_t s = offset; s < offset + n; ++s)
      for (std::int64_t h = 0; h < a.H; ++h)
        for (std::int64_t x = 0; x < a.X; ++x) out.push_back(seqpar::from_float<T>(static_cast<float>(a(b, s, h, x))));
  return out;
}

//! max |got - want| / max |want| over a rank's rows; NaN (an unwritten, poisoned element) gives infinity.
template <class T>
double relative_error(const std::vector<T>& got, const dense4& want, std::int64_t offset, std::int64_t n) {
  double err = 0, scale = 1e-30;
  std::size_t i = 0;
  for (std::int64_t b = 0; b < want.B; ++b)
    for (std::int64_t s = offset; s < offset + n; ++s)
      for (std::int64_t h = 0; h < want.H; ++h)
        for (std::int64_t x = 0; x < want.X; ++x, ++i) {
          const double g = as_double(got[i]), w = want(b, s, h, x);
          if (!std::isfinite(g)) return INFINITY;
          err = std::max(err, std::abs(g - w));
          scale = std::max(scale, std::abs(w));
        }
  return err / scale;
}

//! How far a rank's output is from (y_t, 1) times its last column, relative to the largest output,
//! where y_t = sum_{j<=t} w (q_t . k_j) v_j / sum_{j<=t} w (q_t . k_j), w = lambda^(t-j), is
//! normalised linear attention computed here directly: zero when output / last column = y_t.
//! (Multiplying rather than dividing keeps tiny early denominators from amplifying rounding.)
template <class T>
double normalised_error(const std::vector<T>& o, const dense4& q, const dense4& k, const dense4& v,
                        const std::vector<float>& decay, std::int64_t offset, std::int64_t n) {
  double err = 0, scale = 1e-30;
  const std::int64_t E = v.X - 1;
  for (std::int64_t b = 0; b < q.B; ++b)
    for (std::int64_t t = offset; t < offset + n; ++t)
      for (std::int64_t h = 0; h < q.H; ++h) {
        std::vector<double> num(E, 0.0);
        double den = 0;
        for (std::int64_t j = 0; j <= t; ++j) {
          double a = std::pow(double(decay[h]), double(t - j));
          double qk = 0;
          for (std::int64_t d = 0; d < q.X; ++d) qk += q(b, t, h, d) * k(b, j, h, d);
          a *= qk, den += a;
          for (std::int64_t e = 0; e < E; ++e) num[e] += a * v(b, j, h, e);
        }
        const std::size_t row = static_cast<std::size_t>(((b * n + t - offset) * q.H + h) * (E + 1));
        const double got_den = as_double(o[row + E]);
        scale = std::max(scale, std::abs(got_den));
        for (std::int64_t e = 0; e < E; ++e) {
          err = std::max(err, std::abs(as_double(o[row + e]) - num[e] / den * got_den));
          scale = std::max(scale, std::abs(as_double(o[row + e])));
        }
      }
  return err / scale;
}

//! Rows [first, first + n) of a dense array, as one of their own.
inline dense4 dense_rows(const dense4& a, std::int64_t first, std::int64_t n) {
  dense4 out(a.B, n, a.H, a.X);
  for (std::int64_t b = 0; b < a.B; ++b)
    for (std::int64_t s = 0; s < n; ++s)
      for (std::int64_t h = 0; h < a.H; ++h)
        for (std::int64_t x = 0; x < a.X; ++x) out(b, s, h, x) = a(b, first + s, h, x);
  return out;
}

//! linear_attention_reference of each document of `docs` alone (its rows cut out), put back in
//! place: the packed-sequence reference, with no state crossing a document start.
inline linear_attention_result per_document_reference(const dense4& q, const dense4& k, const dense4& v,
                                                      const dense4& dout, const std::vector<float>& decay,
                                                      const seqpar::document_layout& docs) {
  linear_attention_result all{dense4(q.B, q.S, q.H, v.X), dense4(q.B, q.S, q.H, q.X), dense4(q.B, q.S, q.H, q.X),
                              dense4(q.B, q.S, q.H, v.X)};
  for (int d = 0; d < docs.count(); ++d) {
    const std::int64_t first = docs.begin(d), n = docs.end(d) - first;
    const auto one = linear_attention_reference(dense_rows(q, first, n), dense_rows(k, first, n),
                                                dense_rows(v, first, n), dense_rows(dout, first, n), decay);
    const std::pair<const dense4*, dense4*> parts[] = {{&one.o, &all.o}, {&one.dq, &all.dq}, {&one.dk, &all.dk},
                                                       {&one.dv, &all.dv}};
    for (auto [from, to] : parts)
      for (std::int64_t b = 0; b < q.B; ++b)
        for (std::int64_t s = 0; s < n; ++s)
          for (std::int64_t h = 0; h < q.H; ++h)
            for (std::int64_t x = 0; x < from->X; ++x) (*to)(b, first + s, h, x) = (*from)(b, s, h, x);
  }
  return all;
}

//! Checks to_peer[r][j], the bytes rank r sent to rank j, against want(r, j) for every pair.
template <class Want>
void check_bytes_to_peers(const std::vector<std::vector<std::size_t>>& to_peer, const Want& want) {
  const int P = static_cast<int>(to_peer.size());
  for (int r = 0; r < P; ++r)
    for (int j = 0; j < P; ++j) {
      CAPTURE(r);
      CAPTURE(j);
      CHECK(to_peer[r][j] == want(r, j));
    }
}

//! Runs lasp_attention forward and backward on P ranks (with packed documents `docs` when given)
//! and checks o, dq, dk, dv of every rank.
template <class T, class Policy = seqpar::linear_reference>
void check_lasp(const lasp_case& c, seqpar::memory_space where, Policy policy = {},
                const seqpar::document_layout& docs = {}) {
  INFO(c.name() << (docs.split() ? " documents=" + std::to_string(docs.count()) : std::string()));
  const std::int64_t E = c.E + (c.normalised ? 1 : 0);
  auto q = random_input<T>(c.B, c.S, c.H, c.D), k = random_input<T>(c.B, c.S, c.H, c.D);
  auto v = random_input<T>(c.B, c.S, c.H, E);
  if (c.normalised) {  // a positive feature map keeps the denominators away from zero
    for (auto* x : {&q, &k})
      for (auto& e : x->v) e = std::abs(e);
    for (std::int64_t b = 0; b < c.B; ++b)
      for (std::int64_t s = 0; s < c.S; ++s)
        for (std::int64_t h = 0; h < c.H; ++h) v(b, s, h, E - 1) = 1.0;
  }
  const auto dout = random_input<T>(c.B, c.S, c.H, E);
  const auto ref = docs.split() ? per_document_reference(q, k, v, dout, c.decay(), docs)
                                : linear_attention_reference(q, k, v, dout, c.decay());
  const auto part = seqpar::make_seq_partition(c.S, c.P);
  std::vector<std::vector<std::vector<T>>> got(c.P);  // per rank: o, dq, dk, dv
  seqpar::run_in_process(c.P, where, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    const std::int64_t n = part.size(r), at = part.offset(r);
    buffer<T> bq(where, rows_of<T>(q, at, n)), bk(where, rows_of<T>(k, at, n)), bv(where, rows_of<T>(v, at, n)),
        bdo(where, rows_of<T>(dout, at, n));
    buffer<T> bo(where, std::vector<T>(c.B * n * c.H * E, poison<T>())),
        bdq(where, std::vector<T>(c.B * n * c.H * c.D, poison<T>())),
        bdk(where, std::vector<T>(c.B * n * c.H * c.D, poison<T>())),
        bdv(where, std::vector<T>(c.B * n * c.H * E, poison<T>()));
    auto view = [&](buffer<T>& b, std::int64_t x) { return seqpar::make_bshd(b.data(), c.B, n, c.H, x); };
    auto cview = [&](buffer<T>& b, std::int64_t x) { return seqpar::tensor_view<const T>(view(b, x)); };
    rank_stream stream(where);
    const seqpar::attention_shape shape{.batch = c.B, .heads = int(c.H), .head_dim = c.D, .value_dim = E};
    seqpar::lasp_attention layer(policy, comm, part, shape, seqpar::elements<T>, c.decay(), c.strategy);
    const auto saved = layer.forward({.q = cview(bq, c.D),
                                      .k = cview(bk, c.D),
                                      .v = cview(bv, E),
                                      .o = view(bo, E),
                                      .documents = docs.split() ? &docs : nullptr},
                                     {.stream = seqpar::stream_t(stream)});
    layer.backward(saved, {.dout = cview(bdo, E), .dq = view(bdq, c.D), .dk = view(bdk, c.D), .dv = view(bdv, E)},
                   {.stream = seqpar::stream_t(stream)});
    stream.sync();
    got[r] = {bo.values(), bdq.values(), bdk.values(), bdv.values()};
  });
  const double tol = lasp_tolerance<T>();
  for (int r = 0; r < c.P; ++r) {
    CAPTURE(r);
    const std::int64_t n = part.size(r), at = part.offset(r);
    CHECK(relative_error(got[r][0], ref.o, at, n) <= tol);
    CHECK(relative_error(got[r][1], ref.dq, at, n) <= tol);
    CHECK(relative_error(got[r][2], ref.dk, at, n) <= tol);
    CHECK(relative_error(got[r][3], ref.dv, at, n) <= tol);
    if (c.normalised) CHECK(normalised_error(got[r][0], q, k, v, c.decay(), at, n) <= 3 * tol);
  }
}

}  // namespace seqpar_test
