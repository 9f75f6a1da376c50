//! @file cudnn_attention.hpp
//! cudnn_attention: the attention policy over cuDNN's fused scaled-dot-product attention (the cuDNN
//! frontend graph API: sdpa forward with softmax stats, sdpa_backward), for device memory.
//!
//! - Element types: float16 and bfloat16 (float32 is not supported), fp32 softmax and accumulation.
//! - Head dims: multiples of 8 up to 128, what cuDNN's SDPA backward takes on Ampere, Hopper and
//!   Blackwell alike (Hopper alone goes to 256); cuDNN also needs sm_80 or newer, and refuses a
//!   backward with one query and one key token (S = 1).
//! - Views: any strides whose head_dim stride is 1; cuDNN gets them in its (B, H, S, D) order.
//! - lse: cuDNN's softmax stats, fp32 [B, H, S] row-major, the natural-log log-sum-exp of the scaled
//!   (and masked) scores, which is what attention_policy asks for; backward reads it back.
//! - Causal: cuDNN's diagonal band with top-left alignment and right bound 0 (token i attends j <= i).
//! - GQA: when local query head h reads local kv head h / (H / H_kv) (cuDNN's own grouping), one cuDNN
//!   call serves all heads. Otherwise (a rank whose first query head is not the first of its group)
//!   each kv head's query heads, which gqa_map keeps contiguous, get their own call (runs of kv heads
//!   with equal group sizes share one), so each kv head's dK and dV sum over exactly its query heads.
//! - Packed documents (attention_options::documents) are not supported yet.
//!
//! Graphs are built once per shape, layout, dtype, mask, scale and device, and kept in a cache that
//! every copy of a policy shares (mutex-guarded: in-process ranks are threads), with one cuDNN handle
//! per device. The plan's workspace is allocated per call in stream order (cudaMallocAsync).
//!
//! An optional dependency: needs cuDNN 9 and the cuDNN frontend headers (1.23, on the include path as
//! <cudnn_frontend.h>); link libcudnn and libnvrtc (the frontend 1.23 references NVRTC for its
//! runtime-compiled engines) or define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING. Define
//! CUDNN_FRONTEND_SKIP_JSON_LIB to leave out the frontend's JSON support (it bundles nlohmann-json).
//! Host code only: g++ and nvcc compile it alike.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/error.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/memory_space.hpp>
#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>

// The frontend defines static helpers it does not always use; keep its own warnings out of -Werror
// builds that put it on a plain -I path (a SYSTEM include path needs none of this).
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include <cudnn_frontend.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include <cuda_runtime_api.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

static_assert(CUDNN_MAJOR >= 9, "seqpar/policy/cudnn_attention.hpp needs cuDNN 9 or newer");

SEQPAR_NAMESPACE_BEGIN

