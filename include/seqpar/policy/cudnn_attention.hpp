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
//! - Packed documents (attention_options::documents): each (batch row, document) is one cuDNN batch
//!   entry, placed by int64 ragged offsets on every tensor, with the padding mask and per-entry
//!   lengths (causal within each entry); the stats go through cuDNN's token-major ragged layout in
//!   scratch. The policy reads the boundaries on the host (documents.cu_seqlens, which the layers
//!   fill) and refuses ids alone. Entry counts and lengths are bucketed to powers of two (empty
//!   entries have length 0) so that graphs stay cached. cuDNN runs ragged backward on sm_90 and
//!   newer (Ampere's refuses ragged stats).
//! - Block pairs for ring attention: cudnn_block_attention (cudnn_block_attention.cuh, nvcc).
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
#include <seqpar/policy/detail/cudnn_ragged.hpp>
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
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

static_assert(CUDNN_MAJOR >= 9, "seqpar/policy/cudnn_attention.hpp needs cuDNN 9 or newer");

SEQPAR_NAMESPACE_BEGIN

namespace detail::cudnn_sdpa {

namespace fe = cudnn_frontend;

//! The uids of the graphs' tensors (the variant pack's keys): the data, then (with documents) the
//! entries' lengths and each data tensor's ragged offsets (its uid + offset_uid).
enum uid : std::int64_t {
  uid_q = 1, uid_k, uid_v, uid_o, uid_stats, uid_dout, uid_dq, uid_dk, uid_dv,
  uid_seq_q, uid_seq_kv, offset_uid = 100
};

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

//! The batch stride of a ragged tensor: its offsets place each entry, and cuDNN wants the batch
//! axis to look the outermost.
inline constexpr std::int64_t ragged_batch_stride = INT32_MAX;

//! A [B, S, H, D] view as cuDNN's (B, H, S, D) tensor, its strides mapped along; with documents,
//! as `entries` entries of up to `rows` rows each, placed by ragged offsets.
template <class T>
tensor_desc describe(const tensor_view<T>& v, std::int64_t entries = 0, std::int64_t rows = 0) {
  if (entries > 0)
    return {{entries, v.heads(), rows, v.head_dim()},
            {ragged_batch_stride, v.stride(axis::heads), v.stride(axis::seq), v.stride(axis::head_dim)},
            alignment_of(v.data())};
  return {{v.batch(), v.heads(), v.seq(), v.head_dim()},
          {v.stride(axis::batch), v.stride(axis::heads), v.stride(axis::seq), v.stride(axis::head_dim)},
          alignment_of(v.data())};
}

//! The softmax stats of query heads [first, first + n) of an fp32 [B, H, S] row-major lse: dims
//! (B, n, S, 1), strides (H * S, S, 1, 1). With documents, cuDNN's token-major layout instead (what
//! its ragged stats take): a [B * S, H] scratch, `entries` entries of up to `rows` rows each.
inline tensor_desc describe_stats(const float* lse_heads, std::int64_t B, std::int64_t H, std::int64_t n,
                                  std::int64_t S, std::int64_t entries = 0, std::int64_t rows = 0) {
  if (entries > 0) return {{entries, n, rows, 1}, {ragged_batch_stride, 1, H, 1}, alignment_of(lse_heads)};
  return {{B, n, S, 1}, {H * S, S, 1, 1}, alignment_of(lse_heads)};
}

//! Copies the stats of query rows `ranges` between cuDNN's token-major scratch [B, S, H] and an lse
//! [B, H, S] (to_lse: scratch to lse), one strided 2-D copy per batch row, head and range.
inline void move_stats(float* lse, float* scratch, std::int64_t B, std::int64_t H, std::int64_t S,
                       const std::vector<std::pair<std::int64_t, std::int64_t>>& ranges, bool to_lse,
                       stream_t stream) {
  constexpr std::size_t f = sizeof(float);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (const auto& [first, end] : ranges) {
        float* l = lse + (b * H + h) * S + first;
        float* t = scratch + (b * S + first) * H + h;
        const auto rows = static_cast<std::size_t>(end - first), pitch = static_cast<std::size_t>(H) * f;
        if (to_lse) SEQPAR_CUDA_TRY(cudaMemcpy2DAsync(l, f, t, pitch, f, rows, cudaMemcpyDeviceToDevice, stream));
        else SEQPAR_CUDA_TRY(cudaMemcpy2DAsync(t, pitch, l, f, f, rows, cudaMemcpyDeviceToDevice, stream));
      }
}

//! Everything one cached graph depends on.
struct graph_desc {
  bool backward = false;                       //!< sdpa_backward rather than sdpa
  fe::DataType_t io = fe::DataType_t::HALF;    //!< element type of Q, K, V, O and the gradients
  dtype type = dtype::float16;                 //!< the same, as seqpar names it
  bool causal = false;                         //!< top-left causal mask
  std::int64_t bound = 0;                      //!< its right bound: key j allowed when j <= i + bound
  float scale = 1.0f;                          //!< softmax scale (resolved)
  std::int64_t options_key = 0;                //!< scale bits and causal flag (detail::options_key)
  bool ragged = false;                         //!< documents: entries placed by ragged offsets
  std::int64_t total_q = 0, total_kv = 0;      //!< with documents: at most this many query, key rows
  tensor_desc q, k, v, o, stats;               //!< forward's tensors (backward reads them all)
  tensor_desc dout, dq, dk, dv;                //!< backward's other tensors
  std::string heads;                           //!< which heads of the caller's views, for messages

