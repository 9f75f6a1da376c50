// ZeRO-3-style sharding: the partition's layout algebra; gather and reduce_scatter against the
// unsharded layout for uneven unit sizes on every DP x SP mesh up to 8 ranks; AdamW on the shards
// against a plain AdamW over the whole model; the gradient rule (per-rank losses over the global
// token count, summed over the mesh) against one rank's gradient of the same global batch through
// real sequence-parallel attention; bad input on one rank at a time.
#include <seqpar/comm/in_process.hpp>
#include <seqpar/mesh.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>
#include <seqpar/zero/adamw.hpp>
#include <seqpar/zero/sharded_parameters.hpp>
#include <seqpar_test/all_or_nothing.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace {
using seqpar::parameter_spec;

// Units of awkward sizes: none divides evenly over 3, 5, 6, 7 or 8 ranks, one is smaller than 8.
std::vector<std::vector<parameter_spec>> uneven_units() {
  return {{{13}, {7, false}, {1}}, {{5}}, {{11, false}, {29}}, {{64}, {3}}};
}

// A distinct value for element i of unit u.
float value_of(int u, std::int64_t i) { return static_cast<float>(u * 128 + i + 1); }
// A small integer for element i of unit u: (r + 1) times it, and sums of those over up to 8 ranks,
// are exact in bf16.
float small_value(int u, std::int64_t i) { return static_cast<float>((3 * u + i) % 8 + 1); }

std::vector<float> full_unit(const seqpar::parameter_partition& part, int u) {
  std::vector<float> v(static_cast<std::size_t>(part.unit_elements(u)));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = value_of(u, static_cast<std::int64_t>(i)) / 1024.0f;
  return v;
}

// Every DP x SP mesh of up to 8 ranks.
std::vector<seqpar::mesh_shape> meshes() {
  std::vector<seqpar::mesh_shape> out;
  for (int P = 1; P <= 8; ++P)
    for (int sp = 1; sp <= P; ++sp)
      if (P % sp == 0) out.push_back({.dp = P / sp, .sp = sp});
  return out;
}
}  // namespace

TEST_CASE("parameter_partition: each unit padded to N equal pieces, rank r owning piece r") {
  for (int N = 1; N <= 8; ++N) {
    CAPTURE(N);
    const seqpar::parameter_partition part(uneven_units(), N);
    CHECK(part.units() == 4);
    CHECK(part.elements() == 21 + 5 + 40 + 67);
    std::int64_t shard_at = 0;
    for (int u = 0; u < part.units(); ++u) {
      const std::int64_t n = part.unit_elements(u), shard = (n + N - 1) / N;
      CHECK(part.shard_elements(u) == shard);
      CHECK(part.padded_elements(u) == shard * N);
      CHECK(part.shard_offset(u) == shard_at);
      shard_at += shard;
      // The owned ranges tile the unit exactly, in rank order.
      std::int64_t covered = 0;
      for (int r = 0; r < N; ++r) {
        const auto [first, count] = part.owned(u, r);
        if (count > 0) CHECK(first == covered);
        covered += count;
        CHECK(count <= shard);
      }
      CHECK(covered == n);
      std::int64_t at = 0;
      for (int p = 0; p < part.parameters(u); ++p) {
        CHECK(part.offset(u, p) == at);
        at += part.parameter(u, p).elements;
      }
      CHECK(at == n);
    }
    CHECK(part.shard_elements() == shard_at);
  }
  CHECK(seqpar::parameter_partition(uneven_units(), 3).fingerprint_value() !=
        seqpar::parameter_partition(uneven_units(), 4).fingerprint_value());
  auto flipped = uneven_units();
  flipped[0][1].decay = true;
  CHECK(seqpar::parameter_partition(flipped, 3).fingerprint_value() !=
        seqpar::parameter_partition(uneven_units(), 3).fingerprint_value());
}

