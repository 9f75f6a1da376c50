//! @file parameters.hpp
//! The tiny language model's shape and its parameters: grouped in units (the token embedding, one
//! unit per block, the head), each unit one flat array whose parameters lie back to back; named
//! views of a unit's array; a deterministic initialisation of each unit.
#pragma once

#include <seqpar/error.hpp>
#include <seqpar/zero/parameter_partition.hpp>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <numbers>
#include <random>
#include <vector>

namespace tiny_lm {

//! The shape of a decoder-only model over bytes; weights are stored [in, out] (y = x W).
struct config {
  int vocab = 256;           //!< token ids [0, vocab)
  int dim = 64;              //!< residual stream width
  int layers = 2;            //!< blocks
  int heads = 4;             //!< query heads
  int kv_heads = 2;          //!< key and value heads (GQA: divides heads)
  int head_dim = 16;         //!< elements per head (even, for the rotary pairs)
  int hidden = 192;          //!< MLP width
  double rope_base = 10000;  //!< rotary frequency base
  double norm_eps = 1e-5;    //!< RMSNorm epsilon
  bool qk_norm = true;       //!< RMSNorm (no gain) on each head of q and k before the rotary embedding

  //! Width of q (and of the attention output): heads * head_dim.
  int q_width() const { return heads * head_dim; }
  //! Width of k and v: kv_heads * head_dim.
  int kv_width() const { return kv_heads * head_dim; }
  //! Parameter units: the embedding, one per block, the head.
  int units() const { return layers + 2; }
  //! Unit of block `layer`.
  int block_unit(int layer) const { return 1 + layer; }
  //! Unit of the final norm and the LM head.
  int head_unit() const { return layers + 1; }
  //! Throws seqpar::error naming the first field out of range.
  void check() const {
    SEQPAR_EXPECTS(vocab >= 1 && dim >= 1 && layers >= 1 && hidden >= 1,
                   "config: expected vocab, dim, layers and hidden >= 1, got " << vocab << ", " << dim << ", "
                       << layers << ", " << hidden);
    SEQPAR_EXPECTS(heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0,
                   "config.kv_heads: expected a divisor of heads = " << heads << ", got " << kv_heads);
    SEQPAR_EXPECTS(head_dim >= 2 && head_dim % 2 == 0, "config.head_dim: expected an even number, got " << head_dim);
    SEQPAR_EXPECTS(rope_base > 0 && norm_eps >= 0,
                   "config: expected rope_base > 0 and norm_eps >= 0, got " << rope_base << " and " << norm_eps);
  }
};

//! The token embedding (unit 0); P is `const Real` for parameters, `Real` for gradients.
template <class P>
struct embedding_params {
  P* table = nullptr;  //!< [vocab, dim]
};

//! One block's parameters (unit 1 + layer), in their order in the unit.
template <class P>
struct block_params {
  P* attn_norm = nullptr;  //!< [dim], gain of the RMSNorm before attention
  P* wq = nullptr;         //!< [dim, heads * head_dim]
  P* wk = nullptr;         //!< [dim, kv_heads * head_dim]
  P* wv = nullptr;         //!< [dim, kv_heads * head_dim]
  P* wo = nullptr;         //!< [heads * head_dim, dim]
  P* mlp_norm = nullptr;   //!< [dim], gain of the RMSNorm before the MLP
  P* w1 = nullptr;         //!< [dim, hidden]
  P* w2 = nullptr;         //!< [hidden, dim]
};

//! The final norm and the LM head (unit layers + 1), in their order in the unit.
template <class P>
struct head_params {
  P* final_norm = nullptr;  //!< [dim]
  P* lm_head = nullptr;     //!< [dim, vocab]
};

//! The parameters of unit u in order: sizes, and weight decay for matrices but not norm gains.
inline std::vector<seqpar::parameter_spec> unit_parameters(const config& c, int u) {
  c.check();
  SEQPAR_EXPECTS(u >= 0 && u < c.units(), "unit: expected 0 <= unit < " << c.units() << ", got " << u);
  const std::int64_t d = c.dim;
  if (u == 0) return {{d * c.vocab, true}};
  if (u == c.head_unit()) return {{d, false}, {d * c.vocab, true}};
  return {{d, false}, {d * c.q_width(), true}, {d * c.kv_width(), true}, {d * c.kv_width(), true},
          {std::int64_t(c.q_width()) * d, true}, {d, false}, {d * c.hidden, true}, {std::int64_t(c.hidden) * d, true}};
}

//! Every unit's parameters, in unit order: what seqpar::parameter_partition takes.
inline std::vector<std::vector<seqpar::parameter_spec>> parameter_units(const config& c) {
  std::vector<std::vector<seqpar::parameter_spec>> units;
  for (int u = 0; u < c.units(); ++u) units.push_back(unit_parameters(c, u));
  return units;
}

//! Elements of unit u.
inline std::int64_t unit_elements(const config& c, int u) {
  std::int64_t n = 0;
  for (const auto& p : unit_parameters(c, u)) n += p.elements;
  return n;
}

namespace detail {
// Points each field at its parameter in unit u's array, in the order unit_parameters lists them.
template <class P>
void bind(const config& c, int u, P* base, std::initializer_list<P**> fields) {
  const auto specs = unit_parameters(c, u);
  std::size_t i = 0;
  for (P** field : fields) {
    *field = base;
    base += specs[i++].elements;
  }
}
}  // namespace detail

//! Named view of the embedding unit's flat array.
template <class P>
embedding_params<P> embedding_view(const config& c, P* unit) {
  embedding_params<P> p;
  detail::bind(c, 0, unit, {&p.table});
  return p;
}

//! Named view of a block unit's flat array (every block has the same layout).
template <class P>
block_params<P> block_view(const config& c, P* unit) {
  block_params<P> p;
  detail::bind(c, c.block_unit(0), unit, {&p.attn_norm, &p.wq, &p.wk, &p.wv, &p.wo, &p.mlp_norm, &p.w1, &p.w2});
  return p;
}

//! Named view of the head unit's flat array.
template <class P>
head_params<P> head_view(const config& c, P* unit) {
  head_params<P> p;
  detail::bind(c, c.head_unit(), unit, {&p.final_norm, &p.lm_head});
  return p;
}

//! Standard normal numbers from std::mt19937_64 by Box-Muller: unlike std::normal_distribution,
//! whose algorithm each standard library chooses, the same sequence everywhere (up to the last bit
//! of the math library's log, sin and cos).
class normal_generator {
 public:
  //! The sequence of `seed`.
  explicit normal_generator(std::uint64_t seed) : engine_(seed) {}
  //! The next number.
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = double((engine_() >> 11) + 1) * 0x1p-53;  // (0, 1]: the log stays finite
    const double u2 = double(engine_() >> 11) * 0x1p-53;        // [0, 1)
    const double radius = std::sqrt(-2.0 * std::log(u1)), angle = 2.0 * std::numbers::pi * u2;
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

//! The seed of unit u's generator: seed and unit mixed by splitmix64's finaliser.
inline std::uint64_t unit_seed(std::uint64_t seed, int u) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (static_cast<std::uint64_t>(u) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

//! Unit u's initial parameters into `out` (resized to the unit): norm gains 1, every matrix
//! normal(0, 0.02) drawn in parameter order, and wo and w2 scaled by 1 / sqrt(2 * layers) so the
//! residual stream's variance does not grow with depth. Depends only on the config, u and seed.
inline void init_unit(const config& c, int u, std::uint64_t seed, std::vector<float>& out) {
  const auto specs = unit_parameters(c, u);
  out.resize(static_cast<std::size_t>(unit_elements(c, u)));
  const bool block = u != 0 && u != c.head_unit();
  const block_params<float> b = block ? block_view(c, out.data()) : block_params<float>{};
  normal_generator normal(unit_seed(seed, u));
  float* at = out.data();
  for (const auto& p : specs) {
    const bool output_projection = block && (at == b.wo || at == b.w2);
    const double std_dev = output_projection ? 0.02 / std::sqrt(2.0 * c.layers) : 0.02;
    for (std::int64_t i = 0; i < p.elements; ++i) at[i] = p.decay ? static_cast<float>(std_dev * normal()) : 1.0f;
    at += p.elements;
  }
}

}  // namespace tiny_lm
