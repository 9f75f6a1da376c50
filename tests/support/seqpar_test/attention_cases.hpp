//! @file attention_cases.hpp
//! ulysses_attention on P in-process ranks against the same policy on one device, plus an
//! independent dense softmax attention in double for the forward pass.
#pragma once

#include <seqpar/comm/in_process.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>
#include <seqpar_test/buffers.hpp>
#include <seqpar_test/lasp_cases.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <array>
#include <mutex>
#include <string>

namespace seqpar_test {

//! One attention configuration.
struct attention_case {
  int P = 1, H = 4, H_kv = 4;
  std::int64_t B = 2, S = 9, D = 4;
  bool causal = false;
  seqpar::shard_strategy strategy = seqpar::shard_strategy::contiguous;
  std::string name() const {
    return "P=" + std::to_string(P) + " H=" + std::to_string(H) + " H_kv=" + std::to_string(H_kv) + " B=" +
           std::to_string(B) + " S=" + std::to_string(S) + (causal ? " causal" : "") + " " + seqpar::to_string(strategy);
  }
};

//! Dense softmax attention in double, written out directly: o[b, i, h] = sum_j softmax_j(scale
//! q_i . k_j) v_j over allowed(i, j) (and j <= i when causal); kv head h / (H / H_kv).
template <class Allowed>
dense4 dense_attention(const dense4& q, const dense4& k, const dense4& v, double scale, bool causal, Allowed allowed) {
  dense4 o(q.B, q.S, q.H, q.X);
  const std::int64_t group = q.H / k.H;
  for (std::int64_t b = 0; b < q.B; ++b)
    for (std::int64_t h = 0; h < q.H; ++h)
      for (std::int64_t i = 0; i < q.S; ++i) {
        std::vector<double> w(q.S, 0.0);
        double m = -std::numeric_limits<double>::infinity(), sum = 0;
        for (std::int64_t j = 0; j < q.S; ++j) {
          if ((causal && j > i) || !allowed(i, j)) continue;
          double s = 0;
          for (std::int64_t d = 0; d < q.X; ++d) s += q(b, i, h, d) * k(b, j, h / group, d);
          w[j] = scale * s;
          m = std::max(m, w[j]);
        }
        for (std::int64_t j = 0; j < q.S; ++j)
          if (!((causal && j > i) || !allowed(i, j))) sum += w[j] = std::exp(w[j] - m);
          else w[j] = 0;
        for (std::int64_t d = 0; d < q.X; ++d)
          for (std::int64_t j = 0; j < q.S; ++j) o(b, i, h, d) += sum > 0 ? w[j] / sum * v(b, j, h / group, d) : 0.0;
      }
  return o;
}

//! Runs `policy` on all heads of the full tensors on one "device" (the host); returns o, dq, dk, dv.
template <class T, class Policy>
std::vector<std::vector<T>> single_device(const Policy& policy, const dense4& q, const dense4& k, const dense4& v,
                                          const dense4& dout, seqpar::attention_options opt) {
  auto all = [](const dense4& a) { return rows_of<T>(a, 0, a.S); };
  std::vector<T> hq = all(q), hk = all(k), hv = all(v), hdo = all(dout), o(hq.size()), dq(hq.size()), dk(hk.size()),
                 dv(hk.size());
  std::vector<float> lse(q.B * q.H * q.S);
  auto cv = [&](std::vector<T>& x, std::int64_t h) { return seqpar::make_bshd<const T>(x.data(), q.B, q.S, h, q.X); };
  auto mv = [&](std::vector<T>& x, std::int64_t h) { return seqpar::make_bshd(x.data(), q.B, q.S, h, q.X); };
  const seqpar::gqa_map map{0, static_cast<int>(q.H / k.H), 0};
  seqpar::lse_view l(lse.data(), q.B, q.H, q.S);
  policy.forward(
      seqpar::policy_forward_args<T>{
          .q = cv(hq, q.H), .k = cv(hk, k.H), .v = cv(hv, k.H), .o = mv(o, q.H), .lse = l, .map = map, .options = opt},
      nullptr);
  policy.backward(seqpar::policy_backward_args<T>{.q = cv(hq, q.H),
                                                  .k = cv(hk, k.H),
                                                  .v = cv(hv, k.H),
                                                  .o = cv(o, q.H),
                                                  .lse = seqpar::const_lse_view(l),
                                                  .dout = cv(hdo, q.H),
                                                  .dq = mv(dq, q.H),
                                                  .dk = mv(dk, k.H),
                                                  .dv = mv(dv, k.H),
                                                  .map = map,
                                                  .options = opt},
                  nullptr);
  return {o, dq, dk, dv};
}

//! `policy`'s block functions on rows [first, first + n) of the full tensors as one block pair at
//! their own positions (so a position mask still sees global positions): o, dq, dk, dv of those rows
//! against those keys alone, each [B, n, heads, D].
template <class T, class Policy>
std::vector<std::vector<T>> rows_alone(const Policy& policy, const dense4& q, const dense4& k, const dense4& v,
                                       const dense4& dout, seqpar::attention_options opt, std::int64_t first,
                                       std::int64_t n) {
  const std::int64_t B = q.B, H = q.H, Hk = k.H, D = q.X;
  auto cut = [&](const dense4& a) { return rows_of<T>(a, first, n); };
  const std::vector<T> hq = cut(q), hk = cut(k), hv = cut(v), hdo = cut(dout);
  auto cv = [&](const std::vector<T>& x, std::int64_t h) { return seqpar::make_bshd<const T>(x.data(), B, n, h, D); };
  std::vector<float> o(hq.size()), lse(B * H * n), dots(lse.size(), 0.0f), dq(hq.size(), 0.0f), dk(hk.size(), 0.0f),
      dv(hk.size(), 0.0f);
  const seqpar::gqa_map map{0, static_cast<int>(H / Hk), 0};
  const seqpar::block_pair pair{first, first,
                                opt.causal ? seqpar::block_relation::diagonal : seqpar::block_relation::visible};
  policy.block_forward(seqpar::block_forward_args<T>{.q = cv(hq, H),
                                                     .k = cv(hk, Hk),
                                                     .v = cv(hv, Hk),
                                                     .o_part = seqpar::make_bshd(o.data(), B, n, H, D),
                                                     .lse_part = seqpar::lse_view(lse.data(), B, H, n),
                                                     .map = map,
                                                     .options = opt,
                                                     .pair = pair},
                       nullptr);
  std::vector<T> ho(o.size());
  for (std::size_t i = 0; i < o.size(); ++i) ho[i] = seqpar::from_float<T>(o[i]);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t s = 0; s < n; ++s)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t d = 0; d < D; ++d) {
          const std::size_t at = static_cast<std::size_t>(((b * n + s) * H + h) * D + d);
          dots[(b * H + h) * n + s] += seqpar::to_float(hdo[at]) * seqpar::to_float(ho[at]);
        }
  policy.block_backward(seqpar::block_backward_args<T>{.q = cv(hq, H),
                                                       .k = cv(hk, Hk),
                                                       .v = cv(hv, Hk),
                                                       .dout = cv(hdo, H),
                                                       .lse = seqpar::const_lse_view(lse.data(), B, H, n),
                                                       .row_dots = seqpar::const_lse_view(dots.data(), B, H, n),
                                                       .dq = seqpar::make_bshd(dq.data(), B, n, H, D),
                                                       .dk = seqpar::make_bshd(dk.data(), B, n, Hk, D),
                                                       .dv = seqpar::make_bshd(dv.data(), B, n, Hk, D),
                                                       .map = map,
                                                       .options = opt,
                                                       .pair = pair},
                        nullptr);
  auto as_t = [](const std::vector<float>& x) {
    std::vector<T> out(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = seqpar::from_float<T>(x[i]);
    return out;
  };
  return {ho, as_t(dq), as_t(dk), as_t(dv)};
}