namespace detail::cudnn_sdpa {

namespace fe = cudnn_frontend;

//! The uids of the graphs' tensors (the variant pack's keys).
enum uid : std::int64_t { uid_q = 1, uid_k, uid_v, uid_o, uid_stats, uid_dout, uid_dq, uid_dk, uid_dv };

//! Name of a cuDNN frontend error code.
inline const char* code_name(fe::error_code_t code) {
  switch (code) {
    case fe::error_code_t::OK: return "OK";
    case fe::error_code_t::ATTRIBUTE_NOT_SET: return "ATTRIBUTE_NOT_SET";
    case fe::error_code_t::SHAPE_DEDUCTION_FAILED: return "SHAPE_DEDUCTION_FAILED";
    case fe::error_code_t::INVALID_TENSOR_NAME: return "INVALID_TENSOR_NAME";
    case fe::error_code_t::INVALID_VARIANT_PACK: return "INVALID_VARIANT_PACK";
    case fe::error_code_t::GRAPH_NOT_SUPPORTED: return "GRAPH_NOT_SUPPORTED";
    case fe::error_code_t::GRAPH_EXECUTION_PLAN_CREATION_FAILED: return "GRAPH_EXECUTION_PLAN_CREATION_FAILED";
    case fe::error_code_t::GRAPH_EXECUTION_FAILED: return "GRAPH_EXECUTION_FAILED";
    case fe::error_code_t::HEURISTIC_QUERY_FAILED: return "HEURISTIC_QUERY_FAILED";
    case fe::error_code_t::UNSUPPORTED_GRAPH_FORMAT: return "UNSUPPORTED_GRAPH_FORMAT";
    case fe::error_code_t::CUDA_API_FAILED: return "CUDA_API_FAILED";
    case fe::error_code_t::CUDNN_BACKEND_API_FAILED: return "CUDNN_BACKEND_API_FAILED";
    case fe::error_code_t::INVALID_CUDA_DEVICE: return "INVALID_CUDA_DEVICE";
    case fe::error_code_t::HANDLE_ERROR: return "HANDLE_ERROR";
    case fe::error_code_t::INVALID_VALUE: return "INVALID_VALUE";
    case fe::error_code_t::NVRTC_COMPILATION_FAILED: return "NVRTC_COMPILATION_FAILED";
  }
  return "unknown cuDNN frontend error";
}

//! What a failed graph-building step means for the caller: a CUDA failure, or a graph that cuDNN
//! (its checks, heuristics or engines) does not take.
inline errc build_errc(fe::error_code_t code) {
  switch (code) {
    case fe::error_code_t::CUDA_API_FAILED:
    case fe::error_code_t::INVALID_CUDA_DEVICE:
    case fe::error_code_t::HANDLE_ERROR: return errc::cuda;
    default: return errc::unsupported;
  }
}

//! Throws seqpar::error (errc::cuda) naming `what` unless `status` is success. cuDNN is called
//! through the frontend's shim, so NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING works here too.
inline void check_status(cudnnStatus_t status, const char* what) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  const std::string last = fe::detail::get_last_error_string_();
  SEQPAR_FAIL(errc::cuda, "cudnn_attention: " << what << " failed: " << fe::detail::get_error_string(status)
                                              << (last.empty() ? "" : ": ") << last);
}

//! A cuDNN handle on the current device; throws unless cuDNN 9 or newer is loaded.
inline cudnnHandle_t create_handle() {
  std::size_t version = 0;
  try {
    version = fe::detail::get_backend_version();
  } catch (const std::exception& e) {  // dynamic loading found no libcudnn
    SEQPAR_FAIL(errc::unsupported, "cudnn_attention: loading cuDNN: " << e.what());
  }
  if (version < 90000)
    SEQPAR_FAIL(errc::unsupported, "cudnn_attention: needs cuDNN 9 or newer at run time, found version " << version);
  cudnnHandle_t handle = nullptr;
  check_status(fe::detail::create_handle(&handle), "cudnnCreate");
  return handle;
}

//! The largest power of two up to 16 that divides the address (16 for null): the alignment the
//! graph declares for a tensor.
inline std::int64_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  if (a == 0) return 16;
  const std::uintptr_t low = a & (~a + 1);
  return low >= 16 ? 16 : static_cast<std::int64_t>(low);
}

//! One graph tensor: dims and strides in cuDNN's order, and the alignment of its data.
struct tensor_desc {
  std::vector<std::int64_t> dim;     //!< extents
  std::vector<std::int64_t> stride;  //!< strides in elements
  std::int64_t alignment = 16;       //!< bytes the data pointer is aligned to
};

//! A [B, S, H, D] view as cuDNN's (B, H, S, D) tensor, its strides mapped along.
template <class T>
tensor_desc describe(const tensor_view<T>& v) {
  return {{v.batch(), v.heads(), v.seq(), v.head_dim()},
          {v.stride(axis::batch), v.stride(axis::heads), v.stride(axis::seq), v.stride(axis::head_dim)},
          alignment_of(v.data())};
}

//! The softmax stats of query heads [first, first + n) of an fp32 [B, H, S] row-major lse: dims
//! (B, n, S, 1), strides (H * S, S, 1, 1).
inline tensor_desc describe_stats(const float* lse_heads, std::int64_t B, std::int64_t H, std::int64_t n,
                                  std::int64_t S) {
  return {{B, n, S, 1}, {H * S, S, 1, 1}, alignment_of(lse_heads)};
}

