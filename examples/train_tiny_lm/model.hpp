//! @file model.hpp
//! The tiny language model's forward and backward, one stage at a time (embedding, each block, the
//! head), so the caller can gather a unit's parameters just for the stage that reads them.
//!
//! A rank holds `batch` sequences of S_r tokens each, at global positions positions[0..S_r) (the
//! same for every sequence, in any order: a zigzag shard is fine). Activations are row-major
//! [batch * S_r, width] in (sequence, token) order: [batch, S_r, heads, head_dim] when width is
//! heads * head_dim, the layout the attention callback reads and writes.
//!
//! A block is pre-norm: h = x + Attn(RMSNorm(x)), out = h + W2 silu(W1 RMSNorm(h)). Attn projects
//! q, k and v, normalises each head of q and k to unit RMS (QK-norm, config::qk_norm: attention
//! scores stay bounded, which keeps training stable), turns q and k by the rotary embedding of their
//! global positions (ops.hpp: rope), lets
//! the attention callback mix tokens, and projects its output with Wo. The head's loss is
//! loss_scale times the summed cross-entropy of the local tokens; the backward starts from
//! d(loss) = 1. Backward functions add into the gradient views (zeroed by the caller) and return
//! the gradient of the stage's input.
#pragma once

#include <train_tiny_lm/ops.hpp>
#include <train_tiny_lm/parameters.hpp>

#include <seqpar/error.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace tiny_lm {

//! Token mixing of one block, possibly across ranks. Arrays are packed row-major: q and o are
//! [batch, S_r, heads, head_dim], k and v [batch, S_r, kv_heads, head_dim]. `layer` names the
//! calling block, so an implementation can keep per-layer state from forward for backward.
template <class Real>
struct attention_ops {
  //! Virtual: adapters are called through this base.
  virtual ~attention_ops() = default;
  //! o from q, k and v (q and k already carry the rotary embedding).
  virtual void forward(int layer, const Real* q, const Real* k, const Real* v, Real* o) = 0;
  //! dq, dk and dv (overwritten) from dout, for the last forward of the same layer.
  virtual void backward(int layer, const Real* dout, Real* dq, Real* dk, Real* dv) = 0;
};

//! What a block's backward reads of its forward, one per block, owned by the caller.
template <class Real>
struct block_activations {
  std::vector<Real> x;            //!< input [n, dim]
  std::vector<Real> attn_rstd;    //!< [n], the attention norm's 1 / rms
  std::vector<Real> attn_normed;  //!< [n, dim], the attention norm's output
  std::vector<Real> q_raw, k_raw;    //!< q and k before their per-head RMSNorm (config::qk_norm)
  std::vector<Real> q_rstd, k_rstd;  //!< [n * heads], [n * kv_heads]: their 1 / rms
  std::vector<Real> attn_out;     //!< [n, heads * head_dim], the callback's output
  std::vector<Real> h;            //!< [n, dim], x + attention
  std::vector<Real> mlp_rstd;     //!< [n], the MLP norm's 1 / rms
  std::vector<Real> mlp_normed;   //!< [n, dim], the MLP norm's output
  std::vector<Real> pre_act;      //!< [n, hidden], before SiLU
  std::vector<Real> act;          //!< [n, hidden], after SiLU
};

//! What the head's backward reads of its forward.
template <class Real>
struct head_activations {
  std::vector<Real> x;                //!< input [n, dim]
  std::vector<Real> rstd;             //!< [n], the final norm's 1 / rms
  std::vector<Real> normed;           //!< [n, dim], the final norm's output
  std::vector<Real> probs;            //!< [n, vocab], softmax of the logits
  std::vector<std::int32_t> targets;  //!< [n], the tokens to predict
  double loss_scale = 1;              //!< what the summed cross-entropy was multiplied by
};

//! The stages of the model in compute type Real (float to train, double to check gradients).
template <class Real>
class model {
 public:
  //! A model of shape `c` (checked).
  explicit model(const config& c) : c_(c) { c_.check(); }

  //! Its shape.
  const config& shape() const { return c_; }

  //! x [n, dim]: the embedding rows of tokens[n] (each in [0, vocab)).
  std::vector<Real> embed_forward(embedding_params<const Real> p, std::span<const std::int32_t> tokens) const {
    check_tokens(tokens, "tokens");
    const std::int64_t d = c_.dim;
    std::vector<Real> x(tokens.size() * d);
    for (std::size_t i = 0; i < tokens.size(); ++i)
      std::copy(p.table + tokens[i] * d, p.table + (tokens[i] + 1) * d, x.begin() + i * d);
    return x;
  }