  //! The cache key: the direction, dtype, mask, scale, layout, every dim, stride and alignment.
  std::vector<std::int64_t> key(int device) const {
    std::vector<std::int64_t> key{device,   backward ? 1 : 0, static_cast<std::int64_t>(type), options_key, bound,
                                  ragged ? 1 : 0, total_q, total_kv};
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
    os << "{" << (ragged ? "entries=" : "B=") << q.dim[0] << ", H=" << q.dim[1] << ", H_kv=" << k.dim[1]
       << ", S=" << q.dim[2] << ", S_kv=" << k.dim[2] << ", D=" << q.dim[3] << ", " << to_string(type)
       << (causal ? ", causal, right bound " + std::to_string(bound) : "") << ", scale=" << scale << "}" << heads;
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
    // With documents: every entry's lengths (int32) and each tensor's ragged offsets (int64).
    auto integers = [&](const char* name, std::int64_t id, std::int64_t n, fe::DataType_t type) {
      return g->tensor(
          gr::Tensor_attributes().set_name(name).set_uid(id).set_dim({n, 1, 1, 1}).set_stride({1, 1, 1, 1}).set_data_type(
              type));
    };
    auto place = [&](gr::Tensor_attributes& t, uid id) {
      if (d.ragged) t.set_ragged_offset(integers("ragged_offset", offset_uid + id, d.q.dim[0] + 1, fe::DataType_t::INT64));
    };
    auto input = [&](const char* name, uid id, const tensor_desc& t, fe::DataType_t type) {
      auto in = g->tensor(gr::Tensor_attributes()
                              .set_name(name)
                              .set_uid(id)
                              .set_dim(t.dim)
                              .set_stride(t.stride)
                              .set_data_type(type)
                              .set_alignment(t.alignment));
      place(*in, id);
      return in;
    };
    auto output = [&](const std::shared_ptr<gr::Tensor_attributes>& out, uid id, const tensor_desc& t,
                      fe::DataType_t type) {
      out->set_output(true).set_uid(id).set_dim(t.dim).set_stride(t.stride).set_data_type(type).set_alignment(
          t.alignment);
      place(*out, id);
    };
    // Both attribute types share these setters.
    auto mask = [&](auto& attributes) {
      if (d.causal)
        attributes.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
            .set_diagonal_band_right_bound(static_cast<int>(d.bound));
      if (d.ragged)
        attributes.set_padding_mask(true)
            .set_seq_len_q(integers("seq_len_q", uid_seq_q, d.q.dim[0], fe::DataType_t::INT32))
            .set_seq_len_kv(integers("seq_len_kv", uid_seq_kv, d.q.dim[0], fe::DataType_t::INT32));
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
      mask(attributes);
      auto [o, stats] = g->sdpa(q, k, v, std::move(attributes));
      output(o, uid_o, d.o, d.io);
      output(stats, uid_stats, d.stats, fe::DataType_t::FLOAT);
    } else {
      auto o = input("O", uid_o, d.o, d.io);
      auto dout = input("dO", uid_dout, d.dout, d.io);
      auto stats = input("Stats", uid_stats, d.stats, fe::DataType_t::FLOAT);
      auto attributes = gr::SDPA_backward_attributes().set_name("seqpar_sdpa_backward").set_attn_scale(d.scale);
      mask(attributes);
      // Sizes the backward's workspace by the rows that exist rather than entries x longest entry.
      if (d.ragged) attributes.set_max_total_seq_len_q(d.total_q).set_max_total_seq_len_kv(d.total_kv);
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

//! A ragged tensor of one call: its uid, whether its rows are key rows, and the strides of its batch
//! and row axes (elements), from which its entries' offsets follow.
struct ragged_tensor {
  uid id;                    //!< the data tensor
  bool kv;                   //!< key rows (K, V, dK, dV) rather than query rows
  std::int64_t batch_stride; //!< elements between batch rows
  std::int64_t row_stride;   //!< elements between rows
};

//! Uploads the entries' lengths and every tensor's ragged offsets in one stream-ordered buffer and
//! points `pack` at them; the buffer must live until the graph ran (it is freed in stream order).
inline owned_bytes<default_memory_resource> upload_ragged(const ragged_entries& r,
                                                          const std::vector<ragged_tensor>& tensors,
                                                          std::unordered_map<std::int64_t, void*>& pack,
                                                          stream_t stream) {
  // Every array starts 16 bytes in: two int64 words.
  const auto words = [](std::size_t bytes) { return (bytes + 15) / 16 * 2; };
  const auto n = static_cast<std::size_t>(r.entries());
  const std::size_t offset_words = words((n + 1) * 8), length_words = words(n * 4);
  std::vector<std::int64_t> host(tensors.size() * offset_words + 2 * length_words, 0);
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const auto o = r.offsets(tensors[t].kv, tensors[t].batch_stride, tensors[t].row_stride);
    std::copy(o.begin(), o.end(), host.begin() + static_cast<std::ptrdiff_t>(t * offset_words));
  }
  const std::size_t lengths_at = tensors.size() * offset_words;
  for (bool kv : {false, true}) {
    const auto l = r.lengths(kv);
    std::memcpy(host.data() + lengths_at + (kv ? length_words : 0), l.data(), l.size() * sizeof(std::int32_t));
  }
  owned_bytes<default_memory_resource> device(host.size() * sizeof(std::int64_t), memory_space::device,
                                              default_memory_resource{}, stream);
  auto* words_at = reinterpret_cast<std::int64_t*>(device.span().data());
  // From pageable memory: the call returns once `host` is staged, so it may go out of scope.
  SEQPAR_CUDA_TRY(cudaMemcpyAsync(words_at, host.data(), host.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice,
                                  stream));
  for (std::size_t t = 0; t < tensors.size(); ++t) pack[offset_uid + tensors[t].id] = words_at + t * offset_words;
  pack[uid_seq_q] = words_at + lengths_at;
  pack[uid_seq_kv] = words_at + lengths_at + length_words;
  return device;
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
//! current CUDA device: float16 and bfloat16, head dims a multiple of 8 up to 128, causal or not, GQA,
//! packed documents. Copies share one graph cache (and one cuDNN handle per device).
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
  //! Packed documents are served (options.documents masks across them).
  bool supports_documents() const { return true; }

  //! Number of cuDNN graphs this policy (and its copies) has built.
  std::size_t cached_graphs() const { return cache_->size(); }

  //! o and lse (cuDNN's fp32 softmax stats) from q, k, v.
  template <class T>
  void forward(const policy_forward_args<T>& a, stream_ref stream) const {
    check<T>(a.q, a.k, a.v, a.o);
    detail::check_lse_extents(a.lse, a.q);
    check_rows("o", a.o);
    if (a.q.size() == 0) return;
    sdpa_forward(a.q, a.k, a.v, a.map, a.options.resolved(a.q.head_dim()), placement{}, a.o, a.lse.data_handle(),
                 stream);
  }

  //! dq, dk, dv from dO and the forward's o and lse; dk and dv sum over the query heads that read
  //! each kv head.
  template <class T>
  void backward(const policy_backward_args<T>& a, stream_ref stream) const {
    check<T>(a.q, a.k, a.v, a.o);
    detail::check_lse_extents(a.lse, a.q);
    detail::check_gradient_extents(a.q, a.k, a.dout, a.dq, a.dk, a.dv);
    check_rows("dout", a.dout);
    check_rows("dq", a.dq);
    check_rows("dk", a.dk);
    check_rows("dv", a.dv);
    if (a.k.size() == 0) return;
    sdpa_backward(a.q, a.k, a.v, a.o, a.lse.data_handle(), a.dout, a.map, a.options.resolved(a.q.head_dim()),
                  placement{}, a.dq, a.dk, a.dv, stream);
  }

 protected:
  //! Where a call's rows sit in the global sequence: query row i at q_first + i, key row j at
  //! kv_first + j; the causal mask (when asked) applies when `masked`.
  struct placement {
    std::int64_t q_first = 0;   //!< global position of the first query row
    std::int64_t kv_first = 0;  //!< global position of the first key row
    bool masked = true;         //!< whether keys may follow queries in this call
  };

  //! o and the fp32 stats (lse: [B, H, S_q] row-major) of q against k, v placed at `at`, `opt`
  //! resolved. With documents only the rows of documents that reach a key row are written.
  template <class T>
  void sdpa_forward(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                    gqa_map map, const attention_options& opt, placement at, const tensor_view<T>& o, float* lse,
                    stream_t stream) const {
    namespace cs = detail::cudnn_sdpa;
    const call c = plan_call(q, k, map, opt, at);
    if (c.empty()) return;
    std::unordered_map<std::int64_t, void*> ragged_pack;
    owned_bytes<default_memory_resource> stats_scratch, ragged;
    float* stats_base = lse;
    if (c.docs) {
      stats_scratch = scratch_stats(q, stream);
      stats_base = reinterpret_cast<float*>(stats_scratch.span().data());
      ragged = cs::upload_ragged(*c.docs, forward_tensors(q, k, v, o), ragged_pack, stream);
    }
    for (const cs::segment& s : c.heads.segments) {
      const auto sq = cs::heads(q, s.q_first, s.q_count);
      const auto so = cs::heads(o, s.q_first, s.q_count);
      const auto sk = cs::heads(k, s.kv_first, s.kv_count);
      const auto sv = cs::heads(v, s.kv_first, s.kv_count);
      float* stats = stats_base + s.q_first * (c.docs ? 1 : q.seq());
      cs::graph_desc d = call_desc<T>(false, opt, c, s, q.heads());
      d.q = cs::describe(sq, c.entries(), c.max_q()), d.o = cs::describe(so, c.entries(), c.max_q());
      d.k = cs::describe(sk, c.entries(), c.max_kv()), d.v = cs::describe(sv, c.entries(), c.max_kv());
      d.stats = cs::describe_stats(stats, q.batch(), q.heads(), s.q_count, q.seq(), c.entries(), c.max_q());
      auto pack = ragged_pack;
      pack.insert({{cs::uid_q, cs::pointer(sq.data())},
                   {cs::uid_k, cs::pointer(sk.data())},
                   {cs::uid_v, cs::pointer(sv.data())},
                   {cs::uid_o, cs::pointer(so.data())},
                   {cs::uid_stats, stats}});
      cs::run(*cache_, d, pack, stream);
    }
    if (c.docs)
      cs::move_stats(lse, stats_base, q.batch(), q.heads(), q.seq(), cs::covered_rows(c.docs->spans), true, stream);
  }

  //! dq, dk, dv (written, not added to) of q against k, v placed at `at` from dO, o and the fp32
  //! stats lse ([B, H, S_q] row-major), `opt` resolved. With documents only the rows of documents that
  //! both blocks reach are written.
  template <class T>
  void sdpa_backward(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                     const tensor_view<const T>& o, const float* lse, const tensor_view<const T>& dout, gqa_map map,
                     const attention_options& opt, placement at, const tensor_view<T>& dq, const tensor_view<T>& dk,
                     const tensor_view<T>& dv, stream_t stream) const {
    namespace cs = detail::cudnn_sdpa;
    const call c = plan_call(q, k, map, opt, at);
    for (std::int64_t j : c.heads.unread) {
      cs::zero_head(dk, j, stream);
      cs::zero_head(dv, j, stream);
    }
    if (c.empty() || q.size() == 0) return;
    std::unordered_map<std::int64_t, void*> ragged_pack;
    owned_bytes<default_memory_resource> stats_scratch, ragged;
    const float* stats_base = lse;
    if (c.docs) {
      stats_scratch = scratch_stats(q, stream);
      auto* scratch = reinterpret_cast<float*>(stats_scratch.span().data());
      // Only reads lse.
      cs::move_stats(const_cast<float*>(lse), scratch, q.batch(), q.heads(), q.seq(), cs::covered_rows(c.docs->spans),
                     false, stream);
      stats_base = scratch;
      auto tensors = forward_tensors(q, k, v, o);
      tensors.insert(tensors.end(), {{cs::uid_dout, false, dout.stride(axis::batch), dout.stride(axis::seq)},
                                     {cs::uid_dq, false, dq.stride(axis::batch), dq.stride(axis::seq)},
                                     {cs::uid_dk, true, dk.stride(axis::batch), dk.stride(axis::seq)},
                                     {cs::uid_dv, true, dv.stride(axis::batch), dv.stride(axis::seq)}});
      ragged = cs::upload_ragged(*c.docs, tensors, ragged_pack, stream);
    }
    for (const cs::segment& s : c.heads.segments) {
      const auto sq = cs::heads(q, s.q_first, s.q_count);
      const auto so = cs::heads(o, s.q_first, s.q_count);
      const auto sdo = cs::heads(dout, s.q_first, s.q_count);
      const auto sdq = cs::heads(dq, s.q_first, s.q_count);
      const auto sk = cs::heads(k, s.kv_first, s.kv_count);
      const auto sv = cs::heads(v, s.kv_first, s.kv_count);
      const auto sdk = cs::heads(dk, s.kv_first, s.kv_count);
      const auto sdv = cs::heads(dv, s.kv_first, s.kv_count);
      const float* stats = stats_base + s.q_first * (c.docs ? 1 : q.seq());
      const std::int64_t n = c.entries(), rq = c.max_q(), rk = c.max_kv();
      cs::graph_desc d = call_desc<T>(true, opt, c, s, q.heads());
      d.q = cs::describe(sq, n, rq), d.k = cs::describe(sk, n, rk), d.v = cs::describe(sv, n, rk);
      d.o = cs::describe(so, n, rq), d.dout = cs::describe(sdo, n, rq), d.dq = cs::describe(sdq, n, rq);
      d.dk = cs::describe(sdk, n, rk), d.dv = cs::describe(sdv, n, rk);
      d.stats = cs::describe_stats(stats, q.batch(), q.heads(), s.q_count, q.seq(), n, rq);
      auto pack = ragged_pack;
      pack.insert({{cs::uid_q, cs::pointer(sq.data())},   {cs::uid_k, cs::pointer(sk.data())},
                   {cs::uid_v, cs::pointer(sv.data())},   {cs::uid_o, cs::pointer(so.data())},
                   {cs::uid_stats, cs::pointer(stats)},   {cs::uid_dout, cs::pointer(sdo.data())},
                   {cs::uid_dq, cs::pointer(sdq.data())}, {cs::uid_dk, cs::pointer(sdk.data())},
                   {cs::uid_dv, cs::pointer(sdv.data())}});
      cs::run(*cache_, d, pack, stream);
    }
  }

  //! The checks of a block pair's views (block_attention_policy): its key block may hold any number
  //! of rows.
  template <class T>
  void check_block(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v) const {
    check_supported<T>(q.head_dim());
    detail::check_block_extents(q, k, v);
    check_rows("q", q);
    check_rows("k", k);
    check_rows("v", v);
  }

  //! Throws unless the view's head_dim stride is 1: cuDNN reads and writes each head's D elements
  //! contiguously.
  template <class T>
  static void check_rows(const char* name, const tensor_view<T>& view) {
    SEQPAR_EXPECTS(view.stride(axis::head_dim) == 1 || view.size() == 0,
                   name << ": stride of axis head_dim is " << view.stride(axis::head_dim)
                        << "; expected 1 (cudnn_attention reads each head's elements contiguously)");
  }

 private:
  std::shared_ptr<detail::cudnn_sdpa::cache> cache_ = std::make_shared<detail::cudnn_sdpa::cache>();

  template <class T>
  void check_supported(std::int64_t head_dim) const {
    SEQPAR_EXPECTS(supports(dtype_of<T>, head_dim),
                   "cudnn_attention: element type " << to_string(dtype_of<T>) << " with head_dim " << head_dim
                                                    << "; expected float16 or bfloat16 with head_dim a multiple of 8 "
                                                       "up to 128");
  }

  // What one call runs: its head segments, its documents' entries (if any) and its causal mask.
  struct call {
    detail::cudnn_sdpa::head_plan heads;
    std::optional<detail::cudnn_sdpa::ragged_entries> docs;
    bool causal = false;
    std::int64_t bound = 0;
    std::int64_t total_q = 0, total_kv = 0;  // with documents: rows rounded up to 64
    std::int64_t entries() const { return docs ? docs->entries() : 0; }
    std::int64_t max_q() const { return docs ? docs->max_q() : 0; }
    std::int64_t max_kv() const { return docs ? docs->max_kv() : 0; }
    bool empty() const { return docs && docs->spans.empty(); }
  };

  template <class T>
  static call plan_call(const tensor_view<const T>& q, const tensor_view<const T>& k, gqa_map map,
                        const attention_options& opt, placement at) {
    namespace cs = detail::cudnn_sdpa;
    call c;
    c.heads = cs::plan_heads(q.heads(), k.heads(), map);
    if (opt.documents.split()) {
      c.docs = cs::ragged_entries{cs::document_spans(opt.documents.cu_seqlens, opt.documents.count, at.q_first,
                                                     q.seq(), at.kv_first, k.seq()),
                                  q.batch(), q.seq(), k.seq()};
      c.total_q = (q.batch() * q.seq() + 63) / 64 * 64;
      c.total_kv = (k.batch() * k.seq() + 63) / 64 * 64;
    }
    c.causal = opt.causal && at.masked;
    if (c.causal) {
      c.bound = c.docs ? c.docs->causal_bound(at.q_first, at.kv_first) : at.q_first - at.kv_first;
      SEQPAR_EXPECTS(c.bound >= 0, "pair: query rows from position "
                                       << at.q_first << " and key rows from " << at.kv_first
                                       << " under the causal mask; cudnn_attention expects q_first >= kv_first "
                                          "(cuDNN's causal band takes no negative right bound)");
    }
    return c;
  }

  // The ragged tensors of a forward (the backward reads them too): Q, K, V, O and the token-major
  // stats.
  template <class T, class O>
  static std::vector<detail::cudnn_sdpa::ragged_tensor> forward_tensors(const tensor_view<const T>& q,
                                                                         const tensor_view<const T>& k,
                                                                         const tensor_view<const T>& v,
                                                                         const tensor_view<O>& o) {
    namespace cs = detail::cudnn_sdpa;
    return {{cs::uid_q, false, q.stride(axis::batch), q.stride(axis::seq)},
            {cs::uid_k, true, k.stride(axis::batch), k.stride(axis::seq)},
            {cs::uid_v, true, v.stride(axis::batch), v.stride(axis::seq)},
            {cs::uid_o, false, o.stride(axis::batch), o.stride(axis::seq)},
            {cs::uid_stats, false, q.seq() * q.heads(), q.heads()}};
  }

  // Stream-ordered fp32 scratch for the token-major stats of every query row of q.
  template <class T>
  static owned_bytes<default_memory_resource> scratch_stats(const tensor_view<const T>& q, stream_t stream) {
    return {static_cast<std::size_t>(q.batch() * q.seq() * q.heads()) * sizeof(float), memory_space::device,
            default_memory_resource{}, stream};
  }

  // The graph description of one call, its tensors left to the caller.
  template <class T>
  static detail::cudnn_sdpa::graph_desc call_desc(bool backward, const attention_options& opt, const call& c,
                                                 const detail::cudnn_sdpa::segment& s, std::int64_t H) {
    detail::cudnn_sdpa::graph_desc d;
    d.backward = backward;
    d.io = detail::cudnn_sdpa::data_type<T>();
    d.type = dtype_of<T>;
    d.causal = c.causal;
    d.bound = c.bound;
    d.scale = opt.scale;
    d.options_key = detail::options_key(opt);
    d.ragged = c.docs.has_value();
    d.total_q = c.total_q;
    d.total_kv = c.total_kv;
    if (c.heads.segments.size() > 1 || s.q_count != H) {
      std::ostringstream os;
      os << " (query heads " << s.q_first << ".." << s.q_first + s.q_count - 1 << " of " << H << ", kv heads "
         << s.kv_first << ".." << s.kv_first + s.kv_count - 1 << ")";
      d.heads = os.str();
    }
    return d;
  }

  // Checks what the policy needs of the views, so that a direct call fails as clearly as a layer.
  template <class T, class O>
  void check(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
             const tensor_view<O>& o) const {
    check_supported<T>(q.head_dim());
    detail::check_attention_extents(q, k, v, o);
    check_rows("q", q);
    check_rows("k", k);
    check_rows("v", v);
  }
};

static_assert(attention_policy<cudnn_attention>);

SEQPAR_NAMESPACE_END