TEST_CASE("parameter_partition: bad sizes are named") {
  CHECK_THROWS_WITH_AS(seqpar::parameter_partition(uneven_units(), 0), doctest::Contains("ranks: expected at least 1"),
                       seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::parameter_partition({}, 2), doctest::Contains("units: expected at least one unit"),
                       seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::parameter_partition({{{3}}, {}}, 2),
                       doctest::Contains("units[1]: expected at least one parameter"), seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::parameter_partition({{{3}, {0}}}, 2),
                       doctest::Contains("units[0][1].elements: expected at least 1, got 0"), seqpar::error);
  const seqpar::parameter_partition part(uneven_units(), 2);
  CHECK_THROWS_WITH_AS(part.unit_elements(4), doctest::Contains("unit: expected 0 <= unit < 4, got 4"), seqpar::error);
  CHECK_THROWS_WITH_AS(part.offset(0, 3), doctest::Contains("parameter: expected 0 <= parameter < 3 in unit 0, got 3"),
                       seqpar::error);
}

TEST_CASE_TEMPLATE("sharded_parameters: gather and reduce_scatter match the unsharded layout on every mesh", T, float,
                   __half, __nv_bfloat16) {
  for (const auto shape : meshes()) {
    const int P = shape.dp * shape.sp;
    CAPTURE(shape.dp);
    CAPTURE(shape.sp);
    std::mutex m;
    int wrong = 0, checked = 0;
    seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& world) {
      seqpar::mesh mesh(world, shape);
      const seqpar::parameter_partition part(uneven_units(), P);
      seqpar::sharded_parameters params(mesh.zero_group(), part);
      const int r = world.rank();
      int bad = 0, seen = 0;
      for (int u = 0; u < part.units(); ++u) params.load(u, full_unit(part, u), nullptr);
      for (int u = 0; u < part.units(); ++u) {
        const auto want = full_unit(part, u);
        // The master piece: the owned elements, then zero padding.
        const auto [first, count] = part.owned(u, r);
        const auto piece = params.master(u);
        for (std::int64_t i = 0; i < part.shard_elements(u); ++i, ++seen)
          bad += piece[i] != (i < count ? want[first + i] : 0.0f);
        // The gather: every element of the unit, converted to T; parameter views at their offsets.
        const auto unit = params.template gather<T>(u, nullptr);
        const auto got = unit.elements();
        for (std::size_t i = 0; i < want.size(); ++i, ++seen)
          bad += seqpar::to_float(got[i]) != seqpar::to_float(seqpar::from_float<T>(want[i]));
        for (int p = 0; p < part.parameters(u); ++p, ++seen)
          bad += unit.parameter(p).data() != got.data() + part.offset(u, p) ||
                 static_cast<std::int64_t>(unit.parameter(p).size()) != part.parameter(u, p).elements;
      }
      // reduce_scatter: rank q contributes (q + 1) * small_value(u, i), twice, so the piece holds
      // 2 * P (P + 1) / 2 * small_value(u, i) of its elements.
      for (int round = 0; round < 2; ++round)
        for (int u = 0; u < part.units(); ++u) {
          auto grads = params.template gradient_buffer<T>(u, nullptr);
          const auto all = grads.elements();
          for (std::size_t i = 0; i < all.size(); ++i)
            all[i] = seqpar::from_float<T>(static_cast<float>(r + 1) * small_value(u, static_cast<std::int64_t>(i)));
          params.reduce_scatter(std::move(grads), nullptr);
        }
      for (int u = 0; u < part.units(); ++u) {
        const auto [first, count] = part.owned(u, r);
        const auto piece = params.gradients(u);
        for (std::int64_t i = 0; i < part.shard_elements(u); ++i, ++seen) {
          bad += piece[i] != (i < count ? static_cast<float>(P * (P + 1)) * small_value(u, first + i) : 0.0f);
        }
      }
      params.zero_gradients(nullptr);
      for (float g : params.gradients()) bad += g != 0.0f;
      std::lock_guard lock(m);
      wrong += bad, checked += seen;
    });
    CHECK(checked > 0);
    CHECK(wrong == 0);
  }
}

