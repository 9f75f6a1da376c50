//! @file ulysses_cases.hpp
//! Checks of all_to_all_heads and its inverse on P in-process ranks, shared by the host tests and
//! the device tests. Inputs encode (source rank, tensor, batch, token, head, dim) in their bits;
//! every output element is compared with what the maps of docs/architecture.md say it must hold.
#pragma once

#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/in_process.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>
#include <seqpar_test/buffers.hpp>
#include <seqpar_test/ulysses_reference.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

namespace seqpar_test {

//! One configuration of the exchange.
struct ulysses_case {
  int P = 1, H = 1, H_kv = 1;
  std::int64_t B = 1, S = 1, D = 3;
  seqpar::order layout = seqpar::order::bshd;
  seqpar::shard_strategy strategy = seqpar::shard_strategy::contiguous;

  std::string name() const {
    return "P=" + std::to_string(P) + " H=" + std::to_string(H) + " H_kv=" + std::to_string(H_kv) +
           " B=" + std::to_string(B) + " S=" + std::to_string(S) + " D=" + std::to_string(D) +
           (layout == seqpar::order::bshd ? " BSHD" : " SBHD") + " " + seqpar::to_string(strategy);
  }
};

//! A packed [B, S, H, D] tensor in the case's layout, in host or device memory, whose logical
//! element (b, s, h, d) can be set and read on the host.
template <class T>
struct case_tensor {
  std::int64_t B, S, H, D;
  seqpar::order layout;
  std::vector<T> host;