  //! Adds dx [n, dim] into the gradient rows of tokens[n].
  void embed_backward(std::span<const std::int32_t> tokens, std::span<const Real> dx,
                      embedding_params<Real> grads) const {
    check_tokens(tokens, "tokens");
    check_rows(dx.size(), c_.dim, tokens.size(), "dx");
    const std::int64_t d = c_.dim;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      Real* row = grads.table + tokens[i] * d;
      for (std::int64_t j = 0; j < d; ++j) row[j] += dx[i * d + j];
    }
  }

  //! Block `layer` on x [batch * S_r, dim] at global `positions` [S_r]: returns its output
  //! [batch * S_r, dim] and fills `saved` for block_backward.
  std::vector<Real> block_forward(int layer, block_params<const Real> p, std::span<const std::int64_t> positions,
                                  std::span<const Real> x, attention_ops<Real>& attention,
                                  block_activations<Real>& saved) const {
    const std::int64_t n = rows(x.size(), positions), batch = n / std::int64_t(positions.size());
    const std::int64_t d = c_.dim, qw = c_.q_width(), kw = c_.kv_width(), f = c_.hidden;
    saved.x.assign(x.begin(), x.end());
    saved.attn_rstd.resize(n);
    saved.attn_normed.resize(n * d);
    rms_norm(x.data(), p.attn_norm, c_.norm_eps, saved.attn_normed.data(), saved.attn_rstd.data(), n, d);

    std::vector<Real> q(n * qw), k(n * kw), v(n * kw);
    matmul(saved.attn_normed.data(), p.wq, q.data(), n, d, qw);
    matmul(saved.attn_normed.data(), p.wk, k.data(), n, d, kw);
    matmul(saved.attn_normed.data(), p.wv, v.data(), n, d, kw);
    if (c_.qk_norm) {
      const std::vector<Real> ones(c_.head_dim, Real(1));
      saved.q_raw = q, saved.k_raw = k;
      saved.q_rstd.resize(n * c_.heads), saved.k_rstd.resize(n * c_.kv_heads);
      rms_norm(saved.q_raw.data(), ones.data(), c_.norm_eps, q.data(), saved.q_rstd.data(), n * c_.heads, c_.head_dim);
      rms_norm(saved.k_raw.data(), ones.data(), c_.norm_eps, k.data(), saved.k_rstd.data(), n * c_.kv_heads,
               c_.head_dim);
    }
    const auto angles = make_rope_table<Real>(positions, c_.head_dim, c_.rope_base);
    rope(angles, q.data(), batch, c_.heads);
    rope(angles, k.data(), batch, c_.kv_heads);
    saved.attn_out.resize(n * qw);
    attention.forward(layer, q.data(), k.data(), v.data(), saved.attn_out.data());

    saved.h.resize(n * d);
    matmul(saved.attn_out.data(), p.wo, saved.h.data(), n, qw, d);
    for (std::int64_t i = 0; i < n * d; ++i) saved.h[i] += x[i];

    saved.mlp_rstd.resize(n);
    saved.mlp_normed.resize(n * d);
    rms_norm(saved.h.data(), p.mlp_norm, c_.norm_eps, saved.mlp_normed.data(), saved.mlp_rstd.data(), n, d);
    saved.pre_act.resize(n * f);
    saved.act.resize(n * f);
    matmul(saved.mlp_normed.data(), p.w1, saved.pre_act.data(), n, d, f);
    silu(saved.pre_act.data(), saved.act.data(), n * f);
    std::vector<Real> out(n * d);
    matmul(saved.act.data(), p.w2, out.data(), n, f, d);
    for (std::int64_t i = 0; i < n * d; ++i) out[i] += saved.h[i];
    return out;
  }

  //! The gradient of block `layer`'s input from that of its output, dout [batch * S_r, dim], with
  //! the same parameters and positions as its forward; adds the parameters' gradients into `grads`.
  std::vector<Real> block_backward(int layer, block_params<const Real> p, std::span<const std::int64_t> positions,
                                   const block_activations<Real>& saved, std::span<const Real> dout,
                                   attention_ops<Real>& attention, block_params<Real> grads) const {
    const std::int64_t n = rows(saved.x.size(), positions), batch = n / std::int64_t(positions.size());
    const std::int64_t d = c_.dim, qw = c_.q_width(), kw = c_.kv_width(), f = c_.hidden;
    check_rows(dout.size(), d, n, "dout");

    // MLP: out = h + act W2, act = silu(normed W1), normed = RMSNorm(h).
    std::vector<Real> dact(n * f, Real(0)), dpre(n * f, Real(0)), dnormed(n * d, Real(0));
    matmul_backward(saved.act.data(), p.w2, dout.data(), dact.data(), grads.w2, n, f, d);
    silu_backward(saved.pre_act.data(), dact.data(), dpre.data(), n * f);
    matmul_backward(saved.mlp_normed.data(), p.w1, dpre.data(), dnormed.data(), grads.w1, n, d, f);
    std::vector<Real> dh(dout.begin(), dout.end());
    rms_norm_backward(saved.h.data(), p.mlp_norm, saved.mlp_rstd.data(), dnormed.data(), dh.data(), grads.mlp_norm, n,
                      d);

    // Attention: h = x + o Wo, o = attention(rope(normed Wq), rope(normed Wk), normed Wv).
    std::vector<Real> dattn(n * qw, Real(0));
    matmul_backward(saved.attn_out.data(), p.wo, dh.data(), dattn.data(), grads.wo, n, qw, d);
    std::vector<Real> dq(n * qw), dk(n * kw), dv(n * kw);
    attention.backward(layer, dattn.data(), dq.data(), dk.data(), dv.data());
    const auto angles = make_rope_table<Real>(positions, c_.head_dim, c_.rope_base);
    rope(angles, dq.data(), batch, c_.heads, /*inverse=*/true);
    rope(angles, dk.data(), batch, c_.kv_heads, /*inverse=*/true);
    if (c_.qk_norm) {
      const std::vector<Real> ones(c_.head_dim, Real(1));
      std::vector<Real> unused(c_.head_dim), dq_raw(n * qw, Real(0)), dk_raw(n * kw, Real(0));
      rms_norm_backward(saved.q_raw.data(), ones.data(), saved.q_rstd.data(), dq.data(), dq_raw.data(), unused.data(),
                        n * c_.heads, c_.head_dim);
      rms_norm_backward(saved.k_raw.data(), ones.data(), saved.k_rstd.data(), dk.data(), dk_raw.data(), unused.data(),
                        n * c_.kv_heads, c_.head_dim);
      dq = std::move(dq_raw), dk = std::move(dk_raw);
    }
    std::fill(dnormed.begin(), dnormed.end(), Real(0));
    const Real* normed = saved.attn_normed.data();
    matmul_backward(normed, p.wq, dq.data(), dnormed.data(), grads.wq, n, d, qw);
    matmul_backward(normed, p.wk, dk.data(), dnormed.data(), grads.wk, n, d, kw);
    matmul_backward(normed, p.wv, dv.data(), dnormed.data(), grads.wv, n, d, kw);
    std::vector<Real> dx = std::move(dh);
    rms_norm_backward(saved.x.data(), p.attn_norm, saved.attn_rstd.data(), dnormed.data(), dx.data(), grads.attn_norm,
                      n, d);
    return dx;
  }

  //! loss_scale times the summed cross-entropy of logits = RMSNorm(x) W_head, x [n, dim], against
  //! targets[n]; fills `saved` for head_backward.
  double head_forward(head_params<const Real> p, std::span<const Real> x, std::span<const std::int32_t> targets,
                      double loss_scale, head_activations<Real>& saved) const {
    check_tokens(targets, "targets");
    check_rows(x.size(), c_.dim, targets.size(), "x");
    const std::int64_t n = static_cast<std::int64_t>(targets.size()), d = c_.dim, vocab = c_.vocab;
    saved.x.assign(x.begin(), x.end());
    saved.targets.assign(targets.begin(), targets.end());
    saved.loss_scale = loss_scale;
    saved.rstd.resize(n);
    saved.normed.resize(n * d);
    rms_norm(x.data(), p.final_norm, c_.norm_eps, saved.normed.data(), saved.rstd.data(), n, d);
    saved.probs.resize(n * vocab);
    matmul(saved.normed.data(), p.lm_head, saved.probs.data(), n, d, vocab);
    return loss_scale * softmax_cross_entropy(saved.probs.data(), targets.data(), n, vocab);
  }

  //! The gradient of the head's input [n, dim] from d(loss) = 1; adds the parameters' gradients
  //! into `grads`.
  std::vector<Real> head_backward(head_params<const Real> p, const head_activations<Real>& saved,
                                  head_params<Real> grads) const {
    const std::int64_t n = static_cast<std::int64_t>(saved.targets.size()), d = c_.dim, vocab = c_.vocab;
    std::vector<Real> dlogits(n * vocab, Real(0)), dnormed(n * d, Real(0)), dx(n * d, Real(0));
    softmax_cross_entropy_backward(saved.probs.data(), saved.targets.data(), static_cast<Real>(saved.loss_scale),
                                   dlogits.data(), n, vocab);
    matmul_backward(saved.normed.data(), p.lm_head, dlogits.data(), dnormed.data(), grads.lm_head, n, d, vocab);
    rms_norm_backward(saved.x.data(), p.final_norm, saved.rstd.data(), dnormed.data(), dx.data(), grads.final_norm, n,
                      d);
    return dx;
  }

 private:
  // Rows of an activation of `size` elements of width dim: a whole number of sequences of S_r tokens.
  std::int64_t rows(std::size_t size, std::span<const std::int64_t> positions) const {
    SEQPAR_EXPECTS(!positions.empty(), "positions: expected at least one token");
    const std::size_t row = static_cast<std::size_t>(c_.dim) * positions.size();
    SEQPAR_EXPECTS(size % row == 0, "x: expected batch * " << positions.size() << " tokens * dim " << c_.dim
                                                          << " elements, got " << size);
    return static_cast<std::int64_t>(size / c_.dim);
  }
  void check_rows(std::size_t size, std::int64_t width, std::size_t n, const char* name) const {
    SEQPAR_EXPECTS(size == n * width, name << ": expected " << n << " rows of " << width << " elements, got " << size);
  }
  void check_tokens(std::span<const std::int32_t> ids, const char* name) const {
    for (std::size_t i = 0; i < ids.size(); ++i)
      SEQPAR_EXPECTS(ids[i] >= 0 && ids[i] < c_.vocab,
                     name << "[" << i << "]: expected a token in [0, " << c_.vocab << "), got " << ids[i]);
  }

  config c_;
};

}  // namespace tiny_lm