TEST_CASE("sharded_parameters: what a rank holds, and the largest gathered working set") {
  seqpar::run_in_process(3, seqpar::memory_space::host, [&](seqpar::in_process_communicator& world) {
    const seqpar::parameter_partition part(uneven_units(), 3);
    seqpar::sharded_parameters params(world, part);
    const auto held = static_cast<std::size_t>(part.shard_elements()) * sizeof(float);
    CHECK(params.memory().parameters == held);
    CHECK(params.memory().gradients == held);
    CHECK(params.memory().gathered_peak == 0);
    {
      const auto a = params.gather<float>(3, nullptr);
      const auto b = params.gradient_buffer<__half>(3, nullptr);
      CHECK(params.memory().gathered_now == a.bytes() + b.bytes());
      CHECK(a.bytes() == static_cast<std::size_t>(part.padded_elements(3)) * sizeof(float));
      CHECK(b.bytes() == static_cast<std::size_t>(part.padded_elements(3)) * 2);
    }
    const auto peak = static_cast<std::size_t>(part.padded_elements(3)) * 6;
    CHECK(params.memory().gathered_now == 0);
    CHECK(params.memory().gathered_peak == peak);
    { const auto c = params.gather<float>(1, nullptr); }
    CHECK(params.memory().gathered_peak == peak);
    params.reset_peak();
    CHECK(params.memory().gathered_peak == 0);
  });
}

TEST_CASE("sharded_parameters: the gradient norm sums every rank's shard; scale_gradients scales this rank's") {
  for (int P : {1, 2, 3, 8}) {
    CAPTURE(P);
    const seqpar::parameter_partition part(uneven_units(), P);
    // Element i of unit u has gradient small_value(u, i) / 8 once reduced: the norm is that of
    // every element of the model, whatever the padding.
    double want = 0;
    for (int u = 0; u < part.units(); ++u)
      for (std::int64_t i = 0; i < part.unit_elements(u); ++i) want += std::pow(small_value(u, i) / 8.0, 2);
    want = std::sqrt(want);
    std::mutex m;
    std::vector<double> norms, scaled;
    seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& world) {
      seqpar::sharded_parameters params(world, part);
      for (int u = 0; u < part.units(); ++u) {
        auto grads = params.gradient_buffer<float>(u, nullptr);
        for (std::size_t i = 0; i < grads.elements().size(); ++i)
          grads.elements()[i] = world.rank() == 0 ? small_value(u, static_cast<std::int64_t>(i)) / 8.0f : 0.0f;
        params.reduce_scatter(std::move(grads), nullptr);
      }
      const double norm = params.gradient_norm(nullptr);
      params.scale_gradients(0.25f, nullptr);
      const double after = params.gradient_norm(nullptr);
      std::lock_guard lock(m);
      norms.push_back(norm), scaled.push_back(after);
    });
    for (int r = 0; r < P; ++r) {
      CHECK(norms[r] == doctest::Approx(want).epsilon(1e-12));
      CHECK(scaled[r] == doctest::Approx(want / 4).epsilon(1e-12));
    }
  }
}

namespace {
// Plain AdamW (torch.optim.AdamW) over the whole model in double: the reference for the shards.
struct plain_adamw {
  seqpar::adamw_options o;
  std::vector<double> m, v;
  int t = 0;
  void step(std::vector<double>& w, const std::vector<double>& g, const std::vector<bool>& decay) {
    if (m.empty()) m.assign(w.size(), 0), v.assign(w.size(), 0);
    ++t;
    for (std::size_t i = 0; i < w.size(); ++i) {
      if (decay[i]) w[i] *= 1 - double(o.learning_rate) * o.weight_decay;
      m[i] = o.beta1 * m[i] + (1 - double(o.beta1)) * g[i];
      v[i] = o.beta2 * v[i] + (1 - double(o.beta2)) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(double(o.beta1), t)), vhat = v[i] / (1 - std::pow(double(o.beta2), t));
      w[i] -= o.learning_rate * mhat / (std::sqrt(vhat) + o.epsilon);
    }
  }
};
}  // namespace

