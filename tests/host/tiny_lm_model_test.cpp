// The tiny language model of examples/train_tiny_lm: every parameter's analytic gradient against
// central finite differences (softmax and linear attention), float against double, the rotary
// embedding's use of the global positions, and the parameter units and their initialisation.
#include <train_tiny_lm/model.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace {

using tiny_lm::config;

template <class Real>
using units = std::vector<std::vector<Real>>;

// What both reference callbacks keep of each layer's forward (q, k and v) and how they hand back
// the gradients they sum in double.
template <class Real>
class saved_qkv {
 protected:
  struct qkv {
    std::vector<Real> q, k, v;
  };
  saved_qkv(const config& c, int batch, int seq) : c_(c), batch_(batch), seq_(seq), saved_(c.layers) {}
  void keep(int layer, const Real* q, const Real* k, const Real* v) {
    const std::int64_t rows = std::int64_t(batch_) * seq_;
    saved_[layer].q.assign(q, q + rows * c_.q_width());
    saved_[layer].k.assign(k, k + rows * c_.kv_width());
    saved_[layer].v.assign(v, v + rows * c_.kv_width());
  }
  static void hand_back(const std::vector<double>& gq, const std::vector<double>& gk, const std::vector<double>& gv,
                        Real* dq, Real* dk, Real* dv) {
    std::copy(gq.begin(), gq.end(), dq);
    std::copy(gk.begin(), gk.end(), dk);
    std::copy(gv.begin(), gv.end(), dv);
  }

  config c_;
  int batch_, seq_;
  std::vector<qkv> saved_;
};

// Causal softmax attention within each local sequence (tokens in local order), GQA, scale
// 1 / sqrt(head_dim), accumulated in double; keeps each layer's q, k and v for its backward.
template <class Real>
class softmax_attention final : public tiny_lm::attention_ops<Real>, saved_qkv<Real> {
  using saved_qkv<Real>::c_, saved_qkv<Real>::batch_, saved_qkv<Real>::seq_, saved_qkv<Real>::saved_;

 public:
  softmax_attention(const config& c, int batch, int seq) : saved_qkv<Real>(c, batch, seq) {}

  void forward(int layer, const Real* q, const Real* k, const Real* v, Real* o) override {
    this->keep(layer, q, k, v);
    const int D = c_.head_dim;
    std::vector<double> p(seq_);
    for_each_row([&](std::int64_t qi, std::int64_t kv0, int i) {
      probabilities(q + qi, k + kv0, i, p);
      for (int d = 0; d < D; ++d) {
        double sum = 0;
        for (int j = 0; j <= i; ++j) sum += p[j] * v[kv0 + kv_row(j) + d];
        o[qi + d] = static_cast<Real>(sum);
      }
    });
  }

  void backward(int layer, const Real* dout, Real* dq, Real* dk, Real* dv) override {
    const auto& s = saved_[layer];
    const int D = c_.head_dim;
    const double scale = 1.0 / std::sqrt(double(D));
    std::vector<double> gq(s.q.size(), 0.0), gk(s.k.size(), 0.0), gv(s.v.size(), 0.0), p(seq_), dp(seq_);
    for_each_row([&](std::int64_t qi, std::int64_t kv0, int i) {
      probabilities(s.q.data() + qi, s.k.data() + kv0, i, p);
      double mean = 0;
      for (int j = 0; j <= i; ++j) {
        dp[j] = 0;
        for (int d = 0; d < D; ++d) dp[j] += double(dout[qi + d]) * s.v[kv0 + kv_row(j) + d];
        mean += p[j] * dp[j];
      }
      for (int j = 0; j <= i; ++j) {
        const double ds = p[j] * (dp[j] - mean) * scale;
        const std::int64_t kj = kv0 + kv_row(j);
        for (int d = 0; d < D; ++d) {
          gq[qi + d] += ds * s.k[kj + d];
          gk[kj + d] += ds * s.q[qi + d];
          gv[kj + d] += p[j] * dout[qi + d];
        }
      }
    });
    this->hand_back(gq, gk, gv, dq, dk, dv);
  }

