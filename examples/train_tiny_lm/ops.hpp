//! @file ops.hpp
//! The tiny language model's primitive operations on row-major host arrays, each with its exact
//! backward: matmul, RMSNorm, rotary position embedding, SiLU and softmax cross-entropy. A forward
//! overwrites its outputs; a backward adds into every gradient it produces (inputs' and
//! parameters' alike), so the caller zeroes a gradient buffer once and lets each path add to it.
//! The rotary embedding, a rotation, works in place both ways.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

namespace tiny_lm {

namespace detail {
// y[0, n) += a x[0, n). In runs of 8 on unaliased arrays: g++ -O2 vectorises those, where its
// cost model turns down a loop that needs a remainder or a runtime aliasing check.
template <class Real>
void axpy(Real a, const Real* __restrict x, Real* __restrict y, std::int64_t n) {
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int t = 0; t < 8; ++t) y[j + t] += a * x[j + t];
  for (; j < n; ++j) y[j] += a * x[j];
}
}  // namespace detail

//! y = x w, with x [n, in], w [in, out] and y [n, out] row-major; y is overwritten.
template <class Real>
void matmul(const Real* x, const Real* w, Real* y, std::int64_t n, std::int64_t in, std::int64_t out) {
  for (std::int64_t i = 0; i < n; ++i) {
    Real* yi = y + i * out;
    std::fill(yi, yi + out, Real(0));
    for (std::int64_t k = 0; k < in; ++k) detail::axpy(x[i * in + k], w + k * out, yi, out);
  }
}

//! Backward of y = x w: dx += dy w^T and dw += x^T dy (either may be null to skip it).
template <class Real>
void matmul_backward(const Real* x, const Real* w, const Real* dy, Real* dx, Real* dw, std::int64_t n, std::int64_t in,
                     std::int64_t out) {
  if (dx) {
    // dy w^T through w^T [out, in], so the innermost loop runs along contiguous rows.
    std::vector<Real> wt(static_cast<std::size_t>(in * out));
    for (std::int64_t k = 0; k < in; ++k)
      for (std::int64_t j = 0; j < out; ++j) wt[j * in + k] = w[k * out + j];
    for (std::int64_t i = 0; i < n; ++i) {
      Real* dxi = dx + i * in;
      for (std::int64_t j = 0; j < out; ++j) detail::axpy(dy[i * out + j], wt.data() + j * in, dxi, in);
    }
  }
  if (dw) {
    // Summed over the rows in double, then added once: the rows of a rank are a part of the global
    // batch, and a sum that rounds once barely depends on how the batch was split over ranks.
    std::vector<double> sum(static_cast<std::size_t>(in * out), 0.0), dyi(static_cast<std::size_t>(out));
    for (std::int64_t i = 0; i < n; ++i) {
      std::copy(dy + i * out, dy + (i + 1) * out, dyi.begin());
      for (std::int64_t k = 0; k < in; ++k) detail::axpy(double(x[i * in + k]), dyi.data(), sum.data() + k * out, out);
    }
    for (std::int64_t e = 0; e < in * out; ++e) dw[e] += static_cast<Real>(sum[e]);
  }
}

//! RMSNorm of each row of x [n, dim]: y = x / sqrt(mean(x^2) + eps) * gain; rstd[i] keeps row i's
//! 1 / sqrt(mean(x^2) + eps) for the backward.
template <class Real>
void rms_norm(const Real* x, const Real* gain, double eps, Real* y, Real* rstd, std::int64_t n, std::int64_t dim) {
  for (std::int64_t i = 0; i < n; ++i) {
    const Real* xi = x + i * dim;
    double squares = 0;
    for (std::int64_t j = 0; j < dim; ++j) squares += double(xi[j]) * xi[j];
    const Real r = static_cast<Real>(1.0 / std::sqrt(squares / dim + eps));
    rstd[i] = r;
    for (std::int64_t j = 0; j < dim; ++j) y[i * dim + j] = xi[j] * r * gain[j];
  }
}

//! Backward of rms_norm: dx += r g dy - r^3 x mean(dy g x) and dgain += dy x r, per row.
template <class Real>
void rms_norm_backward(const Real* x, const Real* gain, const Real* rstd, const Real* dy, Real* dx, Real* dgain,
                       std::int64_t n, std::int64_t dim) {
  for (std::int64_t i = 0; i < n; ++i) {
    const Real *xi = x + i * dim, *dyi = dy + i * dim;
    const Real r = rstd[i];
    double projection = 0;
    for (std::int64_t j = 0; j < dim; ++j) projection += double(dyi[j]) * gain[j] * xi[j];
    const Real c = static_cast<Real>(projection / dim) * r * r * r;
    for (std::int64_t j = 0; j < dim; ++j) {
      dx[i * dim + j] += r * gain[j] * dyi[j] - c * xi[j];
      dgain[j] += dyi[j] * xi[j] * r;
    }
  }
}

