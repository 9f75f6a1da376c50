//! @file all_to_all_heads.hpp
//! The Ulysses exchange: sequence shards <-> head shards, for Q/K/V together or one tensor, forward
//! and inverse, over any communicator, on host memory or (compiled by nvcc) device memory.
#pragma once

#include <seqpar/call.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/error.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/ulysses/all_to_all_heads_plan.hpp>
#include <seqpar/policy/detail/launcher.cuh>
#include <seqpar/ulysses/detail/heads_pack_host.hpp>
#if SEQPAR_CUDA_COMPILER || SEQPAR_KERNELS_AS_HOST_CODE
#include <seqpar/ulysses/detail/heads_pack_cuda.cuh>
#endif

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

SEQPAR_NAMESPACE_BEGIN

//! Q, K and V views of one side of an exchange.
template <class Q, class K = Q, class V = Q>
struct qkv_views {
  tensor_view<Q> q;  //!< query-headed
  tensor_view<K> k;  //!< kv-headed
  tensor_view<V> v;  //!< kv-headed
};

//! Deduces the element types from the three views: qkv_views{q, k, v}.
template <class Q, class K, class V>
qkv_views(tensor_view<Q>, tensor_view<K>, tensor_view<V>) -> qkv_views<Q, K, V>;

//! What an exchange of Q, K and V together takes: `all_to_all_heads(plan, comm,
//! seqpar::qkv_exchange_args<T>{.in = {q, k, v}, .out = {q2, k2, v2}, .workspace = ws}, {.stream = s})`.
template <element T>
struct qkv_exchange_args {
  qkv_views<const T> in;           //!< the side read
  qkv_views<T> out;                //!< the side written
  std::span<std::byte> workspace;  //!< at least plan.workspace_bytes() bytes
};

//! What an exchange of one query-headed tensor (dO, O, dQ) takes.
template <element T>
struct heads_exchange_args {
  tensor_view<const T> in;         //!< the side read
  tensor_view<T> out;              //!< the side written
  std::span<std::byte> workspace;  //!< at least plan.workspace_bytes() bytes
};

namespace detail {

enum class heads_direction { forward, inverse };

//! Extents of a sequence-sharded (seq side) or head-sharded (heads side) tensor of segment t.
inline shape4 seq_side_extents(const all_to_all_heads_plan& plan, int t) {
  const auto& h = plan.heads();
  return {plan.batch(), plan.seq().size(plan.rank()), t ? h.kv_heads : h.heads, plan.head_dim()};
}
inline shape4 heads_side_extents(const all_to_all_heads_plan& plan, int t) {
  return {plan.batch(), plan.seq().tokens, plan.local_heads(t != 0), plan.head_dim()};
}

//! Bytes of one head-sharded tensor of segment t (0: query-headed, else kv-headed).
inline std::size_t heads_side_bytes(const all_to_all_heads_plan& plan, int t) {
  const shape4 e = heads_side_extents(plan, t);
  return static_cast<std::size_t>(e[0] * e[1] * e[2] * e[3]) * size_of(plan.type());
}

//! A packed head-sharded view of segment t over `bytes` (at least heads_side_bytes(plan, t)).
template <class T>
tensor_view<T> heads_side_view(const all_to_all_heads_plan& plan, std::span<std::byte> bytes, int t) {
  const shape4 e = heads_side_extents(plan, t);
  return make_bshd(reinterpret_cast<T*>(bytes.data()), e[0], e[1], e[2], e[3]);
}

//! True when a head-sharded view is laid out exactly as the heads-side exchange buffer (tokens,
//! then batch, heads, dim, all packed), so the exchange can read or write it in place.
template <class T>
bool matches_heads_side_buffer(const all_to_all_heads_plan& plan, const tensor_view<T>& v) {
  const std::int64_t D = v.head_dim(), H = v.heads(), B = v.batch();
  return plan.seq().strategy == shard_strategy::contiguous && v.stride(axis::head_dim) == 1 &&
         (H <= 1 || v.stride(axis::heads) == D) && (B <= 1 || v.stride(axis::batch) == H * D) &&
         v.stride(axis::seq) == B * H * D;
}

}  // namespace detail
SEQPAR_NAMESPACE_END

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! The checks every exchange makes first: the communicator and element type the plan was made for,
//! and a large enough, aligned workspace.
template <class T, class Comm>
void check_exchange_call(const all_to_all_heads_plan& plan, const Comm& comm, heads_payload what,
                         std::span<std::byte> workspace) {
  static_assert(compiler_serves<Comm>,
                "seqpar: all_to_all_heads on a device-only communicator (nccl_communicator) needs the calling file "
                "compiled by nvcc: its pack kernels are CUDA");
  SEQPAR_EXPECTS(comm.size() == plan.ranks(), "comm: a group of " << comm.size() << " ranks; expected the plan's "
                                                                  << plan.ranks());
  SEQPAR_EXPECTS(comm.rank() == plan.rank(), "comm: rank " << comm.rank() << "; expected the plan's rank "
                                                           << plan.rank());
  SEQPAR_EXPECTS(plan.type() == dtype_of<T>, "views: element type " << to_string(dtype_of<T>)
                                                                    << "; expected the plan's " << to_string(plan.type()));
  SEQPAR_EXPECTS(workspace.size() >= plan.workspace_bytes(what),
                 "workspace: expected at least plan.workspace_bytes() = " << plan.workspace_bytes(what)
                                                                          << " bytes, got " << workspace.size());
  SEQPAR_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace.data()) % 16 == 0,
                 "workspace: expected 16-byte alignment");
}

