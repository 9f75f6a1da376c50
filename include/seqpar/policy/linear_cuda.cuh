//! @file linear_cuda.cuh
//! linear_cuda: the CUDA linear-attention policy (nvcc only). A chunk is processed in sub-blocks
//! with a running fp32 D x E state, so work grows linearly with the chunk length. fp16 and bf16
//! with D up to 128 run on tensor cores (sm_80 and newer), the chunk cut into segments that run in
//! parallel (linear_tensor_core.cuh); float, larger D and older GPUs on CUDA cores
//! (linear_cuda_core.cuh).
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/detail/vector_copy.cuh>
#include <seqpar/lasp/linear_attention_policy.hpp>
#include <seqpar/policy/detail/linear_cuda_core.cuh>
#include <seqpar/policy/detail/linear_operations.hpp>
#include <seqpar/policy/detail/linear_tensor_core.cuh>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! The CUDA linear-attention policy: any element type, D and E up to 256, up to 256 heads and
//! batch * heads up to 65535; device memory, every operation on the stream it is given (the
//! tensor-core path allocates its segment states there, stream-ordered).
struct linear_cuda : detail::linear_operations<linear_cuda> {
  //! Opts into seqpar::linear_attention_policy.
  using policy_concept = linear_attention_policy_tag;

  //! Device memory.
  memory_space memory() const { return memory_space::device; }
  //! D and E up to 256.
  bool supports(dtype, std::int64_t D, std::int64_t E) const {
    return D >= 1 && E >= 1 && D <= linear_kernels::max_dim && E <= linear_kernels::max_dim;
  }

  //! out = lambda^n in + m
  void state_update(std::span<const float> decay, std::int64_t n, const_state_view in, const_state_view m,
                    state_view out, stream_t stream = nullptr) const {
    if (out.size() == 0) return;
    const auto table = make_table(decay);
    const unsigned blocks = static_cast<unsigned>(std::min<std::int64_t>((out.size() + 255) / 256, 4096));
    linear_kernels::state_update_kernel<<<blocks, 256, 0, stream>>>(table, n, in, m, out);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }

 private:
  friend detail::linear_operations<linear_cuda>;

  //! fp32 workspace allocated and freed in stream order.
  struct stream_buffer {
    float* data = nullptr;
    stream_t stream;
    stream_buffer(std::int64_t floats, stream_t s) : stream(s) {
      if (floats > 0)
        SEQPAR_CUDA_TRY(cudaMallocAsync(reinterpret_cast<void**>(&data), sizeof(float) * floats, stream));
    }
    stream_buffer(const stream_buffer&) = delete;
    stream_buffer& operator=(const stream_buffer&) = delete;
    ~stream_buffer() {
      if (data) (void)cudaFreeAsync(data, stream);
    }
  };

  static linear_kernels::decay_table make_table(std::span<const float> decay) {
    if (decay.size() > static_cast<std::size_t>(linear_kernels::max_heads))
      SEQPAR_FAIL(errc::unsupported, "decay: linear_cuda takes up to " << linear_kernels::max_heads << " heads, got "
                                                                       << decay.size());
    linear_kernels::decay_table t{};
    for (std::size_t h = 0; h < decay.size(); ++h) t.lambda[h] = decay[h];
    return t;
  }

  //! batch * heads, one grid z index each: at most 65535.
  template <class T>
  static unsigned batch_heads(const tensor_view<T>& x) {
    const std::int64_t bh = x.batch() * x.heads();
    if (bh > 65535)
      SEQPAR_FAIL(errc::unsupported, "batch * heads: linear_cuda takes up to 65535, got " << x.batch() << " * "
                                                                                          << x.heads());
    return static_cast<unsigned>(bh);
  }

  template <class Kernel>
  static void allow_shared(Kernel kernel, std::size_t bytes) {
    if (bytes > 48 * 1024)
      SEQPAR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }

  static unsigned y_tiles(std::int64_t Y) {
    return static_cast<unsigned>((Y + linear_kernels::tc_y_tile - 1) / linear_kernels::tc_y_tile);
  }

  template <class T>
  static bool vectorizable(std::initializer_list<tensor_view<const T>> views) {
    return std::all_of(views.begin(), views.end(), [](const auto& x) { return device::rows_are_vectorizable(x); });
  }

