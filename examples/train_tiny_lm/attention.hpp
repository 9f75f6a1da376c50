// The model's token mixing across the sequence-parallel group: one seqpar layer per kind, shared
// by every block, with each block's saved context kept from its forward to its backward.
#pragma once

#include <train_tiny_lm/model.hpp>

#include <seqpar/seqpar.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace tiny_lm {

//! Which attention the blocks use.
enum class attention_kind {
  ulysses,  //!< causal softmax attention with GQA, Ulysses over the sequence-parallel group
  lasp,     //!< causal linear attention with a decay per head, LASP over the group
  ring2d,   //!< causal softmax attention with GQA, Ulysses pairs times a zigzag ring
};

//! The kind named `name` ("ulysses", "lasp", "ring2d").
inline attention_kind attention_kind_of(const std::string& name) {
  if (name == "ulysses") return attention_kind::ulysses;
  if (name == "lasp") return attention_kind::lasp;
  if (name == "ring2d") return attention_kind::ring2d;
  throw std::invalid_argument("--attention: expected ulysses, lasp or ring2d, got " + name);
}

//! The per-head decays of the linear attention: head h remembers about 2^(h + 2) tokens
//! (1 - 2^-(h + 2): 0.75, 0.875, ...), so its output stays a sum of a bounded number of terms.
inline std::vector<float> lasp_decays(int heads) {
  std::vector<float> decay(heads);
  for (int h = 0; h < heads; ++h) decay[h] = 1.0f - 1.0f / static_cast<float>(1 << std::min(h + 2, 20));
  return decay;
}

//! attention_ops over a seqpar layer (ulysses_attention, lasp_attention, ulysses_ring_attention):
//! block l's forward keeps its context until block l's backward, and keeps q, k, v and o alive
//! beside it (contexts of LASP and of the ring may hold views of them, as autograd saves tensors).
template <class Layer>
class layer_attention final : public attention_ops<float> {
 public:
  //! Over `layer`, for c.layers blocks of `batch` sequences of `tokens` local tokens; q is
  //! multiplied by `q_scale` on its way in (and dq on its way out).
  layer_attention(Layer& layer, const config& c, std::int64_t batch, std::int64_t tokens, float q_scale = 1.0f)
      : layer_(layer), c_(c), batch_(batch), tokens_(tokens), q_scale_(q_scale), saved_(c.layers) {}
  void forward(int layer, const float* q, const float* k, const float* v, float* o) override {
    auto& s = saved_.at(layer);
    const std::int64_t rows = batch_ * tokens_;
    s.q.resize(rows * c_.q_width());
    std::transform(q, q + s.q.size(), s.q.begin(), [&](float x) { return x * q_scale_; });
    s.k.assign(k, k + rows * c_.kv_width());
    s.v.assign(v, v + rows * c_.kv_width()), s.o.resize(rows * c_.q_width());
    s.context = layer_.forward({.q = in(s.q.data(), c_.heads),
                                .k = in(s.k.data(), c_.kv_heads),
                                .v = in(s.v.data(), c_.kv_heads),
                                .o = out(s.o.data(), c_.heads)},
                               {.stream = nullptr});
    std::copy(s.o.begin(), s.o.end(), o);
  }
  void backward(int layer, const float* dout, float* dq, float* dk, float* dv) override {
    auto& s = saved_.at(layer);
    layer_.backward(s.context,
                    {.dout = in(dout, c_.heads), .dq = out(dq, c_.heads), .dk = out(dk, c_.kv_heads),
                     .dv = out(dv, c_.kv_heads)},
                    {.stream = nullptr});
    std::transform(dq, dq + s.q.size(), dq, [&](float x) { return x * q_scale_; });
    s = {};
  }

 private:
  seqpar::tensor_view<const float> in(const float* p, int heads) const {
    return seqpar::make_bshd<const float>(p, batch_, tokens_, heads, c_.head_dim);
  }
  seqpar::tensor_view<float> out(float* p, int heads) const {
    return seqpar::make_bshd(p, batch_, tokens_, heads, c_.head_dim);
  }

  Layer& layer_;
  config c_;
  std::int64_t batch_, tokens_;
  float q_scale_;
  struct saved {
    std::vector<float> q, k, v, o;
    typename Layer::context context;
  };
  std::vector<saved> saved_;
};

//! Builds the `kind` layer over `sp` (a mesh's sequence-parallel group, arranged as `sp_mesh`) for
//! `batch` local sequences of S tokens and calls body(attention_ops&, positions): the global
//! positions of this rank's tokens (contiguous shards, or zigzag ones for the ring).
template <class Comm, class Body>
void with_attention(attention_kind kind, Comm& sp, seqpar::mesh_2d sp_mesh, const config& c, std::int64_t batch,
                    std::int64_t S, Body&& body) {
  const seqpar::attention_shape shape{.batch = batch, .heads = c.heads, .kv_heads = c.kv_heads, .head_dim = c.head_dim};
  const seqpar::attention_options causal{.causal = true};
  std::vector<std::int64_t> positions;  // this rank's tokens' global positions
  auto run = [&](auto& layer, std::int64_t tokens, auto&& global, float q_scale = 1.0f) {
    for (std::int64_t s = 0; s < tokens; ++s) positions.push_back(global(s));
    layer_attention ops(layer, c, batch, tokens, q_scale);
    body(static_cast<attention_ops<float>&>(ops), std::span<const std::int64_t>(positions));
  };
  const int r = sp.rank();
  if (kind == attention_kind::ring2d) {
    const auto layout = seqpar::make_token_layout_2d(S, sp_mesh);
    seqpar::ulysses_ring_attention layer(seqpar::reference_attention{}, sp, layout, shape, seqpar::elements<float>,
                                         causal);
    run(layer, layout.size(r), [&](std::int64_t s) { return layout.global(r, s); });
    return;
  }
  const auto part = seqpar::make_seq_partition(S, sp.size());
  if (kind == attention_kind::lasp) {
    // Linear attention has no softmax scale of its own: q takes softmax's 1 / sqrt(head_dim).
    seqpar::lasp_attention layer(seqpar::linear_reference{}, sp, part, shape, seqpar::elements<float>,
                                 lasp_decays(c.heads));
    run(layer, part.size(r), [&](std::int64_t s) { return part.global(r, s); }, 1.0f / std::sqrt(float(c.head_dim)));
  } else {
    seqpar::ulysses_attention layer(seqpar::reference_attention{}, sp, part, shape, seqpar::elements<float>, causal);
    run(layer, part.size(r), [&](std::int64_t s) { return part.global(r, s); });
  }
}

}  // namespace tiny_lm