//! Runs one exchange whose arguments are already checked and agreed: pack, one all_to_all_v,
//! unpack; on a device the pack kernels are started by `launch`.
template <class Comm, class T, class Launcher>
void run_heads_exchange(const all_to_all_heads_plan& plan, Comm& comm, heads_payload what, heads_direction direction,
                        const segment_views<T>& views, std::span<std::byte> workspace, stream_t stream,
                        const Launcher& launch) {
  const bool on_device = comm.memory() == memory_space::device;
  (void)launch;  // used only where the pack kernels compile
  if (!starts_kernels<Launcher> && on_device)
    SEQPAR_FAIL(errc::unsupported,
                "comm: device memory needs the calling file compiled by nvcc (the pack kernels are CUDA)");
  const auto& g = plan.geometry(what);
  const std::size_t seq_n = plan.seq_side_elements(what), heads_n = plan.heads_side_elements(what);
  T* seq_buf = reinterpret_cast<T*>(workspace.data());
  T* heads_buf = reinterpret_cast<T*>(workspace.data() + plan.heads_side_offset(what));

  if (direction == heads_direction::forward) {
    const bool in_place = what == heads_payload::q && matches_heads_side_buffer(plan, views.out[0]);
    T* recv = in_place ? views.out[0].data() : heads_buf;
#if SEQPAR_CUDA_COMPILER || SEQPAR_KERNELS_AS_HOST_CODE
    if constexpr (starts_kernels<Launcher>)
      if (on_device) device::pack_seq_side(g, views, seq_buf, stream, launch);
#endif
    if (!on_device) pack_seq_side(g, views, seq_buf);
    comm.all_to_all_v(std::span<const T>(seq_buf, seq_n), plan.seq_side_counts(what), plan.seq_side_displs(what),
                      std::span<T>(recv, heads_n), plan.heads_side_counts(what), plan.heads_side_displs(what), stream);
    if (in_place) return;
#if SEQPAR_CUDA_COMPILER || SEQPAR_KERNELS_AS_HOST_CODE
    if constexpr (starts_kernels<Launcher>)
      if (on_device) device::unpack_heads_side(g, heads_buf, views, stream, launch);
#endif
    if (!on_device) unpack_heads_side(g, heads_buf, views);
    return;
  }

  const bool in_place = what == heads_payload::q && matches_heads_side_buffer(plan, views.in[0]);
  const T* send = in_place ? views.in[0].data() : heads_buf;
  if (!in_place) {
#if SEQPAR_CUDA_COMPILER || SEQPAR_KERNELS_AS_HOST_CODE
    if constexpr (starts_kernels<Launcher>)
      if (on_device) device::pack_heads_side(g, views, heads_buf, stream, launch);
#endif
    if (!on_device) pack_heads_side(g, views, heads_buf);
  }
  comm.all_to_all_v(std::span<const T>(send, heads_n), plan.heads_side_counts(what), plan.heads_side_displs(what),
                    std::span<T>(seq_buf, seq_n), plan.seq_side_counts(what), plan.seq_side_displs(what), stream);
#if SEQPAR_CUDA_COMPILER || SEQPAR_KERNELS_AS_HOST_CODE
  if constexpr (starts_kernels<Launcher>)
    if (on_device) device::unpack_seq_side_sum(g, seq_buf, views, stream, launch);
#endif
  if (!on_device) unpack_seq_side_sum(g, seq_buf, views);
}