  //! One chunk_scan launch (see linear_tensor_core.cuh) for padded D = Xp.
  template <class T>
  static void launch_chunk_scan(dim3 grid, tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v,
                                tensor_view<T> out, float* states, std::int64_t segment_length,
                                const linear_kernels::decay_table& table, bool reverse, bool states_only, bool vec,
                                stream_t stream) {
    const int Xp = linear_kernels::tc_padded(b.head_dim());
    const std::size_t bytes = linear_kernels::chunk_scan_shared_bytes<T>(Xp);
    auto run = [&](auto kernel) {
      allow_shared(kernel, bytes);
      kernel<<<grid, 128, bytes, stream>>>(a, b, v, out, states, segment_length, table, reverse, states_only, vec);
    };
    if (linear_kernels::tc_state_tiles(Xp) == 1) run(linear_kernels::chunk_scan<T, 1>);
    else run(linear_kernels::chunk_scan<T, 2>);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }

  //! The segment states of chunk_scan(states_only) into prefixes; `total` (may be null) the whole sum.
  static void scan_states(float* states, const linear_kernels::segment_plan& plan, std::int64_t C, unsigned BH, int H,
                          std::int64_t per_head, const linear_kernels::decay_table& table, float* total,
                          bool times_lambda, stream_t stream) {
    const std::int64_t n = std::int64_t{BH} * per_head;
    linear_kernels::scan_segment_states<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
        states, plan.count, plan.length, C, BH, H, per_head, table, total, times_lambda);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }

  //! Runs on_tensor_cores(sms) for fp16 and bf16 when a product contracting over `contracted`
  //! columns fits the tensor-core kernels on this device, else on_cuda_cores().
  template <class T, class TensorCores, class CudaCores>
  static void dispatch(std::int64_t contracted, TensorCores on_tensor_cores, CudaCores on_cuda_cores) {
    if constexpr (mma::input<T>) {
      int dev = 0, sms = 0, major = 0;
      SEQPAR_CUDA_TRY(cudaGetDevice(&dev));
      SEQPAR_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
      SEQPAR_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
      if (contracted <= linear_kernels::tc_max_x && major >= 8) return on_tensor_cores(sms);
    }
    on_cuda_cores();
  }

  //! out_i = sum_{j <= i} w (a_i . b_j) v_j (j >= i with `reverse`).
  template <class T>
  static void product(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v, tensor_view<T> out,
                      std::span<const float> decay, bool reverse, stream_t stream) {
    if (out.size() == 0) return;
    const auto table = make_table(decay);
    const unsigned BH = batch_heads(a);
    dispatch<T>(a.head_dim(), [&](auto sms) {
      const unsigned tiles = y_tiles(out.head_dim());
      const auto plan = linear_kernels::plan_segments(a.seq(), std::int64_t{tiles} * BH, sms);
      const std::int64_t per_head = a.head_dim() * v.head_dim();
      const stream_buffer states(plan.count > 1 ? plan.count * BH * per_head : 0, stream);
      const bool vec = vectorizable<T>({a, b, v});
      const dim3 grid(tiles, static_cast<unsigned>(plan.count), BH);
      if (plan.count > 1) {
        launch_chunk_scan<T>(grid, a, b, v, out, states.data, plan.length, table, reverse, true, vec, stream);
        scan_states(states.data, plan, a.seq(), BH, static_cast<int>(a.heads()), per_head, table, nullptr, false, stream);
      }
      launch_chunk_scan<T>(grid, a, b, v, out, states.data, plan.length, table, reverse, false, vec, stream);
    }, [&] { core_product(a, b, v, out, table, reverse, stream); });
  }

  //! m[x][y] = sum_i w(i) a_i[x] b_i[y]
  template <class T>
  static void outer_sum(tensor_view<const T> a, tensor_view<const T> b, state_view m, std::span<const float> decay,
                        detail::linear_weight w, stream_t stream) {
    if (m.size() == 0) return;
    const auto table = make_table(decay);
    const unsigned BH = batch_heads(a);
    dispatch<T>(a.head_dim(), [&](auto sms) {
      // lk: a running state in time order is sum lambda^(C-1-i) a_i b_i^T; lq: in reverse order it
      // is sum lambda^i a_i b_i^T, times lambda.
      const bool lq = w == detail::linear_weight::lq;
      const unsigned tiles = y_tiles(b.head_dim());
      const auto plan = linear_kernels::plan_segments(a.seq(), std::int64_t{tiles} * BH, sms);
      const std::int64_t per_head = a.head_dim() * b.head_dim();
      const stream_buffer states(plan.count * BH * per_head, stream);
      const dim3 grid(tiles, static_cast<unsigned>(plan.count), BH);
      launch_chunk_scan<T>(grid, a, a, b, tensor_view<T>{}, states.data, plan.length, table, lq, true,
                           vectorizable<T>({a, b}), stream);
      scan_states(states.data, plan, a.seq(), BH, static_cast<int>(a.heads()), per_head, table, m.data_handle(), lq,
                  stream);
    }, [&] { core_outer_sum(a, b, m, table, w, stream); });
  }

  //! out_i += w(i) a_i S (S transposed with `transposed`)
  template <class T>
  static void add_rows(tensor_view<const T> a, const_state_view s, bool transposed, tensor_view<T> out,
                       std::span<const float> decay, detail::linear_weight w, stream_t stream) {
    if (out.size() == 0) return;
    const auto table = make_table(decay);
    const unsigned BH = batch_heads(a);
    dispatch<T>(a.head_dim(), [&](auto sms) {
      const unsigned tiles = y_tiles(out.head_dim());
      const std::int64_t token_tiles = (a.seq() + linear_kernels::tc_tokens - 1) / linear_kernels::tc_tokens;
      const std::int64_t fill = (4 * std::int64_t{sms} + std::int64_t{tiles} * BH - 1) / (std::int64_t{tiles} * BH);
      const dim3 grid(static_cast<unsigned>(std::clamp<std::int64_t>(std::min(token_tiles, fill), 1, 1 << 30)), tiles, BH);
      const std::size_t bytes = linear_kernels::rows_times_state_shared_bytes<T>(linear_kernels::tc_padded(a.head_dim()));
      allow_shared(linear_kernels::rows_times_state<T>, bytes);
      linear_kernels::rows_times_state<T><<<grid, 128, bytes, stream>>>(a, s, transposed, out, table, w,
                                                                        vectorizable<T>({a, tensor_view<const T>(out)}));
      SEQPAR_CUDA_TRY(cudaGetLastError());
    }, [&] { core_add_rows(a, s, transposed, out, table, w, stream); });
  }

  // The CUDA-core kernels (linear_cuda_core.cuh).
  template <class Kernel, class... Args>
  static void launch(Kernel kernel, const linear_kernels::launch_shape& shape, stream_t stream, Args... args) {
    allow_shared(kernel, shape.shared_bytes);
    kernel<<<shape.grid, shape.threads, shape.shared_bytes, stream>>>(args...);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }
  template <class T>
  static void core_product(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v, tensor_view<T> out,
                           const linear_kernels::decay_table& table, bool reverse, stream_t stream) {
    launch(linear_kernels::causal_decay_product<T>, linear_kernels::causal_decay_product_shape(a, out.head_dim()),
           stream, a, b, v, out, table, reverse);
  }
  template <class T>
  static void core_outer_sum(tensor_view<const T> a, tensor_view<const T> b, state_view m,
                             const linear_kernels::decay_table& table, detail::linear_weight w, stream_t stream) {
    launch(linear_kernels::weighted_outer_sum<T>, linear_kernels::weighted_outer_sum_shape(a, b.head_dim()), stream,
           a, b, m, table, w);
  }
  template <class T>
  static void core_add_rows(tensor_view<const T> a, const_state_view s, bool transposed, tensor_view<T> out,
                            const linear_kernels::decay_table& table, detail::linear_weight w, stream_t stream) {
    launch(linear_kernels::add_rows_times_state<T>, linear_kernels::add_rows_times_state_shape(a, out.head_dim()),
           stream, a, s, transposed, out, table, w);
  }
};

static_assert(linear_attention_policy<linear_cuda>);

SEQPAR_KERNEL_NAMESPACE_END