//! Everything one cached graph depends on.
struct graph_desc {
  bool backward = false;                       //!< sdpa_backward rather than sdpa
  fe::DataType_t io = fe::DataType_t::HALF;    //!< element type of Q, K, V, O and the gradients
  dtype type = dtype::float16;                 //!< the same, as seqpar names it
  bool causal = false;                         //!< top-left causal mask
  float scale = 1.0f;                          //!< softmax scale (resolved)
  std::int64_t options_key = 0;                //!< scale bits and causal flag (detail::options_key)
  tensor_desc q, k, v, o, stats;               //!< forward's tensors (backward reads them all)
  tensor_desc dout, dq, dk, dv;                //!< backward's other tensors
  std::string heads;                           //!< which heads of the caller's views, for messages

  //! The cache key: the direction, dtype, mask, scale, every dim, stride and alignment.
  std::vector<std::int64_t> key(int device) const {
    std::vector<std::int64_t> key{device, backward ? 1 : 0, static_cast<std::int64_t>(type), options_key};
    for (const tensor_desc* t : {&q, &k, &v, &o, &stats, &dout, &dq, &dk, &dv}) {
      key.push_back(static_cast<std::int64_t>(t->dim.size()));
      key.insert(key.end(), t->dim.begin(), t->dim.end());
      key.insert(key.end(), t->stride.begin(), t->stride.end());
      key.push_back(t->alignment);
    }
    return key;
  }

  //! The call's shape for messages: {B=.., H=.., H_kv=.., S=.., S_kv=.., D=.., dtype, mask, scale}.
  std::string what() const {
    std::ostringstream os;
    os << "{B=" << q.dim[0] << ", H=" << q.dim[1] << ", H_kv=" << k.dim[1] << ", S=" << q.dim[2]
       << ", S_kv=" << k.dim[2] << ", D=" << q.dim[3] << ", " << to_string(type) << (causal ? ", causal" : "")
       << ", scale=" << scale << "}" << heads;
    return os.str();
  }
};

//! A built graph and the workspace bytes its plan needs.
struct plan {
  std::shared_ptr<fe::graph::Graph> graph;  //!< validated, lowered, with its plan built
  std::int64_t workspace = 0;               //!< bytes of device workspace per execution
};

//! One device's cuDNN handle and the lock that orders setting its stream and launching on it.
struct device_handle {
  cudnnHandle_t handle = nullptr;  //!< created on the device on first use
  std::mutex launch;               //!< held from cudnnSetStream to the end of execute
};

//! Throws seqpar::error naming the step and the call unless `status` is good.
inline void check_build(fe::error_t status, const char* step, const graph_desc& d) {
  if (status.is_good()) return;
  SEQPAR_FAIL(build_errc(status.get_code()), "cudnn_attention: building the " << (d.backward ? "backward" : "forward")
                                                 << " graph for " << d.what() << ": " << step << ": "
                                                 << code_name(status.get_code()) << ": " << status.get_message());
}

//! Builds the graph of `d` on `handle` (the current device's): validate, lower, query heuristics
//! (mode A), check support, build the plan.
inline std::shared_ptr<const plan> build_plan(cudnnHandle_t handle, const graph_desc& d) {
  namespace gr = fe::graph;
  auto g = std::make_shared<gr::Graph>();
  try {
    g->set_io_data_type(d.io)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto input = [&](const char* name, uid id, const tensor_desc& t, fe::DataType_t type) {
      return g->tensor(gr::Tensor_attributes()
                           .set_name(name)
                           .set_uid(id)
                           .set_dim(t.dim)
                           .set_stride(t.stride)
                           .set_data_type(type)
                           .set_alignment(t.alignment));
    };
    auto output = [&](const std::shared_ptr<gr::Tensor_attributes>& out, uid id, const tensor_desc& t,
                      fe::DataType_t type) {
      out->set_output(true).set_uid(id).set_dim(t.dim).set_stride(t.stride).set_data_type(type).set_alignment(
          t.alignment);
    };
    auto q = input("Q", uid_q, d.q, d.io);
    auto k = input("K", uid_k, d.k, d.io);
    auto v = input("V", uid_v, d.v, d.io);
    if (!d.backward) {
      auto attributes = gr::SDPA_attributes()
                            .set_name("seqpar_sdpa_forward")
                            .set_generate_stats(true)
                            .set_attn_scale(d.scale)
                            .set_implementation(fe::AttentionImplementation_t::COMPOSITE);
      if (d.causal)
        attributes.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
      auto [o, stats] = g->sdpa(q, k, v, std::move(attributes));
      output(o, uid_o, d.o, d.io);
      output(stats, uid_stats, d.stats, fe::DataType_t::FLOAT);
    } else {
      auto o = input("O", uid_o, d.o, d.io);
      auto dout = input("dO", uid_dout, d.dout, d.io);
      auto stats = input("Stats", uid_stats, d.stats, fe::DataType_t::FLOAT);
      auto attributes = gr::SDPA_backward_attributes().set_name("seqpar_sdpa_backward").set_attn_scale(d.scale);
      if (d.causal)
        attributes.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
      auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, std::move(attributes));
      output(dq, uid_dq, d.dq, d.io);
      output(dk, uid_dk, d.dk, d.io);
      output(dv, uid_dv, d.dv, d.io);
    }
    check_build(g->validate(), "validate", d);
    check_build(g->build_operation_graph(handle), "build_operation_graph", d);
    check_build(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans (heuristics mode A)", d);
    check_build(g->check_support(), "check_support", d);
    check_build(g->build_plans(), "build_plans", d);
    auto p = std::make_shared<plan>();
    check_build(g->get_workspace_size(p->workspace), "get_workspace_size", d);
    p->graph = std::move(g);
    return p;
  } catch (const seqpar::error&) {
    throw;
  } catch (const std::exception& e) {  // the frontend throws where it finds no SDPA implementation
    SEQPAR_FAIL(errc::unsupported, "cudnn_attention: building the " << (d.backward ? "backward" : "forward")
                                                                   << " graph for " << d.what() << ": " << e.what());
  }
}