  case_tensor(const ulysses_case& c, std::int64_t S_, std::int64_t H_, T fill)
      : B(c.B), S(S_), H(H_), D(c.D), layout(c.layout), host(B * S_ * H_ * c.D, fill) {}
  std::int64_t at(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) const {
    return layout == seqpar::order::bshd ? ((b * S + s) * H + h) * D + d : ((s * B + b) * H + h) * D + d;
  }
  T& operator()(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) { return host[at(b, s, h, d)]; }
  const T& operator()(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) const { return host[at(b, s, h, d)]; }
  seqpar::tensor_view<T> view(T* data) const { return seqpar::make_packed(data, layout, B, S, H, D); }
};

//! The bits of element (b, s, h, d) of tensor `which` (0 q, 1 k, 2 v) on source rank `rank`.
template <class T>
T encoded(int rank, int which, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
  return tagged<T>(key_of(rank * 4 + which, b, s, h * 64 + d));
}

//! Runs the Q/K/V forward exchange, then a one-tensor forward and inverse of Q, and checks every
//! output element against the maps.
template <class T>
void check_exact_maps(const ulysses_case& c, seqpar::memory_space where) {
  INFO(c.name());
  const token_owners tok(c.S, c.P, c.strategy);
  const head_owners heads(c.H, c.H_kv, c.P);
  std::vector<std::vector<case_tensor<T>>> got(c.P);  // per rank: q', k', v', q round trip
  seqpar::run_in_process(c.P, where, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    const auto part = seqpar::make_seq_partition(c.S, c.P, c.strategy);
    const auto plan = seqpar::make_all_to_all_heads_plan(r, part,
                                                         {.batch = c.B, .heads = c.H, .kv_heads = c.H_kv, .head_dim = c.D},
                                                         seqpar::dtype_of<T>);
    std::vector<case_tensor<T>> in{case_tensor<T>(c, tok.sizes[r], c.H, T{}), case_tensor<T>(c, tok.sizes[r], c.H_kv, T{}),
                                   case_tensor<T>(c, tok.sizes[r], c.H_kv, T{})};
    for (int w = 0; w < 3; ++w)
      for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t s = 0; s < in[w].S; ++s)
          for (std::int64_t h = 0; h < in[w].H; ++h)
            for (std::int64_t d = 0; d < c.D; ++d) in[w](b, s, h, d) = encoded<T>(r, w, b, s, h, d);
    std::vector<case_tensor<T>> out{case_tensor<T>(c, c.S, heads.count[r], poison<T>()),
                                    case_tensor<T>(c, c.S, heads.kv_count[r], poison<T>()),
                                    case_tensor<T>(c, c.S, heads.kv_count[r], poison<T>()),
                                    case_tensor<T>(c, tok.sizes[r], c.H, poison<T>())};
    std::vector<std::unique_ptr<buffer<T>>> in_buf, out_buf;
    for (auto& t : in) in_buf.push_back(std::make_unique<buffer<T>>(where, t.host));
    for (auto& t : out) out_buf.push_back(std::make_unique<buffer<T>>(where, t.host));
    buffer<std::byte> workspace(where, std::vector<std::byte>(plan.workspace_bytes()));
    buffer<T> q_heads(where, std::vector<T>(out[0].host.size(), poison<T>()));
    rank_stream stream(where);

    auto cin = [&](int w) { return seqpar::tensor_view<const T>(in[w].view(in_buf[w]->data())); };
    auto vout = [&](int w) { return out[w].view(out_buf[w]->data()); };
    seqpar::all_to_all_heads(
        plan, comm,
        seqpar::qkv_exchange_args<T>{
            .in = {cin(0), cin(1), cin(2)}, .out = {vout(0), vout(1), vout(2)}, .workspace = workspace.span()},
        {.stream = seqpar::stream_t(stream)});
    // Q alone there and back: forward into a fresh head shard, inverse into a fresh sequence shard.
    auto q_heads_view = out[0].view(q_heads.data());
    seqpar::all_to_all_heads(
        plan, comm, seqpar::heads_exchange_args<T>{.in = cin(0), .out = q_heads_view, .workspace = workspace.span()},
        {.stream = seqpar::stream_t(stream)});
    seqpar::all_to_all_heads_inverse(
        plan, comm,
        seqpar::heads_exchange_args<T>{
            .in = seqpar::tensor_view<const T>(q_heads_view), .out = vout(3), .workspace = workspace.span()},
        {.stream = seqpar::stream_t(stream)});
    stream.sync();
    for (int w = 0; w < 4; ++w) out[w].host = out_buf[w]->values();
    got[r] = out;
  });

  long wrong = 0;
  std::string first_wrong;
  auto expect = [&](const T& got_value, const T& want, const char* what, int r, std::int64_t b, std::int64_t s,
                    std::int64_t h, std::int64_t d) {
    if (same_bits(got_value, want)) return;
    if (!wrong++)
      first_wrong = std::string(what) + " on rank " + std::to_string(r) + " at (b, s, h, d) = (" + std::to_string(b) +
                    ", " + std::to_string(s) + ", " + std::to_string(h) + ", " + std::to_string(d) + ")";
  };
  for (int r = 0; r < c.P; ++r) {
    const auto& out = got[r];
    for (int j = 0; j < c.P; ++j)
      for (std::int64_t s = 0; s < tok.sizes[j]; ++s)
        for (std::int64_t b = 0; b < c.B; ++b)
          for (std::int64_t d = 0; d < c.D; ++d) {
            const std::int64_t g = tok.global_of[j][s];
            for (int h = 0; h < heads.count[r]; ++h)
              expect(out[0](b, g, h, d), encoded<T>(j, 0, b, s, heads.first[r] + h, d), "q heads", r, b, g, h, d);
            for (int h = 0; h < heads.kv_count[r]; ++h) {
              expect(out[1](b, g, h, d), encoded<T>(j, 1, b, s, heads.kv_first[r] + h, d), "k heads", r, b, g, h, d);
              expect(out[2](b, g, h, d), encoded<T>(j, 2, b, s, heads.kv_first[r] + h, d), "v heads", r, b, g, h, d);
            }
          }
    for (std::int64_t b = 0; b < c.B; ++b)
      for (std::int64_t s = 0; s < tok.sizes[r]; ++s)
        for (int h = 0; h < c.H; ++h)
          for (std::int64_t d = 0; d < c.D; ++d)
            expect(out[3](b, s, h, d), encoded<T>(r, 0, b, s, h, d), "q round trip", r, b, s, h, d);
  }
  INFO(first_wrong);
  CHECK(wrong == 0);
}

