//! @file memory_resource.hpp
//! Where pipelines get the memory they own; users can pass their own resource (a caching allocator).
#pragma once

#include <seqpar/error.hpp>
#include <seqpar/memory_space.hpp>
#include <seqpar/cuda_check.hpp>

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <utility>

SEQPAR_NAMESPACE_BEGIN

//! A type that hands out and takes back bytes in host or device memory.
template <class R>
concept memory_resource = requires(const R& r, std::size_t bytes, void* p, memory_space where) {
  { r.allocate(bytes, where) } -> std::same_as<void*>;
  r.deallocate(p, bytes, where);
};

namespace detail {
//! A resource that can also allocate and free in stream order (what per-call scratch uses).
template <class R>
concept stream_ordered_resource = requires(const R& r, std::size_t bytes, void* p, memory_space where, stream_t s) {
  { r.allocate_async(bytes, where, s) } -> std::same_as<void*>;
  r.deallocate_async(p, bytes, where, s);
};
}  // namespace detail

namespace detail {
//! Raises the release threshold of the current device's default memory pool to `threshold` bytes
//! once per device and process, and only while it is CUDA's default of 0 (a threshold the
//! application set is kept). With 0 the pool gives its memory back at every synchronisation, so
//! per-call scratch from cudaMallocAsync is mapped again on every call.
inline void keep_pool_memory(std::uint64_t threshold) {
  static std::atomic<std::uint64_t> seen{0};  // one bit per device ordinal below 64
  int device = 0;
  SEQPAR_CUDA_TRY(cudaGetDevice(&device));
  const std::uint64_t bit = device < 64 ? std::uint64_t{1} << device : 0;
  if (threshold == 0 || (bit != 0 && (seen.fetch_or(bit) & bit) != 0)) return;
  cudaMemPool_t pool = nullptr;
  SEQPAR_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, device));
  std::uint64_t current = 0;
  SEQPAR_CUDA_TRY(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &current));
  if (current == 0) SEQPAR_CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
}
}  // namespace detail

//! operator new (256-byte aligned) on the host, cudaMalloc on the device; per-call scratch is
//! allocated in stream order (cudaMallocAsync from the device's default pool), so it neither
//! waits for the device nor makes it wait. Before its first such allocation on a device it raises
//! that pool's release threshold to `pool_release_threshold` (unless the application set one), so
//! the pool keeps freed scratch for the next call instead of unmapping it at every synchronisation.
struct default_memory_resource {
  //! Bytes the device's default pool may keep across synchronisations (0: leave the pool alone).
  std::uint64_t pool_release_threshold = std::numeric_limits<std::uint64_t>::max();

  //! Returns `bytes` bytes in `where`.
  void* allocate(std::size_t bytes, memory_space where) const {
    if (where == memory_space::host) return ::operator new(bytes, std::align_val_t{256});
    void* p = nullptr;
    SEQPAR_CUDA_TRY(cudaMalloc(&p, bytes));
    return p;
  }
  //! Gives back what allocate returned.
  void deallocate(void* p, std::size_t, memory_space where) const {
    if (where == memory_space::host) ::operator delete(p, std::align_val_t{256});
    else cudaFree(p);
  }
  //! Returns `bytes` bytes in `where`, usable by work ordered on `stream` from now on.
  void* allocate_async(std::size_t bytes, memory_space where, stream_t stream) const {
    if (where == memory_space::host) return allocate(bytes, where);
    detail::keep_pool_memory(pool_release_threshold);
    void* p = nullptr;
    SEQPAR_CUDA_TRY(cudaMallocAsync(&p, bytes, stream));
    return p;
  }
  //! Gives back what allocate_async returned, once the work ordered on `stream` before now is done.
  void deallocate_async(void* p, std::size_t bytes, memory_space where, stream_t stream) const {
    if (where == memory_space::host) deallocate(p, bytes, where);
    else cudaFreeAsync(p, stream);
  }
};

static_assert(memory_resource<default_memory_resource> && detail::stream_ordered_resource<default_memory_resource>);

