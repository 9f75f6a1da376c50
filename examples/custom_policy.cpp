// A user-defined attention policy, written outside the library: it wraps a forward kernel the user
// already has (here a small hand-written one, one head at a time) and borrows seqpar's reference
// backward, then runs inside ulysses_attention on 4 in-process ranks and compares with one device.
#include <seqpar/seqpar.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

namespace user {
// The user's existing kernel: softmax attention of one head, rows of length d, no masking.
void attention_one_head(const float* q, const float* k, const float* v, float* o, float* lse, long s, long d,
                        long q_stride, long kv_stride, float scale) {
  std::vector<float> w(s);
  for (long i = 0; i < s; ++i) {
    float m = -INFINITY, sum = 0;
    for (long j = 0; j < s; ++j) {
      float dot = 0;
      for (long x = 0; x < d; ++x) dot += q[i * q_stride + x] * k[j * kv_stride + x];
      w[j] = scale * dot;
      m = std::fmax(m, w[j]);
    }
    for (long j = 0; j < s; ++j) sum += w[j] = std::exp(w[j] - m);
    for (long x = 0; x < d; ++x) {
      float acc = 0;
      for (long j = 0; j < s; ++j) acc += w[j] * v[j * kv_stride + x];
      o[i * q_stride + x] = acc / sum;
    }
    lse[i] = m + std::log(sum);
  }
}

// The adapter: opts into seqpar::attention_policy and calls the kernel once per (batch, head).
struct my_policy {
  using policy_concept = seqpar::attention_policy_tag;
  seqpar::memory_space memory() const { return seqpar::memory_space::host; }
  bool supports(seqpar::dtype t, std::int64_t) const { return t == seqpar::dtype::float32; }
  bool supports_causal() const { return false; }

  template <class T>
  void forward(const seqpar::policy_forward_args<T>& a, seqpar::stream_ref) const {
    if constexpr (std::is_same_v<T, float>) {
      for (std::int64_t b = 0; b < a.q.batch(); ++b)
        for (std::int64_t h = 0; h < a.q.heads(); ++h) {
          const int kh = a.map.kv_head(static_cast<int>(h));
          attention_one_head(&a.q(b, 0, h, 0), &a.k(b, 0, kh, 0), &a.v(b, 0, kh, 0), &a.o(b, 0, h, 0), &a.lse(b, h, 0),
                             a.q.seq(), a.q.head_dim(), a.q.stride(seqpar::axis::seq), a.k.stride(seqpar::axis::seq),
                             a.options.scale);
        }
    }
  }
  template <class T>
  void backward(const seqpar::policy_backward_args<T>& a, seqpar::stream_ref stream) const {
    seqpar::reference_attention{}.backward(a, stream);
  }
};
static_assert(seqpar::attention_policy<my_policy>);
}  // namespace user

int main() {
  const int P = 4, H = 8, H_kv = 2;
  const std::int64_t B = 1, S = 64, D = 16;
  const seqpar::attention_options opt{0.25f, false};
  auto value = [](std::int64_t i, int which) { return std::sin(0.37f * static_cast<float>(i) + which); };
  const auto part = seqpar::make_seq_partition(S, P);
  double worst = 0;
  // One device: the reference policy on the whole sequence and all heads.
  std::vector<float> q(B * S * H * D), kv(B * S * H_kv * D), o_ref(q.size()), lse(B * H * S);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = value(static_cast<std::int64_t>(i), 0);
  for (std::size_t i = 0; i < kv.size(); ++i) kv[i] = value(static_cast<std::int64_t>(i), 1);
  seqpar::reference_attention{}.forward(
      seqpar::policy_forward_args<float>{.q = seqpar::make_bshd<const float>(q.data(), B, S, H, D),
                                         .k = seqpar::make_bshd<const float>(kv.data(), B, S, H_kv, D),
                                         .v = seqpar::make_bshd<const float>(kv.data(), B, S, H_kv, D),
                                         .o = seqpar::make_bshd(o_ref.data(), B, S, H, D),
                                         .lse = seqpar::lse_view(lse.data(), B, H, S),
                                         .map = {0, H / H_kv, 0},
                                         .options = opt},
      nullptr);
  std::vector<double> rank_error(P);
  seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    const std::int64_t n = part.size(r), at = part.offset(r);
    auto rows = [&](const std::vector<float>& g, std::int64_t heads) {
      return std::vector<float>(g.begin() + at * heads * D, g.begin() + (at + n) * heads * D);
    };
    std::vector<float> lq = rows(q, H), lkv = rows(kv, H_kv), lo(lq.size());
    seqpar::ulysses_attention layer(user::my_policy{}, comm, part,
                                    {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, seqpar::elements<float>, opt);
    const auto saved = layer.forward({.q = seqpar::make_bshd<const float>(lq.data(), B, n, H, D),
                                      .k = seqpar::make_bshd<const float>(lkv.data(), B, n, H_kv, D),
                                      .v = seqpar::make_bshd<const float>(lkv.data(), B, n, H_kv, D),
                                      .o = seqpar::make_bshd(lo.data(), B, n, H, D)},
                                     {.stream = nullptr});
    const auto want = rows(o_ref, H);
    for (std::size_t i = 0; i < lo.size(); ++i) rank_error[r] = std::max(rank_error[r], double(std::fabs(lo[i] - want[i])));
  });
  for (double e : rank_error) worst = std::max(worst, e);
  std::printf("user policy under ulysses_attention on %d ranks (H = %d, H_kv = %d, S = %lld): max |o - o_ref| = %.2e\n",
              P, H, H_kv, static_cast<long long>(S), worst);
  return worst < 1e-5 ? 0 : 1;
}
