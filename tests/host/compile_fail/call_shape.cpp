// The call shape refuses at compile time what it cannot check at run time: views of another element
// type than the layer's (every layer) or than the exchange's, an execution that leaves out the
// stream, and a policy call that leaves it out. Built as is the
// matching calls compile (so each failure below is its mistake's and nothing else's); with one of
// the SEQPAR_FAIL_* macros the build must fail.
#include <seqpar/comm/in_process.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>

#include <cstddef>
#include <vector>

using bf16 = __nv_bfloat16;
#if defined(SEQPAR_FAIL_ULYSSES_ELEMENT) || defined(SEQPAR_FAIL_RING_ELEMENT) || defined(SEQPAR_FAIL_2D_ELEMENT) || \
    defined(SEQPAR_FAIL_LASP_ELEMENT)
using element = float;  // the views' type, not the layers'
#else
using element = bf16;
#endif

//! Runs each layer once on views of `element`.
void run(seqpar::in_process_communicator& comm, const seqpar::seq_partition& part, std::vector<element>& x) {
  const seqpar::attention_shape shape{.batch = 1, .heads = 2, .head_dim = 8};
  const auto in = seqpar::make_bshd<const element>(x.data(), 1, part.size(comm.rank()), 2, 8);
  const auto out = seqpar::make_bshd(x.data(), 1, part.size(comm.rank()), 2, 8);
  seqpar::ulysses_attention ulysses(seqpar::reference_attention{}, comm, part, shape, seqpar::elements<bf16>);
#ifdef SEQPAR_FAIL_MISSING_STREAM
  (void)ulysses.forward({.q = in, .k = in, .v = in, .o = out}, {.checks = seqpar::call_checks::local});
#endif
#if !defined(SEQPAR_FAIL_RING_ELEMENT) && !defined(SEQPAR_FAIL_2D_ELEMENT) && !defined(SEQPAR_FAIL_LASP_ELEMENT)
  (void)ulysses.forward({.q = in, .k = in, .v = in, .o = out}, {.stream = nullptr});
#endif
#if !defined(SEQPAR_FAIL_ULYSSES_ELEMENT) && !defined(SEQPAR_FAIL_2D_ELEMENT) && !defined(SEQPAR_FAIL_LASP_ELEMENT)
  seqpar::ring_attention ring(seqpar::reference_attention{}, comm, part, shape, seqpar::elements<bf16>);
  (void)ring.forward({.q = in, .k = in, .v = in, .o = out}, {.stream = nullptr});
#endif
#if !defined(SEQPAR_FAIL_ULYSSES_ELEMENT) && !defined(SEQPAR_FAIL_RING_ELEMENT) && !defined(SEQPAR_FAIL_LASP_ELEMENT)
  seqpar::ulysses_ring_attention two_d(seqpar::reference_attention{}, comm,
                                       seqpar::make_token_layout_2d(part.tokens, {comm.size(), 1}), shape,
                                       seqpar::elements<bf16>);
  (void)two_d.forward({.q = in, .k = in, .v = in, .o = out}, {.stream = nullptr});
#endif
#if !defined(SEQPAR_FAIL_ULYSSES_ELEMENT) && !defined(SEQPAR_FAIL_RING_ELEMENT) && !defined(SEQPAR_FAIL_2D_ELEMENT)
  seqpar::lasp_attention lasp(seqpar::linear_reference{}, comm, part, shape, seqpar::elements<bf16>,
                              std::vector<float>{1.0f, 1.0f});
  (void)lasp.forward({.q = in, .k = in, .v = in, .o = out}, {.stream = nullptr});
#endif
}

#ifdef SEQPAR_FAIL_EXCHANGE_ELEMENT
using kv_element = float;  // k's type, not q's
#else
using kv_element = bf16;
#endif

//! Runs the Ulysses exchange of Q, K and V once, k of `kv_element`, and the reference policy once.
void exchange(seqpar::in_process_communicator& comm, const seqpar::seq_partition& part, std::vector<bf16>& x,
              std::vector<kv_element>& y) {
  const seqpar::attention_shape shape{.batch = 1, .heads = 2, .head_dim = 8};
  const auto plan = seqpar::make_all_to_all_heads_plan(comm.rank(), part, shape, seqpar::dtype::bfloat16);
  std::vector<std::byte> ws(plan.workspace_bytes());
  const auto in = seqpar::make_bshd<const bf16>(x.data(), 1, part.size(comm.rank()), 2, 8);
  const auto k = seqpar::make_bshd<const kv_element>(y.data(), 1, part.size(comm.rank()), 2, 8);
  const auto out = seqpar::make_bshd(x.data(), 1, part.tokens, 1, 8);
  seqpar::all_to_all_heads(plan, comm,
                           seqpar::qkv_exchange_args<bf16>{.in = {in, k, in}, .out = {out, out, out}, .workspace = ws},
                           {.stream = nullptr});
  std::vector<float> lse(part.tokens);
  const seqpar::policy_forward_args<bf16> args{
      .q = in, .k = in, .v = in, .o = out, .lse = seqpar::lse_view(lse.data(), 1, 2, part.size(comm.rank()))};
#ifdef SEQPAR_FAIL_POLICY_STREAM
  seqpar::reference_attention{}.forward(args);
#else
  seqpar::reference_attention{}.forward(args, nullptr);
#endif
}
