//! @file workspace_layout.hpp
//! One object that both sizes a workspace and carves it into parts, as CUB's temporary-storage
//! layout does: the size a layer states and the parts it uses cannot drift apart.
#pragma once

#include <seqpar/error.hpp>

#include <array>
#include <cstddef>
#include <span>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! N parts of given byte sizes, each starting at a multiple of `alignment` (16 by default: what
//! vector loads and every workspace check ask).
template <std::size_t N>
class workspace_layout {
 public:
  //! Bytes every part starts at a multiple of.
  static constexpr std::size_t alignment = 16;

  //! The layout of parts of `sizes` bytes, in order.
  explicit workspace_layout(const std::array<std::size_t, N>& sizes) : sizes_(sizes) {
    std::size_t at = 0;
    for (std::size_t i = 0; i < N; ++i) {
      offsets_[i] = at;
      at += round_up(sizes_[i]);
    }
    bytes_ = at;
  }

  //! Bytes the whole workspace needs.
  std::size_t bytes() const { return bytes_; }
  //! Bytes of part i.
  std::size_t size(std::size_t i) const { return sizes_[i]; }
  //! Part i of `workspace` (at least bytes() long).
  std::span<std::byte> part(std::span<std::byte> workspace, std::size_t i) const {
    SEQPAR_EXPECTS(workspace.size() >= bytes_,
                   "workspace: " << workspace.size() << " bytes; expected at least " << bytes_);
    return workspace.subspan(offsets_[i], sizes_[i]);
  }
  //! Part i of `workspace` as `size(i) / sizeof(E)` elements of E.
  template <class E>
  std::span<E> as(std::span<std::byte> workspace, std::size_t i) const {
    const std::span<std::byte> p = part(workspace, i);
    return {reinterpret_cast<E*>(p.data()), p.size() / sizeof(E)};
  }

  //! `n` rounded up to the alignment.
  static constexpr std::size_t round_up(std::size_t n) { return (n + alignment - 1) / alignment * alignment; }

 private:
  std::array<std::size_t, N> sizes_{};
  std::array<std::size_t, N> offsets_{};
  std::size_t bytes_ = 0;
};

}  // namespace detail
SEQPAR_NAMESPACE_END