//! The checks of a Q/K/V exchange on this rank; `names` are the six views' names as the caller
//! knows them (in q, k, v, then out q, k, v), `in_extents(t)` and `out_extents(t)` their shapes.
template <class Comm, class T, class InExtents, class OutExtents>
void check_qkv_exchange(const all_to_all_heads_plan& plan, const Comm& comm, const qkv_views<const T>& in,
                        const qkv_views<T>& out, InExtents in_extents, OutExtents out_extents,
                        std::span<std::byte> workspace, const std::array<const char*, 6>& names) {
  check_exchange_call<T>(plan, comm, heads_payload::qkv, workspace);
  check_extents(names[0], in.q, in_extents(0));
  check_extents(names[1], in.k, in_extents(1));
  check_extents(names[2], in.v, in_extents(2));
  check_extents(names[3], out.q, out_extents(0));
  check_extents(names[4], out.k, out_extents(1));
  check_extents(names[5], out.v, out_extents(2));
}

//! The checks of a one-tensor exchange on this rank, naming the views `in_name` and `out_name`.
template <class Comm, class T>
void check_one_exchange(const all_to_all_heads_plan& plan, const Comm& comm, const tensor_view<const T>& in,
                        const tensor_view<T>& out, const shape4& in_extents, const shape4& out_extents,
                        std::span<std::byte> workspace, const char* in_name, const char* out_name) {
  check_exchange_call<T>(plan, comm, heads_payload::q, workspace);
  check_extents(in_name, in, in_extents);
  check_extents(out_name, out, out_extents);
}

//! Runs a Q/K/V exchange whose views are checked and agreed (pack kernels started by `launch`).
template <class Comm, class T, class Launcher = decltype(default_launcher())>
void run_qkv_exchange(const all_to_all_heads_plan& plan, Comm& comm, heads_direction direction,
                      const qkv_views<const T>& in, const qkv_views<T>& out, std::span<std::byte> workspace,
                      stream_t stream, const Launcher& launch = default_launcher()) {
  segment_views<T> views{{in.q, in.k, in.v}, {out.q, out.k, out.v}};
  run_heads_exchange(plan, comm, heads_payload::qkv, direction, views, workspace, stream, launch);
}

//! Runs a one-tensor exchange whose views are checked and agreed (pack kernels started by `launch`).
template <class Comm, class T, class Launcher = decltype(default_launcher())>
void run_one_exchange(const all_to_all_heads_plan& plan, Comm& comm, heads_direction direction, tensor_view<const T> in,
                      tensor_view<T> out, std::span<std::byte> workspace, stream_t stream,
                      const Launcher& launch = default_launcher()) {
  segment_views<T> views{{in}, {out}};
  run_heads_exchange(plan, comm, heads_payload::q, direction, views, workspace, stream, launch);
}