//! Bytes owned through a memory resource, released on destruction.
template <memory_resource Resource = default_memory_resource>
class owned_bytes {
 public:
  //! Owns nothing.
  owned_bytes() = default;
  //! Allocates `bytes` bytes in `where` from `resource`.
  owned_bytes(std::size_t bytes, memory_space where, Resource resource = {})
      : resource_(resource), where_(where), bytes_(bytes), data_(bytes ? resource_.allocate(bytes, where) : nullptr) {}
  //! Allocates `bytes` bytes in `where` for work ordered on `stream`, and frees them in the same
  //! order: in stream order when the resource can (detail::stream_ordered_resource), else plainly.
  //! For scratch that lives no longer than the stream.
  owned_bytes(std::size_t bytes, memory_space where, Resource resource, stream_t stream)
      : resource_(resource), where_(where), bytes_(bytes), stream_(stream), ordered_(true) {
    if (bytes == 0) return;
    if constexpr (detail::stream_ordered_resource<Resource>) data_ = resource_.allocate_async(bytes, where, stream);
    else data_ = resource_.allocate(bytes, where);
  }
  //! Takes over `o`'s bytes; `o` is left owning nothing.
  owned_bytes(owned_bytes&& o) noexcept
      : resource_(o.resource_), where_(o.where_), bytes_(std::exchange(o.bytes_, 0)), stream_(o.stream_),
        ordered_(o.ordered_), data_(std::exchange(o.data_, nullptr)) {}
  //! Swaps bytes with `o`, which then releases this object's former ones.
  owned_bytes& operator=(owned_bytes&& o) noexcept {
    std::swap(resource_, o.resource_), std::swap(where_, o.where_), std::swap(bytes_, o.bytes_), std::swap(data_, o.data_);
    std::swap(stream_, o.stream_), std::swap(ordered_, o.ordered_);
    return *this;
  }
  //! Returns the bytes to the resource.
  ~owned_bytes() {
    if (!data_) return;
    if constexpr (detail::stream_ordered_resource<Resource>) {
      if (ordered_) {
        resource_.deallocate_async(data_, bytes_, where_, stream_);
        return;
      }
    }
    resource_.deallocate(data_, bytes_, where_);
  }
  //! The bytes.
  std::span<std::byte> span() const { return {static_cast<std::byte*>(data_), bytes_}; }

 private:
  Resource resource_{};
  memory_space where_ = memory_space::host;
  std::size_t bytes_ = 0;
  stream_t stream_ = nullptr;
  bool ordered_ = false;
  void* data_ = nullptr;
};

//! A caller's workspace for one call (16-byte aligned, at least the call's workspace_bytes(args));
//! none, the default: the call takes its own from the layer's resource.
class workspace_arg {
 public:
  //! No workspace: the call takes its own.
  workspace_arg() = default;
  //! The caller's `bytes` (which may be empty when a call needs none).
  workspace_arg(std::span<std::byte> bytes) : bytes_(bytes), given_(true) {}  // NOLINT(google-explicit-constructor)
  //! True when the caller gave one.
  explicit operator bool() const { return given_; }
  //! The caller's bytes (empty when none was given).
  std::span<std::byte> operator*() const { return bytes_; }
  //! The caller's bytes, for member access.
  const std::span<std::byte>* operator->() const { return &bytes_; }

 private:
  std::span<std::byte> bytes_{};
  bool given_ = false;
};

namespace detail {
//! Throws unless a caller's workspace (when given) holds `need` bytes (`what` names that size) at
//! 16-byte alignment.
inline void check_workspace(const workspace_arg& workspace, std::size_t need, const char* what) {
  if (!workspace) return;
  SEQPAR_EXPECTS(workspace->size() >= need,
                 "workspace: expected at least " << what << " = " << need << " bytes, got " << workspace->size());
  SEQPAR_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace->data()) % 16 == 0, "workspace: expected 16-byte alignment");
}

//! The caller's workspace, or `need` bytes in `where` from `resource` in `stream` order, kept in
//! `own` for the call.
template <memory_resource Resource>
std::span<std::byte> workspace_for(const workspace_arg& workspace, owned_bytes<Resource>& own, std::size_t need,
                                   memory_space where, const Resource& resource, stream_t stream) {
  if (workspace) return *workspace;
  own = owned_bytes<Resource>(need, where, resource, stream);
  return own.span();
}
}  // namespace detail

SEQPAR_NAMESPACE_END