 private:
  // Offset of local token j's kv head within a sequence's first token.
  std::int64_t kv_row(int j) const { return std::int64_t(j) * c_.kv_width(); }
  // f(offset of the query row, offset of the sequence's first token in its kv head, token i).
  template <class F>
  void for_each_row(F f) const {
    const int group = c_.heads / c_.kv_heads;
    for (int b = 0; b < batch_; ++b)
      for (int h = 0; h < c_.heads; ++h)
        for (int i = 0; i < seq_; ++i)
          f((std::int64_t(b) * seq_ + i) * c_.q_width() + h * c_.head_dim,
            std::int64_t(b) * seq_ * c_.kv_width() + (h / group) * c_.head_dim, i);
  }
  // The softmax over keys 0..i of one query row.
  void probabilities(const Real* q, const Real* k, int i, std::vector<double>& p) const {
    const double scale = 1.0 / std::sqrt(double(c_.head_dim));
    double top = -INFINITY, sum = 0;
    for (int j = 0; j <= i; ++j) {
      p[j] = 0;
      for (int d = 0; d < c_.head_dim; ++d) p[j] += double(q[d]) * k[kv_row(j) + d];
      top = std::max(top, p[j] *= scale);
    }
    for (int j = 0; j <= i; ++j) sum += p[j] = std::exp(p[j] - top);
    for (int j = 0; j <= i; ++j) p[j] /= sum;
  }
};

// Causal linear attention with a decay per query head: o_t = sum_{s<=t} lambda^(t-s) (q_t . k_s) v_s.
template <class Real>
class linear_attention final : public tiny_lm::attention_ops<Real>, saved_qkv<Real> {
  using saved_qkv<Real>::c_, saved_qkv<Real>::batch_, saved_qkv<Real>::seq_, saved_qkv<Real>::saved_;

 public:
  linear_attention(const config& c, int batch, int seq, std::vector<double> decay)
      : saved_qkv<Real>(c, batch, seq), decay_(std::move(decay)) {}

  void forward(int layer, const Real* q, const Real* k, const Real* v, Real* o) override {
    this->keep(layer, q, k, v);
    const std::int64_t rows = std::int64_t(batch_) * seq_;
    std::vector<double> out(rows * c_.q_width(), 0.0);
    for_each_pair([&](std::int64_t qt, std::int64_t ks, double w) {
      const double a = w * dot(q + qt, k + ks);
      for (int d = 0; d < c_.head_dim; ++d) out[qt + d] += a * v[ks + d];
    });
    std::copy(out.begin(), out.end(), o);
  }

  void backward(int layer, const Real* dout, Real* dq, Real* dk, Real* dv) override {
    const auto& s = saved_[layer];
    std::vector<double> gq(s.q.size(), 0.0), gk(s.k.size(), 0.0), gv(s.v.size(), 0.0);
    for_each_pair([&](std::int64_t qt, std::int64_t ks, double w) {
      const double a = w * dot(dout + qt, s.v.data() + ks), score = w * dot(s.q.data() + qt, s.k.data() + ks);
      for (int d = 0; d < c_.head_dim; ++d) {
        gq[qt + d] += a * s.k[ks + d];
        gk[ks + d] += a * s.q[qt + d];
        gv[ks + d] += score * dout[qt + d];
      }
    });
    this->hand_back(gq, gk, gv, dq, dk, dv);
  }

 private:
  double dot(const Real* a, const Real* b) const {
    double sum = 0;
    for (int d = 0; d < c_.head_dim; ++d) sum += double(a[d]) * b[d];
    return sum;
  }
  // f(offset of query row t, offset of key row s, lambda^(t-s)) for every s <= t of every head.
  template <class F>
  void for_each_pair(F f) const {
    const int group = c_.heads / c_.kv_heads;
    for (int b = 0; b < batch_; ++b)
      for (int h = 0; h < c_.heads; ++h)
        for (int t = 0; t < seq_; ++t)
          for (int s = 0; s <= t; ++s)
            f((std::int64_t(b) * seq_ + t) * c_.q_width() + h * c_.head_dim,
              (std::int64_t(b) * seq_ + s) * c_.kv_width() + (h / group) * c_.head_dim, std::pow(decay_[h], t - s));
  }

  std::vector<double> decay_;
};

// One rank's batch: sequences of S_r tokens at global positions, and the next tokens to predict.
struct batch_case {
  int batch = 0;
  std::vector<std::int64_t> positions;
  std::vector<std::int32_t> tokens, targets;
  double loss_scale = 1;
};

