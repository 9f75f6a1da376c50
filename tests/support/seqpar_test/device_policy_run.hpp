//! @file device_policy_run.hpp
//! One attention policy's forward and backward on one device, over inputs in padded (strided) or
//! packed BSHD device tensors: what the device policy tests compare against each other.
#pragma once

#include <seqpar_test/attention_cases.hpp>
#include <seqpar_test/buffers.hpp>

#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>
#include <vector>

namespace seqpar_test {
// A [B, S, H, D] tensor in device memory whose tokens sit `pad` elements apart beyond H * D (pad = 0:
// packed BSHD; pad = 1: no 16-byte loads possible), poisoned between and around the values.
template <class T>
struct padded_tensor {
  std::int64_t B, S, H, D, pad;
  buffer<T> data;
  // With `values` false every element is poison (an output).
  padded_tensor(const dense4& a, std::int64_t pad_, bool values = true)
      : B(a.B), S(a.S), H(a.H), D(a.X), pad(pad_), data(seqpar::memory_space::device, place(a, pad_, values)) {}
  static std::vector<T> place(const dense4& a, std::int64_t pad, bool values) {
    std::vector<T> out(a.B * a.S * (a.H * a.X + pad), poison<T>());
    if (values)
      for (std::int64_t b = 0; b < a.B; ++b)
        for (std::int64_t s = 0; s < a.S; ++s)
          for (std::int64_t h = 0; h < a.H; ++h)
            for (std::int64_t d = 0; d < a.X; ++d)
              out[(b * a.S + s) * (a.H * a.X + pad) + h * a.X + d] =
                  seqpar::from_float<T>(static_cast<float>(a(b, s, h, d)));
    return out;
  }
  seqpar::tensor_view<T> view() {
    return seqpar::make_strided(data.data(), {B, S, H, D}, {S * (H * D + pad), H * D + pad, D, 1});
  }
  seqpar::tensor_view<const T> cview() { return view(); }
  std::vector<T> packed() const {  // the values, BSHD
    const std::vector<T> all = data.values();
    std::vector<T> out;
    for (std::int64_t t = 0; t < B * S; ++t)
      out.insert(out.end(), all.begin() + t * (H * D + pad), all.begin() + t * (H * D + pad) + H * D);
    return out;
  }
};

// Runs `policy` forward and backward on one device; returns o, dq, dk, dv (BSHD) and lse.
template <class T, class Policy>
std::pair<std::vector<std::vector<T>>, std::vector<float>> run_on_device(
    const Policy& policy, const dense4& q, const dense4& k, const dense4& v,
    const dense4& dout, seqpar::attention_options opt, std::int64_t pad) {
  dense4 zq(q.B, q.S, q.H, q.X), zk(k.B, k.S, k.H, k.X);
  padded_tensor<T> tq(q, pad), tk(k, pad), tv(v, pad), tdo(dout, pad), to(zq, pad, false), tdq(zq, pad, false),
      tdk(zk, pad, false), tdv(zk, pad, false);
  buffer<float> lse(seqpar::memory_space::device, std::vector<float>(q.B * q.H * q.S, NAN));
  seqpar::lse_view l(lse.data(), q.B, q.H, q.S);
  const seqpar::gqa_map map{0, static_cast<int>(q.H / k.H), 0};
  policy.forward(
      seqpar::policy_forward_args<T>{
          .q = tq.cview(), .k = tk.cview(), .v = tv.cview(), .o = to.view(), .lse = l, .map = map, .options = opt},
      nullptr);
  policy.backward(seqpar::policy_backward_args<T>{.q = tq.cview(),
                                                  .k = tk.cview(),
                                                  .v = tv.cview(),
                                                  .o = to.cview(),
                                                  .lse = seqpar::const_lse_view(l),
                                                  .dout = tdo.cview(),
                                                  .dq = tdq.view(),
                                                  .dk = tdk.view(),
                                                  .dv = tdv.view(),
                                                  .map = map,
                                                  .options = opt},
                  nullptr);
  SEQPAR_CUDA_TRY(cudaDeviceSynchronize());
  return {{to.packed(), tdq.packed(), tdk.packed(), tdv.packed()}, lse.values()};
}

// One device's shapes: B sequences of S tokens, H query and H_kv kv heads of D elements, the
// tested policy's tokens `pad` elements apart beyond H * D.
struct device_case {
  std::int64_t B, S;
  int H, H_kv, D;
  std::int64_t pad;
};

// For each case, causal and not: `policy` on padded views against `reference` on packed ones, from
// the same random inputs: o, dq, dk, dv within lasp_tolerance<T> of the largest reference magnitude,
// and the lse within 1e-3 (both fp32 from the same rounded inputs).
template <class T, class Policy, class Reference>
void check_against_device_reference(const Policy& policy, const Reference& reference,
                                    std::initializer_list<device_case> cases) {
  for (const device_case c : cases)
    for (bool causal : {false, true}) {
      INFO("S=" << c.S << " D=" << c.D << " H_kv=" << c.H_kv << " pad=" << c.pad << " causal=" << causal);
      const auto q = random_input<T>(c.B, c.S, c.H, c.D), dout = random_input<T>(c.B, c.S, c.H, c.D);
      const auto k = random_input<T>(c.B, c.S, c.H_kv, c.D), v = random_input<T>(c.B, c.S, c.H_kv, c.D);
      const seqpar::attention_options opt{static_cast<float>(1.0 / std::sqrt(double(c.D))), causal};
      const auto [got, got_lse] = run_on_device<T>(policy, q, k, v, dout, opt, c.pad);
      const auto [want, want_lse] = run_on_device<T>(reference, q, k, v, dout, opt, 0);
      const char* names[] = {"o", "dq", "dk", "dv"};
      for (int w = 0; w < 4; ++w) {
        INFO(names[w]);
        CHECK(relative_gap(got[w], want[w]) <= lasp_tolerance<T>());
      }
      double lse_gap = 0;
      for (std::size_t i = 0; i < want_lse.size(); ++i)
        lse_gap = std::max(lse_gap, double(std::abs(got_lse[i] - want_lse[i])));
      CHECK(lse_gap <= 1e-3);
    }
}
// ring_attention with `policy` on device memory against the host reference, causal and not, over
// P ranks of `ranks`, 1 and 2 kv heads: contiguous uneven shards (64 P + 5 tokens, head dim 64) and
// zigzag ones (80 P tokens, head dim 128).
template <class T, class Policy>
void check_ring_on_device(const Policy& policy, std::initializer_list<int> ranks) {
  const auto ring = [policy](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
    return seqpar::ring_attention(policy, comm, part, shape, type, opt);
  };
  const auto everything = [](std::int64_t, std::int64_t) { return true; };
  for (int P : ranks)
    for (bool causal : {false, true})
      for (int H_kv : {1, 2}) {
        (void)check_parallel_attention<T>({P, 2, H_kv, 2, 64 * P + 5, 64, causal}, seqpar::memory_space::device, ring,
                                          seqpar::reference_attention{}, everything);
        (void)check_parallel_attention<T>({P, 2, H_kv, 1, 80 * P, 128, causal, seqpar::shard_strategy::zigzag},
                                          seqpar::memory_space::device, ring, seqpar::reference_attention{},
                                          everything);
      }
}

// The 2-D layer with `policy` on device memory against the host reference, causal and not, for
// each mesh {u, r}: 2 * r * chunk tokens, 4 query and 2 kv heads, batch 2, head dim D.
template <class T, class Policy>
void check_ulysses_ring_on_device(const Policy& policy, std::initializer_list<std::pair<int, int>> meshes,
                                  std::int64_t chunk, std::int64_t D) {
  for (auto [u, r] : meshes)
    for (bool causal : {false, true}) {
      const auto layout = seqpar::make_token_layout_2d(2 * r * chunk, {u, r});
      (void)check_parallel_attention_on<T>(
          {u * r, 4, 2, 2, layout.tokens, D, causal}, layout, seqpar::memory_space::device,
          [policy](auto& comm, const auto& l, const auto& shape, auto type, const auto& opt) {
            return seqpar::ulysses_ring_attention(policy, comm, l, shape, type, opt);
          },
          seqpar::reference_attention{}, [](std::int64_t, std::int64_t) { return true; });
    }
}
}  // namespace seqpar_test
