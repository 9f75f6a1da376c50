// The flash_attention policy on the host, its kernels under an emulated warp (one std::thread per
// CUDA thread, mma.sync from the PTX fragment tables), against reference_attention in double: the
// policy's own launch planning and every fragment layout, mask, tile edge and softmax rescale of the
// real kernel code, without a GPU.
// Tolerances: 2e-3 (half) and 2e-2 (bfloat16) of the largest reference magnitude; lse 1e-4.
#include <seqpar_test/warp_emulation.hpp>  // first: the kernel headers below compile as host code

#include <seqpar/policy/flash_attention.cuh>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar_test/host_tensor.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

namespace {
template <class T>
using tensor = seqpar_test::host_tensor<T>;
using seqpar_test::relative_gap;

struct flash_case {
  std::int64_t B, S;
  int H, H_kv;
  bool causal;
  std::int64_t pad;
  float q_amp;  // > 1 sharpens the softmax, so the running max moves between key tiles
};

template <class T, int D>
void check_flash(const flash_case& c) {
  INFO("D=" << D << " B=" << c.B << " S=" << c.S << " H=" << c.H << " H_kv=" << c.H_kv << " causal=" << c.causal
            << " pad=" << c.pad);
  const tensor<T> q(c.B, c.S, c.H, D, c.pad, c.q_amp), k(c.B, c.S, c.H_kv, D, c.pad, 1), v(c.B, c.S, c.H_kv, D, c.pad, 1),
      dout(c.B, c.S, c.H, D, c.pad, 1);
  tensor<T> o(c.B, c.S, c.H, D, c.pad, 0), dq(c.B, c.S, c.H, D, c.pad, 0), dk(c.B, c.S, c.H_kv, D, c.pad, 0),
      dv(c.B, c.S, c.H_kv, D, c.pad, 0), o_ref(c.B, c.S, c.H, D, 0, 0), dq_ref(c.B, c.S, c.H, D, 0, 0),
      dk_ref(c.B, c.S, c.H_kv, D, 0, 0), dv_ref(c.B, c.S, c.H_kv, D, 0, 0);
  std::vector<float> lse(c.B * c.H * c.S, NAN), lse_ref(lse.size());
  const seqpar::lse_view l(lse.data(), c.B, c.H, c.S), l_ref(lse_ref.data(), c.B, c.H, c.S);
  const seqpar::gqa_map map{0, c.H / c.H_kv, 0};
  const seqpar::attention_options opt{static_cast<float>(1.0 / std::sqrt(double(D))), c.causal};

  const seqpar::reference_attention ref;
  ref.forward(q.cview(), k.cview(), v.cview(), map, opt, o_ref.view, l_ref);
  ref.backward(q.cview(), k.cview(), v.cview(), o_ref.cview(), seqpar::const_lse_view(l_ref), dout.cview(), map, opt,
               dq_ref.view, dk_ref.view, dv_ref.view);

  const seqpar::basic_flash_attention<seqpar_emulation::launcher> flash;
  flash.forward(q.cview(), k.cview(), v.cview(), map, opt, o.view, l);
  // Backward from the kernel's own o and lse, as a layer runs it.
  flash.backward(q.cview(), k.cview(), v.cview(), o.cview(), seqpar::const_lse_view(l), dout.cview(), map, opt, dq.view,
                 dk.view, dv.view);
  CHECK(flash.launcher.within_shared);

  const double tol = std::is_same_v<T, __half> ? 2e-3 : 2e-2;
  CHECK(relative_gap(o.view, o_ref.view) <= tol);
  CHECK(relative_gap(dq.view, dq_ref.view) <= tol);
  CHECK(relative_gap(dk.view, dk_ref.view) <= tol);
  CHECK(relative_gap(dv.view, dv_ref.view) <= tol);
  double lse_gap = 0;
  for (std::size_t i = 0; i < lse.size(); ++i) lse_gap = std::max(lse_gap, double(std::abs(lse[i] - lse_ref[i])));
  CHECK(lse_gap <= 1e-4);
  // Padding between tokens stays poison: nothing was written outside the views.
  for (const auto* t : {&o, &dq, &dk, &dv}) CHECK(t->padding_untouched());
}
}  // namespace

TEST_CASE("flash_attention kernels under an emulated warp equal reference_attention") {
  // Several key tiles, ragged last tiles, GQA, causal and not, sharp softmax, both load paths.
  check_flash<__half, 64>({1, 100, 4, 2, true, 0, 3.0f});
  check_flash<__half, 64>({2, 70, 2, 1, false, 0, 1.0f});
  check_flash<__nv_bfloat16, 128>({1, 70, 2, 2, true, 1, 1.0f});
  check_flash<__nv_bfloat16, 64>({1, 33, 3, 1, false, 0, 3.0f});
  check_flash<__half, 128>({1, 150, 4, 1, true, 0, 2.0f});
  check_flash<__nv_bfloat16, 64>({2, 130, 2, 2, false, 3, 1.0f});
}