// Uniform numbers in [0, 1) from the top 53 bits of std::mt19937_64, the same on every platform.
struct uniform {
  std::mt19937_64 engine;
  double operator()() { return double(engine() >> 11) * 0x1p-53; }
};

batch_case random_case(const config& c, int batch, std::vector<std::int64_t> positions, std::uint64_t seed) {
  uniform u{std::mt19937_64(seed)};
  batch_case out;
  out.batch = batch;
  out.positions = std::move(positions);
  const std::size_t n = std::size_t(batch) * out.positions.size();
  for (std::size_t i = 0; i < n; ++i) {
    out.tokens.push_back(std::int32_t(u() * c.vocab));
    out.targets.push_back(std::int32_t(u() * c.vocab));
  }
  out.loss_scale = 1.0 / double(n);
  return out;
}

// Parameters far from the usual init so every path matters: matrices uniform in [-scale, scale],
// norm gains in [0.7, 1.3].
units<double> random_parameters(const config& c, double scale, std::uint64_t seed) {
  uniform u{std::mt19937_64(seed)};
  units<double> out;
  for (const auto& unit : tiny_lm::parameter_units(c)) {
    out.emplace_back();
    for (const auto& p : unit)
      for (std::int64_t i = 0; i < p.elements; ++i)
        out.back().push_back(p.decay ? scale * (2 * u() - 1) : 1.3 - 0.6 * u());
  }
  return out;
}

template <class Real>
units<Real> zeros_like(const units<Real>& params) {
  units<Real> out;
  for (const auto& unit : params) out.emplace_back(unit.size(), Real(0));
  return out;
}

// The loss of the whole model; with `grads`, also the backward, adding into them.
template <class Real>
double run(const config& c, const units<Real>& params, const batch_case& bc, tiny_lm::attention_ops<Real>& attention,
           units<Real>* grads = nullptr) {
  const tiny_lm::model<Real> m(c);
  std::vector<tiny_lm::block_activations<Real>> saved(c.layers);
  tiny_lm::head_activations<Real> head_saved;
  auto x = m.embed_forward(tiny_lm::embedding_view(c, params[0].data()), bc.tokens);
  for (int l = 0; l < c.layers; ++l) {
    const auto p = tiny_lm::block_view(c, params[c.block_unit(l)].data());
    x = m.block_forward(l, p, bc.positions, x, attention, saved[l]);
  }
  const auto& head = params[c.head_unit()];
  const double loss = m.head_forward(tiny_lm::head_view(c, head.data()), x, bc.targets, bc.loss_scale, head_saved);
  if (grads) {
    auto dx = m.head_backward(tiny_lm::head_view(c, head.data()), head_saved,
                              tiny_lm::head_view(c, (*grads)[c.head_unit()].data()));
    for (int l = c.layers - 1; l >= 0; --l) {
      const int u = c.block_unit(l);
      dx = m.block_backward(l, tiny_lm::block_view(c, params[u].data()), bc.positions, saved[l], dx, attention,
                            tiny_lm::block_view(c, (*grads)[u].data()));
    }
    m.embed_backward(bc.tokens, dx, tiny_lm::embedding_view(c, (*grads)[0].data()));
  }
  return loss;
}

config tiny_config() {
  config c;
  c.vocab = 11, c.dim = 8, c.layers = 2, c.heads = 2, c.kv_heads = 1, c.head_dim = 4, c.hidden = 12;
  return c;
}

