// One rank's training loop over a DP x SP mesh with ZeRO-3-style parameters: each unit is gathered
// before its forward and again before its backward and freed after; its gradients are
// reduce-scattered into this rank's shard; AdamW steps on the shard.
#pragma once

#include <train_tiny_lm/attention.hpp>
#include <train_tiny_lm/model.hpp>
#include <train_tiny_lm/parameters.hpp>
#include <train_tiny_lm/text.hpp>

#include <seqpar/seqpar.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace tiny_lm {

//! What a run trains and how.
struct run_options {
  config model;                     //!< the model's shape
  attention_kind attention = attention_kind::ulysses;  //!< the token mixing
  int dp = 1;                       //!< data-parallel replicas
  int sp = 1;                       //!< ranks per sequence-parallel group
  std::int64_t batch = 8;           //!< sequences in the global batch (a multiple of dp)
  std::int64_t seq = 128;           //!< tokens per sequence
  int steps = 300;                  //!< optimizer steps
  float learning_rate = 3e-3f;      //!< peak learning rate, after a linear warm-up
  int warmup = 10;                  //!< warm-up steps
  std::uint64_t seed = 1;           //!< parameters and batches
  double clip = 1.0;                //!< the largest gradient norm AdamW sees (larger ones are scaled down)
};

//! What one step reports (every rank computes the same values).
struct step_record {
  int step = 0;                      //!< 1-based
  double loss = 0;                   //!< mean cross-entropy over the global batch, in nats
  double gradient_norm = 0;          //!< the norm of the whole model's gradient, before clipping
  double seconds = 0;                //!< wall time of the step
  seqpar::sharded_memory held;       //!< this rank's parameter and gradient shards, gathered peak
  std::size_t optimizer_bytes = 0;   //!< this rank's AdamW moments
  std::vector<float> gradient;       //!< step 1 only: the whole model's gradient, unit after unit
};

//! The whole model's gradient from every rank's shard (collective): unit after unit, unpadded.
template <class Comm>
std::vector<float> gathered_gradient(seqpar::sharded_parameters<Comm>& params) {
  const auto& part = params.partition();
  std::vector<float> all;
  for (int u = 0; u < part.units(); ++u) {
    std::vector<float> unit(static_cast<std::size_t>(part.padded_elements(u)));
    params.group().all_gather(std::span<const float>(params.gradients(u)), std::span<float>(unit), nullptr);
    all.insert(all.end(), unit.begin(), unit.begin() + part.unit_elements(u));
  }
  return all;
}

//! The learning rate of step t (1-based): a linear warm-up to the peak, then a cosine decay to a
//! tenth of it at the last step.
inline float learning_rate_at(const run_options& o, int t) {
  if (t <= o.warmup) return o.learning_rate * static_cast<float>(t) / static_cast<float>(o.warmup);
  const double done = static_cast<double>(t - o.warmup) / std::max(1, o.steps - o.warmup);
  return static_cast<float>(o.learning_rate * (0.1 + 0.45 * (1 + std::cos(3.141592653589793 * done))));
}

