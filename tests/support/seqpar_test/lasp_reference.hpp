//! @file lasp_reference.hpp
//! The single-device definition of decayed causal linear attention and its gradients, in double,
//! written from o_t = sum_{j<=t} lambda^(t-j) (q_t . k_j) v_j without any chunking.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace seqpar_test {

//! Dense [B, S, H, X] arrays in double, row-major.
struct dense4 {
  std::int64_t B = 0, S = 0, H = 0, X = 0;
  std::vector<double> v;
  dense4() = default;
  dense4(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t x) : B(b), S(s), H(h), X(x), v(b * s * h * x, 0.0) {}
  double& operator()(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t x) { return v[((b * S + s) * H + h) * X + x]; }
  double operator()(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t x) const {
    return v[((b * S + s) * H + h) * X + x];
  }
};

//! Outputs and gradients of the reference.
struct linear_attention_result {
  dense4 o, dq, dk, dv;
};

//! o, and dq, dk, dv for the upstream gradient dout, with decay[h] per head.
inline linear_attention_result linear_attention_reference(const dense4& q, const dense4& k, const dense4& v,
                                                          const dense4& dout, const std::vector<float>& decay) {
  const std::int64_t B = q.B, S = q.S, H = q.H, D = q.X, E = v.X;
  linear_attention_result r{dense4(B, S, H, E), dense4(B, S, H, D), dense4(B, S, H, D), dense4(B, S, H, E)};
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < S; ++t)
        for (std::int64_t j = 0; j <= t; ++j) {
          const double w = std::pow(double(decay[h]), double(t - j));
          double qk = 0, dov = 0;
          for (std::int64_t d = 0; d < D; ++d) qk += q(b, t, h, d) * k(b, j, h, d);
          for (std::int64_t e = 0; e < E; ++e) dov += dout(b, t, h, e) * v(b, j, h, e);
          for (std::int64_t e = 0; e < E; ++e) {
            r.o(b, t, h, e) += w * qk * v(b, j, h, e);        // o_t
            r.dv(b, j, h, e) += w * qk * dout(b, t, h, e);    // d o_t / d v_j
          }
          for (std::int64_t d = 0; d < D; ++d) {
            r.dq(b, t, h, d) += w * dov * k(b, j, h, d);      // d o_t / d q_t
            r.dk(b, j, h, d) += w * dov * q(b, t, h, d);      // d o_t / d k_j
          }
        }
  return r;
}

}  // namespace seqpar_test