TEST_CASE("adamw: stepping every shard equals AdamW over the whole model, weight decay where the spec says") {
  const seqpar::adamw_options options{.learning_rate = 0.05f, .weight_decay = 0.1f};
  for (int P : {1, 2, 3, 5, 8}) {
    CAPTURE(P);
    const seqpar::parameter_partition part(uneven_units(), P);
    // The reference: every unit's elements back to back, with the gradient of step t a fixed
    // function of (t, element) that every rank computes alike.
    std::vector<double> w;
    std::vector<bool> decay;
    for (int u = 0; u < part.units(); ++u) {
      for (float x : full_unit(part, u)) w.push_back(x);
      for (int p = 0; p < part.parameters(u); ++p)
        decay.insert(decay.end(), part.parameter(u, p).elements, part.parameter(u, p).decay);
    }
    auto gradient = [](int t, std::int64_t flat) { return std::sin(0.7 * double(flat) + 1.3 * t) * (1 + flat % 3); };
    plain_adamw ref{options, {}, {}};
    for (int t = 1; t <= 4; ++t) {
      std::vector<double> g(w.size());
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = gradient(t, static_cast<std::int64_t>(i));
      ref.step(w, g, decay);
    }
    std::mutex m;
    double worst = 0;
    seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& world) {
      seqpar::sharded_parameters params(world, part);
      for (int u = 0; u < part.units(); ++u) params.load(u, full_unit(part, u), nullptr);
      seqpar::adamw opt(params, options);
      CHECK(opt.state_bytes() == 2 * static_cast<std::size_t>(part.shard_elements()) * sizeof(float));
      for (int t = 1; t <= 4; ++t) {
        std::int64_t flat = 0;
        for (int u = 0; u < part.units(); ++u) {
          const auto [first, count] = part.owned(u, world.rank());
          const auto piece = params.gradients(u);
          for (std::int64_t i = 0; i < count; ++i) piece[i] = static_cast<float>(gradient(t, flat + first + i));
          flat += part.unit_elements(u);
        }
        opt.step(nullptr);
      }
      double err = 0;
      std::int64_t flat = 0;
      for (int u = 0; u < part.units(); ++u) {
        const auto unit = params.gather<float>(u, nullptr);
        for (std::int64_t i = 0; i < part.unit_elements(u); ++i)
          err = std::max(err, std::fabs(unit.elements()[i] - w[flat + i]) / std::max(1e-3, std::fabs(w[flat + i])));
        flat += part.unit_elements(u);
        // Padding stays zero through the steps.
        const auto [first, count] = part.owned(u, world.rank());
        for (std::int64_t i = count; i < part.shard_elements(u); ++i) CHECK(params.master(u)[i] == 0.0f);
      }
      CHECK(opt.steps() == 4);
      std::lock_guard lock(m);
      worst = std::max(worst, err);
    });
    CHECK(worst < 1e-5);
  }
}

namespace {
// The gradient rule through real sequence-parallel attention. Each token t of sequence b has an
// input x[b, t] of C features; q = x Wq, k = x Wk, v = x Wv (per token, all heads), o = causal
// softmax attention, loss = sum(o * y) / (B S) with a fixed y. Parameters: one unit {Wq, Wk, Wv}.
constexpr int C = 6, H = 4, H_kv = 2, D = 4, B = 4;
constexpr std::int64_t S = 24;
constexpr int q_width = H * D, kv_width = H_kv * D;

struct problem {
  std::vector<float> x, y, wq, wk, wv;  // x [B, S, C], y [B, S, H, D], W [C, width]
};

problem make_problem() {
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> u(-1, 1);
  auto fill = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& e : v) e = u(gen);
    return v;
  };
  return {fill(B * S * C), fill(B * S * q_width), fill(C * q_width), fill(C * kv_width), fill(C * kv_width)};
}