// Every parameter's analytic gradient against (L(w + h) - L(w - h)) / 2h, h = 1e-6: within 1e-6
// relative, plus 2e-9 absolute for the finite difference's own rounding (a few ulps of L ~ 2,
// divided by 2h: up to about 5e-10), against gradients up to ~0.5.
void check_gradients(const config& c, const batch_case& bc, tiny_lm::attention_ops<double>& attention) {
  auto params = random_parameters(c, 0.5, 7);
  auto grads = zeros_like(params);
  const double loss = run(c, params, bc, attention, &grads);
  CHECK(std::isfinite(loss));
  const double h = 1e-6;
  int checked = 0, wrong = 0;
  double worst = 0, largest = 0;
  for (std::size_t u = 0; u < params.size(); ++u)
    for (std::size_t i = 0; i < params[u].size(); ++i) {
      const double w = params[u][i];
      params[u][i] = w + h;
      const double up = run(c, params, bc, attention);
      params[u][i] = w - h;
      const double down = run(c, params, bc, attention);
      params[u][i] = w;
      const double numeric = (up - down) / (2 * h), analytic = grads[u][i];
      const double scale = std::max(std::abs(numeric), std::abs(analytic));
      const double error = std::abs(numeric - analytic) / (1e-6 * scale + 2e-9);
      worst = std::max(worst, error);
      largest = std::max(largest, std::abs(analytic));
      ++checked;
      if (error > 1) {
        if (++wrong <= 5) {
          INFO("unit " << u << " element " << i << ": analytic " << analytic << ", numeric " << numeric);
          CHECK(error <= 1);
        }
      }
    }
  INFO(checked << " elements, worst error / tolerance " << worst << ", largest gradient " << largest);
  CHECK(wrong == 0);
  CHECK(checked == tiny_lm::unit_elements(c, 0) + c.layers * tiny_lm::unit_elements(c, 1) +
                       tiny_lm::unit_elements(c, c.head_unit()));
  CHECK(largest > 1e-2);  // the gradients are not vanishingly small
}

}  // namespace

TEST_CASE("tiny_lm: every parameter's gradient equals central finite differences (softmax attention, GQA, RoPE)") {
  const config c = tiny_config();
  const auto bc = random_case(c, 2, {0, 3, 4, 9, 10}, 11);
  softmax_attention<double> attention(c, bc.batch, int(bc.positions.size()));
  check_gradients(c, bc, attention);
}

TEST_CASE("tiny_lm: every parameter's gradient equals central finite differences (linear attention with decay)") {
  const config c = tiny_config();
  const auto bc = random_case(c, 2, {0, 3, 4, 9, 10}, 12);
  linear_attention<double> attention(c, bc.batch, int(bc.positions.size()), {0.9, 0.6});
  check_gradients(c, bc, attention);
}

TEST_CASE("tiny_lm: float and double forwards agree on the loss and the gradients") {
  const config c{};  // the default shape, its own init
  const std::vector<std::int64_t> positions = {0, 1, 2, 3, 4, 5, 6, 7, 24, 25, 26, 27, 28, 29, 30, 31};
  const auto bc = random_case(c, 2, positions, 3);
  units<float> f;
  units<double> d;
  for (int u = 0; u < c.units(); ++u) {
    f.emplace_back();
    tiny_lm::init_unit(c, u, 42, f.back());
    d.emplace_back(f.back().begin(), f.back().end());
  }
  softmax_attention<float> fa(c, bc.batch, int(positions.size()));
  softmax_attention<double> da(c, bc.batch, int(positions.size()));
  auto fg = zeros_like(f);
  auto dg = zeros_like(d);
  const double fl = run(c, f, bc, fa, &fg), dl = run(c, d, bc, da, &dg);
  CHECK(dl > 5.0);  // about log(256) = 5.55 at init
  CHECK(dl < 6.0);
  CHECK(std::abs(fl - dl) <= 1e-5 * dl);
  double worst = 0, scale = 0;
  for (std::size_t u = 0; u < d.size(); ++u)
    for (std::size_t i = 0; i < d[u].size(); ++i) {
      worst = std::max(worst, std::abs(fg[u][i] - dg[u][i]));
      scale = std::max(scale, std::abs(dg[u][i]));
    }
  CHECK(worst <= 1e-4 * scale);
}

TEST_CASE("tiny_lm: RoPE reads the global positions: a shift leaves softmax attention's loss, a permutation does not") {
  const config c = tiny_config();
  const auto params = random_parameters(c, 0.5, 5);
  const auto base = random_case(c, 2, {0, 3, 4, 9, 10}, 9);
  softmax_attention<double> attention(c, base.batch, int(base.positions.size()));
  const double loss = run(c, params, base, attention);

  auto shifted = base;
  for (auto& p : shifted.positions) p += 1000;
  CHECK(std::abs(run(c, params, shifted, attention) - loss) <= 1e-10 * loss);

  auto permuted = base;
  permuted.positions = {0, 4, 3, 10, 9};
  CHECK(std::abs(run(c, params, permuted, attention) - loss) > 1e-4 * loss);
  auto contiguous = base;
  contiguous.positions = {0, 1, 2, 3, 4};
  CHECK(std::abs(run(c, params, contiguous, attention) - loss) > 1e-4 * loss);
}

