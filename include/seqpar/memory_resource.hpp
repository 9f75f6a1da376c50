//! @file memory_resource.hpp
//! Where pipelines get the memory they own; users can pass their own resource (a caching allocator).
#pragma once

#include <seqpar/error.hpp>
#include <seqpar/memory_space.hpp>
#include <seqpar/cuda_check.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
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

//! operator new (256-byte aligned) on the host, cudaMalloc on the device.
struct default_memory_resource {
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
};

static_assert(memory_resource<default_memory_resource>);

//! Bytes owned through a memory resource, released on destruction.
template <memory_resource Resource = default_memory_resource>
class owned_bytes {
 public:
  //! Owns nothing.
  owned_bytes() = default;
  //! Allocates `bytes` bytes in `where` from `resource`.
  owned_bytes(std::size_t bytes, memory_space where, Resource resource = {})
      : resource_(resource), where_(where), bytes_(bytes), data_(bytes ? resource_.allocate(bytes, where) : nullptr) {}
  //! Takes over `o`'s bytes; `o` is left owning nothing.
  owned_bytes(owned_bytes&& o) noexcept
      : resource_(o.resource_), where_(o.where_), bytes_(std::exchange(o.bytes_, 0)), data_(std::exchange(o.data_, nullptr)) {}
  //! Swaps bytes with `o`, which then releases this object's former ones.
  owned_bytes& operator=(owned_bytes&& o) noexcept {
    std::swap(resource_, o.resource_), std::swap(where_, o.where_), std::swap(bytes_, o.bytes_), std::swap(data_, o.data_);
    return *this;
  }
  //! Returns the bytes to the resource.
  ~owned_bytes() {
    if (data_) resource_.deallocate(data_, bytes_, where_);
  }
  //! The bytes.
  std::span<std::byte> span() const { return {static_cast<std::byte*>(data_), bytes_}; }

 private:
  Resource resource_{};
  memory_space where_ = memory_space::host;
  std::size_t bytes_ = 0;
  void* data_ = nullptr;
};

namespace detail {
//! A call's workspace: the caller's, when it passed one, or none (the call takes its own).
using optional_workspace = std::optional<std::span<std::byte>>;

//! Throws unless a caller's workspace (when given) holds `need` bytes (`what` names that size) at
//! 16-byte alignment.
inline void check_workspace(const optional_workspace& workspace, std::size_t need, const char* what) {
  if (!workspace) return;
  SEQPAR_EXPECTS(workspace->size() >= need,
                 "workspace: expected at least " << what << " = " << need << " bytes, got " << workspace->size());
  SEQPAR_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace->data()) % 16 == 0, "workspace: expected 16-byte alignment");
}

//! The caller's workspace, or `need` bytes in `where` from `resource`, kept in `own` for the call.
template <memory_resource Resource>
std::span<std::byte> workspace_for(const optional_workspace& workspace, owned_bytes<Resource>& own, std::size_t need,
                                   memory_space where, const Resource& resource) {
  if (workspace) return *workspace;
  own = owned_bytes<Resource>(need, where, resource);
  return own.span();
}
}  // namespace detail

SEQPAR_NAMESPACE_END