// out[n, width] = x[n, C] W[C, width]; dW[C, width] += x^T d.
void project(const float* x, const float* w, float* out, std::int64_t n, int width) {
  for (std::int64_t t = 0; t < n; ++t)
    for (int j = 0; j < width; ++j) {
      float s = 0;
      for (int c = 0; c < C; ++c) s += x[t * C + c] * w[c * width + j];
      out[t * width + j] = s;
    }
}
void project_backward(const float* x, const float* d, float* dw, std::int64_t n, int width) {
  for (std::int64_t t = 0; t < n; ++t)
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < width; ++j) dw[c * width + j] += x[t * C + c] * d[t * width + j];
}

// The loss gradient of `n` tokens (rows of x and y) through `attention`, which maps (q, k, v) of
// those tokens to (o) and (dout) to (dq, dk, dv); the gradients are added to dwq, dwk, dwv.
template <class Forward, class Backward>
void loss_gradient(const float* x, const float* y, std::int64_t n, const float* wq, const float* wk, const float* wv,
                   float scale, Forward&& forward, Backward&& backward, float* dwq, float* dwk, float* dwv) {
  std::vector<float> q(n * q_width), k(n * kv_width), v(n * kv_width), o(n * q_width);
  project(x, wq, q.data(), n, q_width), project(x, wk, k.data(), n, kv_width), project(x, wv, v.data(), n, kv_width);
  forward(q.data(), k.data(), v.data(), o.data());
  std::vector<float> dout(n * q_width), dq(q.size()), dk(k.size()), dv(v.size());
  for (std::size_t i = 0; i < dout.size(); ++i) dout[i] = y[i] * scale;
  backward(dout.data(), dq.data(), dk.data(), dv.data());
  project_backward(x, dq.data(), dwq, n, q_width), project_backward(x, dk.data(), dwk, n, kv_width);
  project_backward(x, dv.data(), dwv, n, kv_width);
}
}  // namespace