//! The graphs and handles every copy of one cudnn_attention shares.
class cache {
 public:
  cache() = default;
  cache(const cache&) = delete;             //!< not copyable: policies share it through a shared_ptr
  cache& operator=(const cache&) = delete;  //!< not copyable: policies share it through a shared_ptr
  //! Drops the graphs, then destroys the handles.
  ~cache() {
    plans_.clear();
    for (auto& [device, h] : handles_)
      if (h && h->handle != nullptr) (void)fe::detail::destroy_handle(h->handle);
  }

  //! The handle of the current device `device` and the plan for `d`, each built on first use.
  std::pair<device_handle*, std::shared_ptr<const plan>> get(int device, const graph_desc& d) {
    const std::lock_guard<std::mutex> lock(mutex_);
    auto& h = handles_[device];
    if (!h) {
      auto fresh = std::make_unique<device_handle>();
      fresh->handle = create_handle();
      h = std::move(fresh);
    }
    auto key = d.key(device);
    auto found = plans_.find(key);
    if (found == plans_.end()) found = plans_.emplace(std::move(key), build_plan(h->handle, d)).first;
    return {h.get(), found->second};
  }

  //! Number of graphs built so far.
  std::size_t size() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return plans_.size();
  }

 private:
  mutable std::mutex mutex_;
  std::map<int, std::unique_ptr<device_handle>> handles_;
  std::map<std::vector<std::int64_t>, std::shared_ptr<const plan>> plans_;
};

//! Runs the graph of `d` with the tensors of `pack` on `stream`, its workspace allocated in stream
//! order for the call.
inline void run(cache& c, const graph_desc& d, std::unordered_map<std::int64_t, void*>& pack, stream_t stream) {
  int device = 0;
  SEQPAR_CUDA_TRY(cudaGetDevice(&device));
  auto [h, p] = c.get(device, d);
  owned_bytes<default_memory_resource> workspace(static_cast<std::size_t>(p->workspace), memory_space::device,
                                                 default_memory_resource{}, stream);
  const std::lock_guard<std::mutex> lock(h->launch);
  check_status(fe::detail::set_stream(h->handle, stream), "cudnnSetStream");
  fe::error_t status = p->graph->execute(h->handle, pack, workspace.span().data());
  if (status.is_bad())
    SEQPAR_FAIL(errc::cuda, "cudnn_attention: running the " << (d.backward ? "backward" : "forward") << " graph for "
                                                            << d.what() << ": " << code_name(status.get_code())
                                                            << ": " << status.get_message());
}

//! One cuDNN call's heads: query heads [q_first, q_first + q_count) read kv heads [kv_first,
//! kv_first + kv_count) in cuDNN's grouping (q_count / kv_count query heads per kv head, in order).
struct segment {
  std::int64_t q_first = 0;   //!< first local query head
  std::int64_t q_count = 0;   //!< query heads
  std::int64_t kv_first = 0;  //!< first local kv head
  std::int64_t kv_count = 0;  //!< kv heads
};

