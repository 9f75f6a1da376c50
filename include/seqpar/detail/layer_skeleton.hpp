//! @file layer_skeleton.hpp
//! What every layer shares: the construction's agreement (every rank checks its arguments, then
//! the group agrees on one fingerprint of the shapes), each call's agreement (the same checks
//! can_run runs, then one small collective), and the stamp a context carries from its forward to
//! its backward.
#pragma once

#include <seqpar/call.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/detail/context_stamp.hpp>
#include <seqpar/types.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

template <communicator Comm>
class layer_skeleton;

//! The base of every layer's context: empty until a forward of its layer fills it. Move-only.
class layer_context {
 public:
  layer_context() = default;
  layer_context(layer_context&&) noexcept = default;             //!< moves the stamp
  layer_context& operator=(layer_context&&) noexcept = default;  //!< moves the stamp
  layer_context(const layer_context&) = delete;                  //!< not copyable: it may own memory
  layer_context& operator=(const layer_context&) = delete;       //!< not copyable: it may own memory
  //! True until a forward fills it.
  bool empty() const { return !stamp_.filled; }

 private:
  template <communicator>
  friend class layer_skeleton;
  context_stamp stamp_;
};

//! The agreement steps of one rank's layer over `Comm`, named `name` in errors.
template <communicator Comm>
class layer_skeleton {
  static_assert(compiler_serves<Comm>,
                "seqpar: a layer on a device-only communicator (nccl_communicator) needs the calling file "
                "compiled by nvcc: its kernels are CUDA");

 public:
  //! Collective: every rank runs `plan` (which checks the construction's arguments, throwing
  //! seqpar::error, and returns what the layer keeps), the group agrees, and each rank gets its plan.
  template <class Plan>
  static std::invoke_result_t<Plan&> agreed(Comm& comm, Plan&& plan) {
    std::optional<std::invoke_result_t<Plan&>> made;
    agree_on_arguments(comm, call_checks::group, nullptr, [&] { made.emplace(plan()); });
    return std::move(*made);
  }

  //! Collective: the ranks agree that every one built the layer with the same `print` (a
  //! fingerprint of its shapes); `description` says this rank's in words when they differ.
  layer_skeleton(Comm& comm, const char* name, std::int64_t print, const std::string& description)
      : comm_(&comm), name_(name), print_(print) {
    agree_on_fingerprint(comm, print, name, description, nullptr);  // construction waits for the group
  }

  //! Runs a call's `checks` on this rank and, with exec.checks == call_checks::group, lets the
  //! group agree (on `same` too) before anything is written or moved: all go on or all throw.
  template <class Checks>
  void agree_on_call(const execution& exec, Checks&& checks, const agreed_value& same = {}) const {
    agree_on_arguments(*comm_, exec.checks, exec.stream, std::forward<Checks>(checks), same);
  }

  //! Records in `saved` that a forward of this layer on elements of T filled it.
  template <element T>
  void stamp(layer_context& saved) const {
    saved.stamp_.set(print_, dtype_of<T>);
  }
  //! Throws unless a forward of this layer on elements of T filled `saved`.
  template <element T>
  void check_stamp(const layer_context& saved) const {
    saved.stamp_.check(print_, dtype_of<T>);
  }

  //! The fingerprint of the layer's shapes.
  std::int64_t print() const { return print_; }
  //! The layer's name.
  const char* name() const { return name_; }

 private:
  Comm* comm_;
  const char* name_;
  std::int64_t print_;
};

}  // namespace detail
SEQPAR_NAMESPACE_END