TEST_CASE("gradient rule: the mesh's reduce-scattered gradient equals one rank's gradient of the global batch") {
  const auto pb = make_problem();
  const seqpar::attention_options opt{.causal = true};
  const float scale = 1.0f / (B * S);
  // One rank: every sequence whole, attention by the reference policy, in one process.
  std::vector<float> want(C * (q_width + 2 * kv_width));
  float* dwq = want.data();
  float* dwk = dwq + C * q_width;
  float* dwv = dwk + C * kv_width;
  const seqpar::reference_attention ref;
  for (int b = 0; b < B; ++b) {
    std::vector<float> lse(H * S), o;
    const float *xb = pb.x.data() + b * S * C, *yb = pb.y.data() + b * S * q_width;
    const float *q_saved = nullptr, *k_saved = nullptr, *v_saved = nullptr, *o_saved = nullptr;
    auto view = [](const float* p, int h) { return seqpar::make_bshd<const float>(p, 1, S, h, D); };
    auto mview = [](float* p, int h) { return seqpar::make_bshd(p, 1, S, h, D); };
    const seqpar::gqa_map all{0, H / H_kv, 0};
    loss_gradient(
        xb, yb, S, pb.wq.data(), pb.wk.data(), pb.wv.data(), scale,
        [&](const float* q, const float* k, const float* v, float* out) {
          q_saved = q, k_saved = k, v_saved = v, o_saved = out;
          ref.forward(seqpar::policy_forward_args<float>{.q = view(q, H),
                                                         .k = view(k, H_kv),
                                                         .v = view(v, H_kv),
                                                         .o = mview(out, H),
                                                         .lse = seqpar::lse_view(lse.data(), 1, H, S),
                                                         .map = all,
                                                         .options = opt.resolved(D)},
                      nullptr);
        },
        [&](const float* dout, float* dq, float* dk, float* dv) {
          ref.backward(seqpar::policy_backward_args<float>{.q = view(q_saved, H),
                                                           .k = view(k_saved, H_kv),
                                                           .v = view(v_saved, H_kv),
                                                           .o = view(o_saved, H),
                                                           .lse = seqpar::const_lse_view(lse.data(), 1, H, S),
                                                           .dout = view(dout, H),
                                                           .dq = mview(dq, H),
                                                           .dk = mview(dk, H_kv),
                                                           .dv = mview(dv, H_kv),
                                                           .map = all,
                                                           .options = opt.resolved(D)},
                       nullptr);
        },
        dwq, dwk, dwv);
  }
  for (const seqpar::mesh_shape shape : std::vector<seqpar::mesh_shape>{
           {.dp = 1, .sp = 1}, {.dp = 1, .sp = 2}, {.dp = 2, .sp = 1}, {.dp = 2, .sp = 2}, {.dp = 1, .sp = 4},
           {.dp = 4, .sp = 1}, {.dp = 2, .sp = 4}, {.dp = 4, .sp = 2}}) {
    const int P = shape.dp * shape.sp;
    CAPTURE(shape.dp);
    CAPTURE(shape.sp);
    std::mutex m;
    double worst = 0;
    int pieces = 0;
    seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& world) {
      seqpar::mesh mesh(world, shape);
      const seqpar::parameter_partition part({{{C * q_width}, {C * kv_width}, {C * kv_width}}}, P);
      seqpar::sharded_parameters params(mesh.zero_group(), part);
      std::vector<float> full(pb.wq);
      full.insert(full.end(), pb.wk.begin(), pb.wk.end()), full.insert(full.end(), pb.wv.begin(), pb.wv.end());
      params.load(0, full, nullptr);
      // This rank: sequences [d * B / dp, (d + 1) * B / dp) of the global batch, its shard of each.
      const int b_local = B / shape.dp, d = mesh.dp_rank(), s = mesh.sp_rank();
      const auto seq = seqpar::make_seq_partition(S, shape.sp);
      const std::int64_t n = seq.size(s), at = seq.offset(s);
      std::vector<float> x, y;
      for (int b = d * b_local; b < (d + 1) * b_local; ++b) {
        x.insert(x.end(), pb.x.begin() + (b * S + at) * C, pb.x.begin() + (b * S + at + n) * C);
        y.insert(y.end(), pb.y.begin() + (b * S + at) * q_width, pb.y.begin() + (b * S + at + n) * q_width);
      }
      seqpar::ulysses_attention layer(seqpar::reference_attention{}, mesh.sp_group(), seq,
                                      {.batch = b_local, .heads = H, .kv_heads = H_kv, .head_dim = D},
                                      seqpar::elements<float>, opt);
      auto view = [&](const float* p, int h) { return seqpar::make_bshd<const float>(p, b_local, n, h, D); };
      auto mview = [&](float* p, int h) { return seqpar::make_bshd(p, b_local, n, h, D); };
      decltype(layer)::context saved;
      {
        const auto w = params.gather<float>(0, nullptr);
        auto grads = params.gradient_buffer<float>(0, nullptr);
        loss_gradient(
            x.data(), y.data(), b_local * n, w.parameter(0).data(), w.parameter(1).data(), w.parameter(2).data(),
            scale,
            [&](const float* q, const float* k, const float* v, float* o) {
              saved = layer.forward({.q = view(q, H), .k = view(k, H_kv), .v = view(v, H_kv), .o = mview(o, H)},
                                    {.stream = nullptr});
            },
            [&](const float* dout, float* dq, float* dk, float* dv) {
              layer.backward(saved,
                             {.dout = view(dout, H), .dq = mview(dq, H), .dk = mview(dk, H_kv), .dv = mview(dv, H_kv)},
                             {.stream = nullptr});
            },
            grads.parameter(0).data(), grads.parameter(1).data(), grads.parameter(2).data());
        params.reduce_scatter(std::move(grads), nullptr);
      }
      const auto [first, count] = part.owned(0, world.rank());
      double err = 0;
      for (std::int64_t i = 0; i < count; ++i)
        err = std::max(err, std::fabs(params.gradients(0)[i] - want[first + i]) /
                                std::max(1e-3, double(std::fabs(want[first + i]))));
      std::lock_guard lock(m);
      worst = std::max(worst, err), pieces += count > 0;
    });
    CHECK(pieces == P);
    CHECK(worst < 1e-4);
  }
}