//! The calls that cover H query heads reading H_kv kv heads through `map`, and the kv heads that no
//! query head reads (their dK and dV are zero).
struct head_plan {
  std::vector<segment> segments;    //!< one cuDNN call each
  std::vector<std::int64_t> unread; //!< kv heads without query heads
};

//! Splits the heads into calls: one when map is cuDNN's grouping, else one per run of kv heads whose
//! (contiguous) query-head ranges follow each other with equal sizes. Throws unless every query head
//! reads a kv head in [0, H_kv) and each kv head's query heads are contiguous.
inline head_plan plan_heads(std::int64_t H, std::int64_t H_kv, gqa_map map) {
  std::vector<std::int64_t> first(static_cast<std::size_t>(H_kv), -1), last(first), count(first.size(), 0);
  for (std::int64_t h = 0; h < H; ++h) {
    const std::int64_t j = map.kv_head(static_cast<int>(h));
    SEQPAR_EXPECTS(j >= 0 && j < H_kv, "map: local query head " << h << " reads local kv head " << j
                                                                << "; expected one of k's " << H_kv << " heads");
    const auto u = static_cast<std::size_t>(j);
    if (first[u] < 0) first[u] = h;
    last[u] = h;
    ++count[u];
  }
  head_plan plan;
  for (std::int64_t j = 0; j < H_kv; ++j) {
    const auto u = static_cast<std::size_t>(j);
    if (count[u] == 0) {
      plan.unread.push_back(j);
      continue;
    }
    SEQPAR_EXPECTS(last[u] - first[u] + 1 == count[u],
                   "map: the query heads that read kv head " << j << " are not contiguous (" << count[u]
                                                             << " heads between " << first[u] << " and " << last[u]
                                                             << "); cudnn_attention needs each kv head's query "
                                                                "heads to be one contiguous range");
    if (!plan.segments.empty()) {
      segment& s = plan.segments.back();
      if (s.kv_first + s.kv_count == j && s.q_first + s.q_count == first[u] && s.q_count / s.kv_count == count[u]) {
        s.q_count += count[u];
        ++s.kv_count;
        continue;
      }
    }
    plan.segments.push_back({first[u], count[u], j, 1});
  }
  return plan;
}

//! Heads [first, first + n) of a view, with its strides.
template <class T>
tensor_view<T> heads(const tensor_view<T>& v, std::int64_t first, std::int64_t n) {
  using view = tensor_view<T>;
  typename view::extents_type e(v.batch(), v.seq(), n, v.head_dim());
  cuda::std::array<std::int64_t, 4> s{v.stride(axis::batch), v.stride(axis::seq), v.stride(axis::heads),
                                      v.stride(axis::head_dim)};
  return view(v.data() + first * v.stride(axis::heads), typename view::mapping_type(e, s));
}

//! Sets head h of a view (head_dim stride 1) to zero on `stream`.
template <class T>
void zero_head(const tensor_view<T>& v, std::int64_t h, stream_t stream) {
  const std::size_t width = static_cast<std::size_t>(v.head_dim()) * sizeof(T);
  const std::size_t pitch = v.seq() > 1 ? static_cast<std::size_t>(v.stride(axis::seq)) * sizeof(T) : width;
  for (std::int64_t b = 0; b < v.batch(); ++b)
    SEQPAR_CUDA_TRY(cudaMemset2DAsync(v.data() + b * v.stride(axis::batch) + h * v.stride(axis::heads), pitch, 0,
                                      width, static_cast<std::size_t>(v.seq()), stream));
}

//! The cuDNN data type of a seqpar element type.
template <class T>
constexpr fe::DataType_t data_type() {
  if constexpr (std::same_as<T, __half>) return fe::DataType_t::HALF;
  else if constexpr (std::same_as<T, __nv_bfloat16>) return fe::DataType_t::BFLOAT16;
  else return fe::DataType_t::FLOAT;
}

//! A pointer for the variant pack (cuDNN takes inputs through void* too).
template <class T>
void* pointer(T* p) {
  return const_cast<void*>(static_cast<const void*>(p));
}

}  // namespace detail::cudnn_sdpa