//! <A x, y> == <x, A^T y> for the Q/K/V exchange A (forward) and its inverse, on random data:
//! the inverse is the adjoint, GQA sums included.
inline void check_adjoint(const ulysses_case& c, seqpar::memory_space where) {
  INFO(c.name());
  const token_owners tok(c.S, c.P, c.strategy);
  const head_owners heads(c.H, c.H_kv, c.P);
  std::vector<double> ax_y(c.P), x_aty(c.P);
  std::vector<std::vector<std::vector<float>>> x(c.P), y(c.P);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (int r = 0; r < c.P; ++r)
    for (int w = 0; w < 3; ++w) {
      const int h_seq = w ? c.H_kv : c.H, h_heads = w ? heads.kv_count[r] : heads.count[r];
      std::vector<float> xs(c.B * tok.sizes[r] * h_seq * c.D), ys(c.B * c.S * h_heads * c.D);
      for (auto& v : xs) v = uniform(rng());
      for (auto& v : ys) v = uniform(rng());
      x[r].push_back(xs), y[r].push_back(ys);
    }
  seqpar::run_in_process(c.P, where, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    const auto part = seqpar::make_seq_partition(c.S, c.P, c.strategy);
    const auto plan = seqpar::make_all_to_all_heads_plan(r, part,
                                                         {.batch = c.B, .heads = c.H, .kv_heads = c.H_kv, .head_dim = c.D},
                                                         seqpar::dtype::float32);
    buffer<std::byte> workspace(where, std::vector<std::byte>(plan.workspace_bytes()));
    rank_stream stream(where);
    std::vector<std::unique_ptr<buffer<float>>> xb, yb, axb, atyb;
    for (int w = 0; w < 3; ++w) {
      xb.push_back(std::make_unique<buffer<float>>(where, x[r][w]));
      yb.push_back(std::make_unique<buffer<float>>(where, y[r][w]));
      axb.push_back(std::make_unique<buffer<float>>(where, std::vector<float>(y[r][w].size(), poison<float>())));
      atyb.push_back(std::make_unique<buffer<float>>(where, std::vector<float>(x[r][w].size(), poison<float>())));
    }
    auto seq_view = [&](buffer<float>& b, int w) {
      return seqpar::make_packed(b.data(), c.layout, c.B, tok.sizes[r], w ? c.H_kv : c.H, c.D);
    };
    auto heads_view = [&](buffer<float>& b, int w) {
      return seqpar::make_packed(b.data(), c.layout, c.B, c.S, w ? heads.kv_count[r] : heads.count[r], c.D);
    };
    auto as_const = [](seqpar::tensor_view<float> v) { return seqpar::tensor_view<const float>(v); };
    seqpar::all_to_all_heads(
        plan, comm,
        seqpar::qkv_exchange_args<float>{
            .in = {as_const(seq_view(*xb[0], 0)), as_const(seq_view(*xb[1], 1)), as_const(seq_view(*xb[2], 2))},
            .out = {heads_view(*axb[0], 0), heads_view(*axb[1], 1), heads_view(*axb[2], 2)},
            .workspace = workspace.span()},
        {.stream = seqpar::stream_t(stream)});
    seqpar::all_to_all_heads_inverse(
        plan, comm,
        seqpar::qkv_exchange_args<float>{
            .in = {as_const(heads_view(*yb[0], 0)), as_const(heads_view(*yb[1], 1)), as_const(heads_view(*yb[2], 2))},
            .out = {seq_view(*atyb[0], 0), seq_view(*atyb[1], 1), seq_view(*atyb[2], 2)},
            .workspace = workspace.span()},
        {.stream = seqpar::stream_t(stream)});
    stream.sync();
    for (int w = 0; w < 3; ++w) {
      const auto ax = axb[w]->values(), aty = atyb[w]->values();
      for (std::size_t i = 0; i < ax.size(); ++i) ax_y[r] += double(ax[i]) * y[r][w][i];
      for (std::size_t i = 0; i < aty.size(); ++i) x_aty[r] += double(x[r][w][i]) * aty[i];
    }
  });
  double lhs = 0, rhs = 0, scale = 0;
  for (int r = 0; r < c.P; ++r) lhs += ax_y[r], rhs += x_aty[r], scale += std::abs(ax_y[r]);
  CHECK(std::abs(lhs - rhs) <= 1e-5 * (1 + scale));
}

}  // namespace seqpar_test