TEST_CASE("tiny_lm: parameter units, their views and the initialisation") {
  const config c{};
  const auto specs = tiny_lm::parameter_units(c);
  REQUIRE(specs.size() == 4u);
  CHECK(specs[0].size() == 1u);
  CHECK(specs[0][0].elements == 256 * 64);
  REQUIRE(specs[1].size() == 8u);
  const std::int64_t block[] = {64, 64 * 64, 64 * 32, 64 * 32, 64 * 64, 64, 64 * 192, 192 * 64};
  for (int p = 0; p < 8; ++p) {
    CHECK(specs[1][p].elements == block[p]);
    CHECK(specs[1][p].decay == (p != 0 && p != 5));
  }
  CHECK(specs[2].size() == 8u);
  REQUIRE(specs[3].size() == 2u);
  CHECK((specs[3][0].elements == 64 && !specs[3][0].decay && specs[3][1].elements == 64 * 256 && specs[3][1].decay));

  // The views lie back to back, in the order of the specs.
  std::vector<float> unit(tiny_lm::unit_elements(c, 1));
  const auto b = tiny_lm::block_view(c, unit.data());
  const float* starts[] = {b.attn_norm, b.wq, b.wk, b.wv, b.wo, b.mlp_norm, b.w1, b.w2};
  std::int64_t at = 0;
  for (int p = 0; p < 8; ++p) {
    CHECK(starts[p] == unit.data() + at);
    at += block[p];
  }
  CHECK(at == std::int64_t(unit.size()));
  std::vector<double> head(tiny_lm::unit_elements(c, c.head_unit()));
  const auto hv = tiny_lm::head_view(c, static_cast<const double*>(head.data()));
  CHECK((hv.final_norm == head.data() && hv.lm_head == head.data() + 64));

  // Deterministic per (seed, unit); gains 1; matrices about normal(0, 0.02), wo and w2 scaled.
  std::vector<float> a, again, other;
  tiny_lm::init_unit(c, 1, 42, a);
  tiny_lm::init_unit(c, 1, 42, again);
  tiny_lm::init_unit(c, 2, 42, other);
  CHECK(a == again);
  CHECK(a != other);
  const auto v = tiny_lm::block_view(c, a.data());
  CHECK(std::all_of(v.attn_norm, v.attn_norm + 64, [](float g) { return g == 1.0f; }));
  CHECK(std::all_of(v.mlp_norm, v.mlp_norm + 64, [](float g) { return g == 1.0f; }));
  auto rms = [](const float* p, std::int64_t n) {
    double s = 0, mean = 0;
    for (std::int64_t i = 0; i < n; ++i) s += double(p[i]) * p[i], mean += p[i];
    return std::pair{std::sqrt(s / n), mean / n};
  };
  const auto [w1_rms, w1_mean] = rms(v.w1, 64 * 192);
  const auto [w2_rms, w2_mean] = rms(v.w2, 192 * 64);
  CHECK(w1_rms == doctest::Approx(0.02).epsilon(0.03));
  CHECK(std::abs(w1_mean) < 1e-3);
  CHECK(w2_rms == doctest::Approx(0.02 / 2).epsilon(0.03));  // 1 / sqrt(2 * layers) = 1 / 2
  CHECK(std::abs(w2_mean) < 1e-3);

  // The same numbers on every platform: mt19937_64, splitmix64 and Box-Muller are all specified.
  std::vector<float> embedding;
  tiny_lm::init_unit(c, 0, 42, embedding);
  CHECK(embedding[0] == doctest::Approx(0.038948331).epsilon(1e-6));
  CHECK(embedding[1] == doctest::Approx(-0.00760225113).epsilon(1e-6));
  CHECK(a.back() == doctest::Approx(0.0047770692).epsilon(1e-6));

  config bad = c;
  bad.kv_heads = 3;
  CHECK_THROWS_AS(tiny_lm::model<float>{bad}, seqpar::error);
}