//! Trains on `world` (dp * sp ranks) and calls report(record) after each step. Collective.
template <class Comm>
void train(Comm& world, const run_options& o, const std::vector<std::uint8_t>& text,
           const std::function<void(const step_record&)>& report) {
  const int ulysses = o.attention == attention_kind::ring2d && o.sp > 1 ? o.sp / 2 : o.sp;
  seqpar::mesh mesh(world, {.dp = o.dp, .sp = o.sp, .ulysses = ulysses});
  const config& c = o.model;
  const model<float> net(c);
  const seqpar::parameter_partition part(parameter_units(c), world.size());
  seqpar::sharded_parameters params(mesh.zero_group(), part);
  for (int u = 0; u < c.units(); ++u) {
    std::vector<float> full;
    init_unit(c, u, o.seed, full);
    params.load(u, full, nullptr);
  }
  seqpar::adamw optimizer(params, {.learning_rate = o.learning_rate, .beta2 = 0.95f, .weight_decay = 0.1f});
  SEQPAR_EXPECTS(o.batch % o.dp == 0, "batch: expected a multiple of dp = " << o.dp << ", got " << o.batch);
  const std::int64_t batch = o.batch / o.dp, first_sequence = mesh.dp_rank() * batch;
  // Each rank's loss is its tokens' summed loss over the global batch's token count: the sum over
  // the mesh is the global mean, and so is the sum of the ranks' gradients (sharded_parameters.hpp).
  const double loss_scale = 1.0 / static_cast<double>(o.batch * o.seq);

  with_attention(o.attention, mesh.sp_group(), mesh.sp_mesh(), c, batch, o.seq,
                 [&](attention_ops<float>& attention, std::span<const std::int64_t> positions) {
    const auto n = static_cast<std::int64_t>(positions.size());
    std::vector<std::int32_t> tokens(batch * n), targets(batch * n);
    std::vector<block_activations<float>> saved(c.layers);
    head_activations<float> head_saved;
    auto as_const = [](const seqpar::gathered_unit<float>& unit) {
      return static_cast<const float*>(unit.elements().data());
    };
    for (int t = 1; t <= o.steps; ++t) {
      const auto start = std::chrono::steady_clock::now();
      for (std::int64_t b = 0; b < batch; ++b) {
        const std::int64_t at = window_start(text, o.seq, t, first_sequence + b, o.seed);
        for (std::int64_t s = 0; s < n; ++s) {
          tokens[b * n + s] = text[at + positions[s]];
          targets[b * n + s] = text[at + positions[s] + 1];
        }
      }
      std::vector<float> x;
      {
        const auto w = params.template gather<float>(0, nullptr);
        x = net.embed_forward(embedding_view(c, as_const(w)), tokens);
      }
      for (int l = 0; l < c.layers; ++l) {
        const auto w = params.template gather<float>(c.block_unit(l), nullptr);
        x = net.block_forward(l, block_view(c, as_const(w)), positions, x, attention, saved[l]);
      }
      double loss = 0;
      {
        // The head's backward follows its forward at once, so it is gathered only once.
        const auto w = params.template gather<float>(c.head_unit(), nullptr);
        auto grads = params.template gradient_buffer<float>(c.head_unit(), nullptr);
        loss = net.head_forward(head_view(c, as_const(w)), x, targets, loss_scale, head_saved);
        x = net.head_backward(head_view(c, as_const(w)), head_saved, head_view(c, grads.elements().data()));
        params.reduce_scatter(std::move(grads), nullptr);
      }
      for (int l = c.layers - 1; l >= 0; --l) {
        const auto w = params.template gather<float>(c.block_unit(l), nullptr);
        auto grads = params.template gradient_buffer<float>(c.block_unit(l), nullptr);
        x = net.block_backward(l, block_view(c, as_const(w)), positions, saved[l], x, attention,
                               block_view(c, grads.elements().data()));
        params.reduce_scatter(std::move(grads), nullptr);
      }
      {
        auto grads = params.template gradient_buffer<float>(0, nullptr);
        net.embed_backward(tokens, x, embedding_view(c, grads.elements().data()));
        params.reduce_scatter(std::move(grads), nullptr);
      }
      std::vector<float> gradient;
      if (t == 1) gradient = gathered_gradient(params);
      const double norm = params.gradient_norm(nullptr);
      if (norm > o.clip) params.scale_gradients(static_cast<float>(o.clip / norm), nullptr);
      optimizer.options().learning_rate = learning_rate_at(o, t);
      optimizer.step(nullptr);
      params.zero_gradients(nullptr);
      double global = 0;
      world.all_reduce(std::span<const double>(&loss, 1), std::span<double>(&global, 1), nullptr);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      report({t, global, norm, seconds, params.memory(), optimizer.state_bytes(), std::move(gradient)});
    }
  });
}

}  // namespace tiny_lm