TEST_CASE("all or nothing: sharded_parameters' collective calls, one bad rank at a time") {
  const seqpar::parameter_partition part(uneven_units(), 4);
  // Each body fills its gradient piece with the sentinel (kept in a sentinel output) and checks it
  // survived: a failed call moved nothing and accumulated nothing.
  auto call = [&](auto&& bad_call, auto&& good_call) {
    return [&, bad_call, good_call](seqpar::in_process_communicator& world, bool is_bad, seqpar_test::sentinels& out) {
      seqpar::sharded_parameters params(world, part);
      auto& kept = out.make(params.gradients().size());
      const auto values = kept.values();
      std::copy(values.begin(), values.end(), params.gradients().begin());
      struct keep_on_exit {
        std::span<float> from;
        float* to;
        ~keep_on_exit() { std::copy(from.begin(), from.end(), to); }
      } keep{params.gradients(), kept.data()};
      is_bad ? bad_call(params) : good_call(params);
    };
  };
  auto good_reduce = [](auto& params) {
    params.reduce_scatter(params.template gradient_buffer<float>(1, nullptr), nullptr);
  };
  seqpar_test::expect_all_or_nothing(4, "unit: expected 0 <= unit < 4, got 4",
                                     call([](auto& params) { (void)params.template gather<float>(4, nullptr); },
                                          [](auto& params) { (void)params.template gather<float>(1, nullptr); }));
  seqpar_test::expect_all_or_nothing(4, "unit: this rank's unit 2 in float32 differ",
                                     call([](auto& params) { (void)params.template gather<float>(2, nullptr); },
                                          [](auto& params) { (void)params.template gather<float>(1, nullptr); }));
  seqpar_test::expect_all_or_nothing(4, "unit: this rank's unit 1 in bfloat16 differ",
                                     call([](auto& params) { (void)params.template gather<__nv_bfloat16>(1, nullptr); },
                                          [](auto& params) { (void)params.template gather<float>(1, nullptr); }));
  seqpar_test::expect_all_or_nothing(
      4, "grads: expected a gradient_buffer of these sharded parameters, got an empty one",
      call([](auto& params) { params.reduce_scatter(seqpar::gathered_unit<float>{}, nullptr); }, good_reduce));
  seqpar_test::expect_all_or_nothing(
      4, "grads: this rank's unit 3 in float32 differ",
      call([](auto& params) { params.reduce_scatter(params.template gradient_buffer<float>(3, nullptr), nullptr); },
           good_reduce));
  seqpar_test::expect_all_or_nothing(4, "full: expected unit 1's 5 elements, got 4",
                                     call([](auto& params) { params.load(1, std::vector<float>(4, 1.0f), nullptr); },
                                          [](auto& params) { params.load(1, std::vector<float>(5, 1.0f), nullptr); }));
}

TEST_CASE("all or nothing: a partition over another rank count, or another partition, on one rank") {
  seqpar_test::expect_all_or_nothing(
      3, "partition: split over 4 ranks; expected the group's 3",
      [](seqpar::in_process_communicator& world, bool bad, seqpar_test::sentinels&) {
        seqpar::sharded_parameters params(world, seqpar::parameter_partition(uneven_units(), bad ? 4 : 3));
      });
  std::string mismatch;
  seqpar::run_in_process(3, seqpar::memory_space::host, [&](seqpar::in_process_communicator& world) {
    auto units = uneven_units();
    if (world.rank() == 1) units[2][0].elements = 12;
    try {
      seqpar::sharded_parameters params(world, seqpar::parameter_partition(units, 3));
    } catch (const seqpar::error& e) {
      if (world.rank() == 1) mismatch = e.what();
    }
  });
  INFO(mismatch);
  CHECK(mismatch.find("sharded_parameters: this rank's 4 units, 134 elements differs from rank 0's") !=
        std::string::npos);
}