//! The rotary angles of a run of tokens: cos and sin of p * base^(-2i / head_dim) for each token's
//! global position p and each pair i < head_dim / 2, [tokens, head_dim / 2] row-major.
template <class Real>
struct rope_table {
  std::int64_t tokens = 0;  //!< tokens, one row each
  std::int64_t pairs = 0;   //!< head_dim / 2
  std::vector<Real> cos;    //!< cos of each angle
  std::vector<Real> sin;    //!< sin of each angle
};

//! The rotary angles of tokens at global `positions`, for heads of `head_dim` (even) elements.
template <class Real>
rope_table<Real> make_rope_table(std::span<const std::int64_t> positions, std::int64_t head_dim, double base) {
  rope_table<Real> t;
  t.tokens = static_cast<std::int64_t>(positions.size());
  t.pairs = head_dim / 2;
  t.cos.resize(positions.size() * t.pairs);
  t.sin.resize(positions.size() * t.pairs);
  for (std::size_t s = 0; s < positions.size(); ++s)
    for (std::int64_t i = 0; i < t.pairs; ++i) {
      const double angle = double(positions[s]) * std::pow(base, -2.0 * double(i) / double(head_dim));
      t.cos[s * t.pairs + i] = static_cast<Real>(std::cos(angle));
      t.sin[s * t.pairs + i] = static_cast<Real>(std::sin(angle));
    }
  return t;
}

//! Rotary position embedding, in place, of x [batch, tokens, heads, head_dim] (tokens as in the
//! table): each head's interleaved pair (x[2i], x[2i+1]) turns by its token's angle i,
//! (a, b) -> (a cos - b sin, a sin + b cos). With `inverse` it turns by minus the angle, which is
//! the backward (a rotation's transpose is its inverse).
template <class Real>
void rope(const rope_table<Real>& t, Real* x, std::int64_t batch, std::int64_t heads, bool inverse = false) {
  const std::int64_t tokens = t.tokens, head_dim = 2 * t.pairs;
  const Real sign = inverse ? Real(-1) : Real(1);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t s = 0; s < tokens; ++s) {
      const Real *c = t.cos.data() + s * t.pairs, *sn = t.sin.data() + s * t.pairs;
      for (std::int64_t h = 0; h < heads; ++h) {
        Real* v = x + ((b * tokens + s) * heads + h) * head_dim;
        for (std::int64_t i = 0; i < t.pairs; ++i) {
          const Real a = v[2 * i], e = v[2 * i + 1], si = sign * sn[i];
          v[2 * i] = a * c[i] - e * si;
          v[2 * i + 1] = a * si + e * c[i];
        }
      }
    }
}

//! SiLU of n elements: s = a * sigmoid(a).
template <class Real>
void silu(const Real* a, Real* s, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) s[i] = a[i] / (Real(1) + std::exp(-a[i]));
}

//! Backward of silu: da += ds * sigmoid(a) * (1 + a * (1 - sigmoid(a))).
template <class Real>
void silu_backward(const Real* a, const Real* ds, Real* da, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const Real sigmoid = Real(1) / (Real(1) + std::exp(-a[i]));
    da[i] += ds[i] * sigmoid * (Real(1) + a[i] * (Real(1) - sigmoid));
  }
}

//! Summed cross-entropy of logits [n, vocab] against targets[n] (each in [0, vocab)), in double;
//! overwrites the logits with their softmax, the probabilities the backward reads.
template <class Real>
double softmax_cross_entropy(Real* logits, const std::int32_t* targets, std::int64_t n, std::int64_t vocab) {
  double loss = 0;
  std::vector<double> exps(static_cast<std::size_t>(vocab));
  for (std::int64_t i = 0; i < n; ++i) {
    Real* row = logits + i * vocab;
    const double top = *std::max_element(row, row + vocab);
    loss += top - double(row[targets[i]]);
    for (std::int64_t j = 0; j < vocab; ++j) exps[j] = std::exp(double(row[j]) - top);
    double sum = 0;
    for (std::int64_t j = 0; j < vocab; ++j) sum += exps[j];
    loss += std::log(sum);
    for (std::int64_t j = 0; j < vocab; ++j) row[j] = static_cast<Real>(exps[j] / sum);
  }
  return loss;
}

//! Backward of `scale` times softmax_cross_entropy: dlogits += scale * (probs - onehot(target)).
template <class Real>
void softmax_cross_entropy_backward(const Real* probs, const std::int32_t* targets, Real scale, Real* dlogits,
                                    std::int64_t n, std::int64_t vocab) {
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < vocab; ++j) dlogits[i * vocab + j] += scale * probs[i * vocab + j];
    dlogits[i * vocab + targets[i]] -= scale;
  }
}

}  // namespace tiny_lm