//! Softmax attention through cuDNN's fused SDPA graphs (cuDNN frontend), for device memory on the
//! current CUDA device: float16 and bfloat16, head dims a multiple of 8 up to 128, causal or not, GQA.
//! Copies share one graph cache (and one cuDNN handle per device).
struct cudnn_attention {
  //! Opts into seqpar::attention_policy.
  using policy_concept = attention_policy_tag;

  //! Device memory.
  memory_space memory() const { return memory_space::device; }
  //! float16 and bfloat16 with head_dim a positive multiple of 8 up to 128 (cuDNN's SDPA forward and
  //! backward limits on sm_80 to sm_100; float32 is not supported).
  bool supports(dtype t, std::int64_t head_dim) const {
    return (t == dtype::float16 || t == dtype::bfloat16) && head_dim > 0 && head_dim <= 128 && head_dim % 8 == 0;
  }
  //! Causal masking is supported.
  bool supports_causal() const { return true; }

  //! Number of cuDNN graphs this policy (and its copies) has built.
  std::size_t cached_graphs() const { return cache_->size(); }

  //! o and lse (cuDNN's fp32 softmax stats) from q, k, v.
  template <class T>
  void forward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, gqa_map map,
               attention_options opt, tensor_view<T> o, lse_view lse, stream_t stream = nullptr) const {
    check_documents(opt);
    check<T>(q, k, v, o);
    detail::check_lse_extents(lse, q);
    check_rows("o", o);
    if (q.size() == 0) return;
    opt = opt.resolved(q.head_dim());
    namespace cs = detail::cudnn_sdpa;
    const cs::head_plan plan = cs::plan_heads(q.heads(), k.heads(), map);
    for (const cs::segment& s : plan.segments) {
      const auto sq = cs::heads(q, s.q_first, s.q_count);
      const auto so = cs::heads(o, s.q_first, s.q_count);
      const auto sk = cs::heads(k, s.kv_first, s.kv_count);
      const auto sv = cs::heads(v, s.kv_first, s.kv_count);
      float* stats = lse.data_handle() + s.q_first * q.seq();
      cs::graph_desc d = call_desc<T>(false, opt, plan, s, q.heads());
      d.q = cs::describe(sq), d.k = cs::describe(sk), d.v = cs::describe(sv), d.o = cs::describe(so);
      d.stats = cs::describe_stats(stats, q.batch(), q.heads(), s.q_count, q.seq());
      std::unordered_map<std::int64_t, void*> pack{{cs::uid_q, cs::pointer(sq.data())},
                                                   {cs::uid_k, cs::pointer(sk.data())},
                                                   {cs::uid_v, cs::pointer(sv.data())},
                                                   {cs::uid_o, cs::pointer(so.data())},
                                                   {cs::uid_stats, stats}};
      cs::run(*cache_, d, pack, stream);
    }
  }

  //! dq, dk, dv from dO and the forward's o and lse; dk and dv sum over the query heads that read
  //! each kv head.
  template <class T>
  void backward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, tensor_view<const T> o,
                const_lse_view lse, tensor_view<const T> dout, gqa_map map, attention_options opt, tensor_view<T> dq,
                tensor_view<T> dk, tensor_view<T> dv, stream_t stream = nullptr) const {
    check_documents(opt);
    check<T>(q, k, v, o);
    detail::check_lse_extents(lse, q);
    detail::check_gradient_extents(q, k, dout, dq, dk, dv);
    check_rows("dout", dout);
    check_rows("dq", dq);
    check_rows("dk", dk);
    check_rows("dv", dv);
    namespace cs = detail::cudnn_sdpa;
    if (k.size() == 0) return;
    if (q.size() == 0) {  // no query head reads any kv head
      for (std::int64_t j = 0; j < k.heads(); ++j) {
        cs::zero_head(dk, j, stream);
        cs::zero_head(dv, j, stream);
      }
      return;
    }
    opt = opt.resolved(q.head_dim());
    const cs::head_plan plan = cs::plan_heads(q.heads(), k.heads(), map);
    for (std::int64_t j : plan.unread) {
      cs::zero_head(dk, j, stream);
      cs::zero_head(dv, j, stream);
    }
    for (const cs::segment& s : plan.segments) {
      const auto sq = cs::heads(q, s.q_first, s.q_count);
      const auto so = cs::heads(o, s.q_first, s.q_count);
      const auto sdo = cs::heads(dout, s.q_first, s.q_count);
      const auto sdq = cs::heads(dq, s.q_first, s.q_count);
      const auto sk = cs::heads(k, s.kv_first, s.kv_count);
      const auto sv = cs::heads(v, s.kv_first, s.kv_count);
      const auto sdk = cs::heads(dk, s.kv_first, s.kv_count);
      const auto sdv = cs::heads(dv, s.kv_first, s.kv_count);
      const float* stats = lse.data_handle() + s.q_first * q.seq();
      cs::graph_desc d = call_desc<T>(true, opt, plan, s, q.heads());
      d.q = cs::describe(sq), d.k = cs::describe(sk), d.v = cs::describe(sv), d.o = cs::describe(so);
      d.stats = cs::describe_stats(stats, q.batch(), q.heads(), s.q_count, q.seq());
      d.dout = cs::describe(sdo), d.dq = cs::describe(sdq), d.dk = cs::describe(sdk), d.dv = cs::describe(sdv);
      std::unordered_map<std::int64_t, void*> pack{
          {cs::uid_q, cs::pointer(sq.data())},     {cs::uid_k, cs::pointer(sk.data())},
          {cs::uid_v, cs::pointer(sv.data())},     {cs::uid_o, cs::pointer(so.data())},
          {cs::uid_stats, cs::pointer(stats)},     {cs::uid_dout, cs::pointer(sdo.data())},
          {cs::uid_dq, cs::pointer(sdq.data())},   {cs::uid_dk, cs::pointer(sdk.data())},
          {cs::uid_dv, cs::pointer(sdv.data())}};
      cs::run(*cache_, d, pack, stream);
    }
  }

 private:
  std::shared_ptr<detail::cudnn_sdpa::cache> cache_ = std::make_shared<detail::cudnn_sdpa::cache>();

  // The graph description of one call, its tensors left to the caller.
  template <class T>
  static detail::cudnn_sdpa::graph_desc call_desc(bool backward, const attention_options& opt,
                                                 const detail::cudnn_sdpa::head_plan& plan,
                                                 const detail::cudnn_sdpa::segment& s, std::int64_t H) {
    detail::cudnn_sdpa::graph_desc d;
    d.backward = backward;
    d.io = detail::cudnn_sdpa::data_type<T>();
    d.type = dtype_of<T>;
    d.causal = opt.causal;
    d.scale = opt.scale;
    d.options_key = detail::options_key(opt);
    if (plan.segments.size() > 1 || s.q_count != H) {
      std::ostringstream os;
      os << " (query heads " << s.q_first << ".." << s.q_first + s.q_count - 1 << " of " << H << ", kv heads "
         << s.kv_first << ".." << s.kv_first + s.kv_count - 1 << ")";
      d.heads = os.str();
    }
    return d;
  }

  static void check_documents(const attention_options& opt) {
    if (opt.documents.split())
      SEQPAR_FAIL(errc::unsupported,
                  "options.documents: cudnn_attention does not take packed documents yet; use flash_attention");
  }

  // cuDNN reads and writes each head's D elements contiguously.
  template <class T>
  static void check_rows(const char* name, const tensor_view<T>& view) {
    SEQPAR_EXPECTS(view.stride(axis::head_dim) == 1 || view.size() == 0,
                   name << ": stride of axis head_dim is " << view.stride(axis::head_dim)
                        << "; expected 1 (cudnn_attention reads each head's elements contiguously)");
  }

  // Checks what the policy needs of the views, so that a direct call fails as clearly as a layer.
  template <class T, class O>
  void check(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
             const tensor_view<O>& o) const {
    SEQPAR_EXPECTS(supports(dtype_of<T>, q.head_dim()),
                   "cudnn_attention: element type " << to_string(dtype_of<T>) << " with head_dim " << q.head_dim()
                                                    << "; expected float16 or bfloat16 with head_dim a multiple of 8 "
                                                       "up to 128");
    detail::check_attention_extents(q, k, v, o);
    check_rows("q", q);
    check_rows("k", k);
    check_rows("v", v);
  }
};

static_assert(attention_policy<cudnn_attention>);

SEQPAR_NAMESPACE_END