//! Each document of `docs` alone (its rows cut out, no document mask, at its own positions), the
//! results put back in place: the packed-sequence reference.
template <class T, class Policy>
std::vector<std::vector<T>> per_document(const Policy& policy, const dense4& q, const dense4& k, const dense4& v,
                                         const dense4& dout, seqpar::attention_options opt,
                                         const seqpar::document_layout& docs) {
  std::vector<std::vector<T>> all{std::vector<T>(q.v.size()), std::vector<T>(q.v.size()), std::vector<T>(k.v.size()),
                                  std::vector<T>(k.v.size())};
  for (int d = 0; d < docs.count(); ++d) {
    const std::int64_t first = docs.begin(d), n = docs.end(d) - first;
    const auto one = rows_alone<T>(policy, q, k, v, dout, opt, first, n);
    for (int w = 0; w < 4; ++w) {
      const std::int64_t H = w < 2 ? q.H : k.H, row = H * q.X;
      for (std::int64_t b = 0; b < q.B; ++b)
        for (std::int64_t s = 0; s < n; ++s)
          std::copy_n(one[w].begin() + (b * n + s) * row, row, all[w].begin() + (b * q.S + first + s) * row);
    }
  }
  return all;
}

//! max |got - want| / max |want| between two arrays of the same global layout (T or double).
template <class T, class U>
double relative_gap(const std::vector<T>& got, const std::vector<U>& want) {
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double g = as_double(got[i]), w = as_double(want[i]);
    if (!std::isfinite(g)) return INFINITY;
    err = std::max(err, std::abs(g - w));
    scale = std::max(scale, std::abs(w));
  }
  return err / scale;
}