SEQPAR_DETAIL_KERNEL_NAMESPACE_END

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! One exchange call in `direction`: every rank checks its arguments, the group agrees (with
//! exec.checks == call_checks::group), then the exchange runs.
template <class Comm, class T>
void exchange(const all_to_all_heads_plan& plan, Comm& comm, heads_direction direction,
              const qkv_exchange_args<T>& args, const execution& exec) {
  const bool forward = direction == heads_direction::forward;
  auto in_extents = [&](int t) { return forward ? seq_side_extents(plan, t) : heads_side_extents(plan, t); };
  auto out_extents = [&](int t) { return forward ? heads_side_extents(plan, t) : seq_side_extents(plan, t); };
  agree_on_arguments(comm, exec.checks, exec.stream, [&] {
    check_qkv_exchange(plan, comm, args.in, args.out, in_extents, out_extents, args.workspace,
                       {"in.q", "in.k", "in.v", "out.q", "out.k", "out.v"});
  });
  run_qkv_exchange(plan, comm, direction, args.in, args.out, args.workspace, exec.stream);
}
//! The same for one query-headed tensor.
template <class Comm, class T>
void exchange(const all_to_all_heads_plan& plan, Comm& comm, heads_direction direction,
              const heads_exchange_args<T>& args, const execution& exec) {
  const bool forward = direction == heads_direction::forward;
  const shape4 seq_side = seq_side_extents(plan, 0), heads_side = heads_side_extents(plan, 0);
  agree_on_arguments(comm, exec.checks, exec.stream, [&] {
    check_one_exchange(plan, comm, args.in, args.out, forward ? seq_side : heads_side,
                       forward ? heads_side : seq_side, args.workspace, "in", "out");
  });
  run_one_exchange(plan, comm, direction, args.in, args.out, args.workspace, exec.stream);
}

SEQPAR_DETAIL_KERNEL_NAMESPACE_END

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! Forward Ulysses exchange of Q, K and V in one all_to_all_v: sequence shards [B, S_r, H | H_kv, D]
//! (args.in) become head shards [B, S, h_r | k_r, D] (args.out), where rank r's kv heads are
//! exactly those its query heads read. Every rank checks its arguments and, with
//! call_checks::group (the default), the group agrees before any byte moves. Uses
//! plan.workspace_bytes() bytes of args.workspace; nothing else is allocated.
template <communicator Comm, element T>
void all_to_all_heads(const all_to_all_heads_plan& plan, Comm& comm, const qkv_exchange_args<T>& args,
                      const execution& exec) {
  detail::exchange(plan, comm, detail::heads_direction::forward, args, exec);
}

//! Forward Ulysses exchange of one query-headed tensor (dO in the backward pass): [B, S_r, H, D]
//! (args.in) becomes [B, S, h_r, D] (args.out).
template <communicator Comm, element T>
void all_to_all_heads(const all_to_all_heads_plan& plan, Comm& comm, const heads_exchange_args<T>& args,
                      const execution& exec) {
  detail::exchange(plan, comm, detail::heads_direction::forward, args, exec);
}

//! Inverse Ulysses exchange of one query-headed tensor (O after attention, dQ in the backward
//! pass): head shards [B, S, h_r, D] (args.in) become sequence shards [B, S_r, H, D] (args.out).
template <communicator Comm, element T>
void all_to_all_heads_inverse(const all_to_all_heads_plan& plan, Comm& comm, const heads_exchange_args<T>& args,
                              const execution& exec) {
  detail::exchange(plan, comm, detail::heads_direction::inverse, args, exec);
}

//! Inverse Ulysses exchange of dQ, dK and dV in one all_to_all_v: the adjoint of the forward
//! Q/K/V exchange. A kv head that went to several ranks gets the sum of their gradients (fp32).
template <communicator Comm, element T>
void all_to_all_heads_inverse(const all_to_all_heads_plan& plan, Comm& comm, const qkv_exchange_args<T>& args,
                              const execution& exec) {
  detail::exchange(plan, comm, detail::heads_direction::inverse, args, exec);
}

SEQPAR_KERNEL_NAMESPACE_END