//! Runs a sequence-parallel attention layer, make_layer(comm, part, shape, seqpar::elements<T>,
//! options), forward and backward on P ranks and compares the gathered o, dq, dk, dv with
//! `host_policy` on one device (and o with the dense definition).
//! Returns the relative gaps of o, dq, dk, dv against one device and of o against the dense
//! definition in double (not rounded to T: the error a user sees).
//! `part` says which tokens each rank holds: part.size(r) and part.global(r, s) (a seq_partition, or
//! another layout), and is what make_layer receives. With packed documents `docs`, the layer runs
//! with them and the reference is each document alone (per_document).
template <class T, class Layout, class MakeLayer, class HostPolicy, class Allowed>
std::array<double, 5> check_parallel_attention_on(const attention_case& c, const Layout& part,
                                                  seqpar::memory_space where, MakeLayer make_layer,
                                                  const HostPolicy& host_policy, Allowed allowed,
                                                  const seqpar::document_layout& docs = {}) {
  INFO(c.name() << (docs.split() ? " documents=" + std::to_string(docs.count()) : std::string()));
  const auto q = random_input<T>(c.B, c.S, c.H, c.D), dout = random_input<T>(c.B, c.S, c.H, c.D);
  const auto k = random_input<T>(c.B, c.S, c.H_kv, c.D), v = random_input<T>(c.B, c.S, c.H_kv, c.D);
  const seqpar::attention_options opt{static_cast<float>(1.0 / std::sqrt(double(c.D))), c.causal};
  const auto want = docs.split() ? per_document<T>(host_policy, q, k, v, dout, opt, docs)
                                 : single_device<T>(host_policy, q, k, v, dout, opt);
  // Global results, assembled from each rank's shard (every element written exactly once).
  std::vector<std::vector<T>> got{std::vector<T>(want[0].size(), poison<T>()), std::vector<T>(want[1].size(), poison<T>()),
                                  std::vector<T>(want[2].size(), poison<T>()), std::vector<T>(want[3].size(), poison<T>())};
  std::mutex m;
  seqpar::run_in_process(c.P, where, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    const std::int64_t n = part.size(r);
    auto shard = [&](const dense4& a) {
      std::vector<T> out;
      for (std::int64_t b = 0; b < a.B; ++b)
        for (std::int64_t s = 0; s < n; ++s)
          for (std::int64_t h = 0; h < a.H; ++h)
            for (std::int64_t x = 0; x < a.X; ++x)
              out.push_back(seqpar::from_float<T>(static_cast<float>(a(b, part.global(r, s), h, x))));
      return out;
    };
    buffer<T> bq(where, shard(q)), bk(where, shard(k)), bv(where, shard(v)), bdo(where, shard(dout));
    buffer<T> bo(where, std::vector<T>(c.B * n * c.H * c.D, poison<T>())),
        bdq(where, std::vector<T>(c.B * n * c.H * c.D, poison<T>())),
        bdk(where, std::vector<T>(c.B * n * c.H_kv * c.D, poison<T>())),
        bdv(where, std::vector<T>(c.B * n * c.H_kv * c.D, poison<T>()));
    auto mv = [&](buffer<T>& x, std::int64_t h) { return seqpar::make_bshd(x.data(), c.B, n, h, c.D); };
    auto cv = [&](buffer<T>& x, std::int64_t h) { return seqpar::tensor_view<const T>(mv(x, h)); };
    rank_stream stream(where);
    const seqpar::attention_shape shape{.batch = c.B, .heads = c.H, .kv_heads = c.H_kv, .head_dim = c.D};
    auto layer = make_layer(comm, part, shape, seqpar::elements<T>, opt);
    const auto saved = layer.forward({.q = cv(bq, c.H),
                                      .k = cv(bk, c.H_kv),
                                      .v = cv(bv, c.H_kv),
                                      .o = mv(bo, c.H),
                                      .documents = docs.split() ? &docs : nullptr},
                                     {.stream = seqpar::stream_t(stream)});
    layer.backward(saved, {.dout = cv(bdo, c.H), .dq = mv(bdq, c.H), .dk = mv(bdk, c.H_kv), .dv = mv(bdv, c.H_kv)},
                   {.stream = seqpar::stream_t(stream)});
    stream.sync();
    const std::vector<std::vector<T>> local{bo.values(), bdq.values(), bdk.values(), bdv.values()};
    std::lock_guard lock(m);
    for (int w = 0; w < 4; ++w) {
      const std::int64_t heads = (w == 2 || w == 3) ? c.H_kv : c.H;
      std::size_t i = 0;
      for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t s = 0; s < n; ++s)
          for (std::int64_t h = 0; h < heads; ++h)
            for (std::int64_t x = 0; x < c.D; ++x, ++i)
              got[w][((b * c.S + part.global(r, s)) * heads + h) * c.D + x] = local[w][i];
    }
  });
  const double tol = lasp_tolerance<T>();
  const char* names[] = {"o", "dq", "dk", "dv"};
  std::array<double, 5> gaps{};
  for (int w = 0; w < 4; ++w) {
    INFO(names[w]);
    gaps[w] = relative_gap(got[w], want[w]);
    CHECK(gaps[w] <= tol);
  }
  const auto ids = docs.host_ids();
  const auto dense = dense_attention(q, k, v, opt.scale, c.causal,
                                     [&](std::int64_t i, std::int64_t j) { return allowed(i, j) && ids.same(i, j); });
  INFO("o against the dense definition, in double");
  gaps[4] = relative_gap(got[0], dense.v);
  CHECK(gaps[4] <= tol);
  return gaps;
}

//! check_parallel_attention_on over the partition of c.S tokens by c.strategy.
template <class T, class MakeLayer, class HostPolicy, class Allowed>
std::array<double, 5> check_parallel_attention(const attention_case& c, seqpar::memory_space where, MakeLayer make_layer,
                                               const HostPolicy& host_policy, Allowed allowed,
                                               const seqpar::document_layout& docs = {}) {
  return check_parallel_attention_on<T>(c, seqpar::make_seq_partition(c.S, c.P, c.strategy), where, make_layer,
                                        host_policy, allowed, docs);
}

//! check_parallel_attention of ulysses_attention with `policy`.
template <class T, class Policy, class HostPolicy, class Allowed>
void check_ulysses_attention(const attention_case& c, seqpar::memory_space where, const Policy& policy,
                             const HostPolicy& host_policy, Allowed allowed) {
  (void)check_parallel_attention<T>(
      c, where,
      [&](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
        return seqpar::ulysses_attention(policy, comm, part, shape, type, opt);
      },
      host_policy, allowed);
}

}  // namespace seqpar_test
