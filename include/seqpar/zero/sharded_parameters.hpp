//! @file sharded_parameters.hpp
//! sharded_parameters: ZeRO-3-style parameters over a group (every rank of a DP x SP mesh). Each
//! rank keeps only its shard of the flat fp32 master copy and of the gradients; a layer's
//! parameters are gathered in the compute type before its forward and again before its backward,
//! and freed after; its gradients are reduce-scattered so each rank adds up its shard.
//!
//! How gradients combine: each rank's loss is the summed loss of the tokens it holds divided by
//! the token count of the whole global batch (every sequence of every data-parallel replica). The
//! global loss is then the sum of the ranks' losses, so its gradient is the sum over every rank of
//! the group of each rank's gradient: sequence-parallel ranks saw different tokens of the same
//! sequences, data-parallel ranks different sequences. reduce_scatter sums over the whole group;
//! nothing is averaged afterwards.
#pragma once

#include <seqpar/comm/agreement.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/detail/for_each_index.hpp>
#include <seqpar/detail/sum_of_squares.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/types.hpp>
#include <seqpar/zero/parameter_partition.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <sstream>
#include <utility>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! to[i] = from[i], converted from From to To.
template <class From, class To>
struct convert_elements {
  const From* from;  //!< the source
  To* to;            //!< the destination
  //! Converts element i.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t i) const { to[i] = from_float<To>(to_float(from[i])); }
};

//! to[i] += from[i] in fp32.
template <class From>
struct accumulate_elements {
  float* to;         //!< the fp32 accumulator
  const From* from;  //!< what to add
  //! Adds element i.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t i) const { to[i] += to_float(from[i]); }
};

//! p[i] *= factor.
struct scale_floats {
  float* p;      //!< the first float
  float factor;  //!< what to multiply by
  //! Scales element i.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t i) const { p[i] *= factor; }
};

//! p[i] = 0.
template <class T>
struct zero_elements {
  T* p;  //!< the first element
  //! Zeroes element i.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t i) const { p[i] = from_float<T>(0.0f); }
};

//! Bytes of gathered units alive now and at most so far on one rank.
struct working_set_bytes {
  std::size_t live = 0;  //!< alive now
  std::size_t peak = 0;  //!< the most alive at once
  //! Counts n more bytes.
  void add(std::size_t n) { peak = std::max(peak, live += n); }
  //! Counts n fewer bytes.
  void remove(std::size_t n) { live -= n; }
};

SEQPAR_DETAIL_KERNEL_NAMESPACE_END

SEQPAR_KERNEL_NAMESPACE_BEGIN

template <communicator Comm, memory_resource Resource>
class sharded_parameters;

//! One unit's parameters (or gradients) in full, in compute type T, owned until destruction: what
//! sharded_parameters::gather and gradient_buffer return. Move-only.
template <element T, memory_resource Resource = default_memory_resource>
class gathered_unit {
 public:
  //! Owns nothing.
  gathered_unit() = default;
  gathered_unit(gathered_unit&& o) noexcept
      : partition_(std::exchange(o.partition_, nullptr)),
        counter_(std::exchange(o.counter_, nullptr)),
        unit_(o.unit_),
        bytes_(std::move(o.bytes_)) {}
  gathered_unit& operator=(gathered_unit&& o) noexcept {
    std::swap(partition_, o.partition_), std::swap(counter_, o.counter_), std::swap(unit_, o.unit_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  //! Frees the unit (in the order of the stream it was made on) and stops counting it.
  ~gathered_unit() {
    if (counter_) counter_->remove(bytes_.span().size());
  }
  //! True while it holds a unit.
  explicit operator bool() const { return partition_ != nullptr; }
  //! Which unit it holds.
  int unit() const { return unit_; }
  //! Parameter p of the unit, in its own elements (the memory of the group that made it).
  std::span<T> parameter(int p) const {
    return {data() + partition_->offset(unit_, p), static_cast<std::size_t>(partition_->parameter(unit_, p).elements)};
  }
  //! Every parameter of the unit, back to back (without the padding).
  std::span<T> elements() const { return {data(), static_cast<std::size_t>(partition_->unit_elements(unit_))}; }
  //! Bytes it holds, padding included.
  std::size_t bytes() const { return bytes_.span().size(); }

 private:
  template <communicator, memory_resource>
  friend class sharded_parameters;
  gathered_unit(const parameter_partition& partition, detail::working_set_bytes& counter, int unit,
                owned_bytes<Resource> b)
      : partition_(&partition), counter_(&counter), unit_(unit), bytes_(std::move(b)) {
    counter_->add(bytes_.span().size());
  }
  T* data() const { return reinterpret_cast<T*>(bytes_.span().data()); }
  std::span<T> padded() const { return {data(), bytes_.span().size() / sizeof(T)}; }

  const parameter_partition* partition_ = nullptr;
  detail::working_set_bytes* counter_ = nullptr;
  int unit_ = 0;
  owned_bytes<Resource> bytes_;
};

//! What one rank holds of a sharded model, in bytes.
struct sharded_memory {
  std::size_t parameters = 0;     //!< the fp32 master shard
  std::size_t gradients = 0;      //!< the fp32 gradient shard
  std::size_t gathered_now = 0;   //!< gathered units and gradient buffers alive now
  std::size_t gathered_peak = 0;  //!< the most of them alive at once so far: the largest working set
};

//! A model's parameters sharded over `group` (every rank of a mesh: mesh::zero_group()), in the
//! group's memory. This rank holds the fp32 master and gradient pieces of its shard (layout:
//! parameter_partition); gather(u) assembles unit u in a compute type for one forward or backward,
//! reduce_scatter adds the group's summed gradient of unit u to this rank's piece. Collective calls
//! (the constructor, load, gather, reduce_scatter) check their arguments on every rank and, with
//! call_checks::group (the default), agree before any rank moves a byte. Not movable (gathered
//! units point back to it).
template <communicator Comm, memory_resource Resource = default_memory_resource>
class sharded_parameters {
 public:
  //! The shard of this rank of `group` (collective): every rank must pass the same partition, split
  //! over the group's size. Master and gradients start at zero.
  sharded_parameters(Comm& group, parameter_partition partition, Resource resource = {})
      : group_(group), partition_(checked(group, std::move(partition))), resource_(resource) {
    const auto bytes = static_cast<std::size_t>(partition_.shard_elements()) * sizeof(float);
    master_ = owned_bytes<Resource>(bytes, group.memory(), resource_);
    gradients_ = owned_bytes<Resource>(bytes, group.memory(), resource_);
    fill(master_span(), nullptr);
    fill(gradient_span(), nullptr);
    if (group.memory() == memory_space::device) SEQPAR_CUDA_TRY(cudaStreamSynchronize(nullptr));
  }
  sharded_parameters(const sharded_parameters&) = delete;
  sharded_parameters& operator=(const sharded_parameters&) = delete;

  //! Where every element lives.
  const parameter_partition& partition() const { return partition_; }
  //! The group the parameters are sharded over.
  Comm& group() { return group_; }
  //! This rank's fp32 master shard: every unit's piece in unit order (padding is zero).
  std::span<float> master() const { return master_span(); }
  //! This rank's fp32 master piece of unit u: elements owned(u, rank) of the unit, then padding.
  std::span<float> master(int u) const { return piece(master_span(), u); }
  //! This rank's fp32 gradient shard, laid out as master().
  std::span<float> gradients() const { return gradient_span(); }
  //! This rank's fp32 gradient piece of unit u.
  std::span<float> gradients(int u) const { return piece(gradient_span(), u); }

  //! Sets this rank's master piece of unit u from `full`, the whole unit (unit_elements(u) floats
  //! in the group's memory, the same on every rank, e.g. from one seed). Collective check.
  void load(int u, std::span<const float> full, stream_t stream) {
    agree_on_arguments(group_, checks_, stream, [&] {
      check_unit(u);
      SEQPAR_EXPECTS(static_cast<std::int64_t>(full.size()) == partition_.unit_elements(u),
                     "full: expected unit " << u << "'s " << partition_.unit_elements(u) << " elements, got "
                                            << full.size());
    });
    const auto [first, count] = partition_.owned(u, group_.rank());
    detail::for_each_index(group_.memory(), count,
                           detail::convert_elements<float, float>{full.data() + first, master(u).data()}, stream);
  }

  //! Unit u in full, in compute type T, gathered from every rank's master piece (collective; every
  //! rank gathers the same unit in the same type). Free it (let it go) once the forward or backward
  //! that reads it has been queued on `stream`.
  template <element T>
  gathered_unit<T, Resource> gather(int u, stream_t stream) {
    agree_on_arguments(
        group_, checks_, stream, [&] { check_unit(u); },
        agreed_value{fingerprint{}.add(u).add(static_cast<int>(dtype_of<T>)).value(), "unit",
                     "unit " + std::to_string(u) + " in " + to_string(dtype_of<T>)});
    auto out = make_unit<T>(u, stream);
    const auto n = static_cast<std::size_t>(partition_.shard_elements(u));
    if constexpr (std::is_same_v<T, float>) {
      group_.all_gather(std::span<const float>(master(u)), out.padded(), stream);
    } else {
      owned_bytes<Resource> staging(n * sizeof(T), group_.memory(), resource_, stream);
      auto* send = reinterpret_cast<T*>(staging.span().data());
      detail::for_each_index(group_.memory(), static_cast<std::int64_t>(n),
                             detail::convert_elements<float, T>{master(u).data(), send}, stream);
      group_.all_gather(std::span<const T>(send, n), out.padded(), stream);
    }
    return out;
  }

  //! A zeroed buffer for unit u's gradients in type T, laid out as gather's (local; moves nothing).
  template <element T>
  gathered_unit<T, Resource> gradient_buffer(int u, stream_t stream) {
    scoped_rank attribute(group_.rank());
    check_unit(u);
    auto out = make_unit<T>(u, stream);
    detail::for_each_index(group_.memory(), static_cast<std::int64_t>(out.padded().size()),
                           detail::zero_elements<T>{out.data()}, stream);
    return out;
  }

  //! Adds the sum over the group of each rank's `grads` (a gradient_buffer of this object) to this
  //! rank's gradient piece of that unit, then frees `grads` (collective; every rank passes the same
  //! unit in the same type).
  template <element T>
  void reduce_scatter(gathered_unit<T, Resource> grads, stream_t stream) {
    const int u = grads ? grads.unit() : -1;
    agree_on_arguments(
        group_, checks_, stream,
        [&] {
          SEQPAR_EXPECTS(grads && grads.partition_ == &partition_,
                         "grads: expected a gradient_buffer of these sharded parameters, got "
                             << (grads ? "another object's" : "an empty one"));
        },
        agreed_value{fingerprint{}.add(u).add(static_cast<int>(dtype_of<T>)).value(), "grads",
                     "unit " + std::to_string(u) + " in " + to_string(dtype_of<T>)});
    const auto n = static_cast<std::size_t>(partition_.shard_elements(u));
    owned_bytes<Resource> reduced(n * sizeof(T), group_.memory(), resource_, stream);
    auto* sum = reinterpret_cast<T*>(reduced.span().data());
    group_.reduce_scatter(std::span<const T>(grads.padded()), std::span<T>(sum, n), stream);
    detail::for_each_index(group_.memory(), static_cast<std::int64_t>(n),
                           detail::accumulate_elements<T>{gradients(u).data(), sum}, stream);
  }

  //! Sets every gradient of this rank's shard to zero (local).
  void zero_gradients(stream_t stream) { fill(gradient_span(), stream); }

  //! The 2-norm of the whole model's gradient: each rank's shard squared and summed in double, then
  //! summed over the group (collective; waits for `stream`). With scale_gradients: clipping.
  double gradient_norm(stream_t stream) {
    const auto g = gradient_span();
    double total = 0;
    if (group_.memory() == memory_space::host) {
      double mine = 0;
      detail::sum_of_squares(memory_space::host, g.data(), static_cast<std::int64_t>(g.size()), &mine, stream);
      group_.all_reduce(std::span<const double>(&mine, 1), std::span<double>(&total, 1), stream);
    } else {
      owned_bytes<Resource> sums(2 * sizeof(double), memory_space::device, resource_, stream);
      auto* mine = reinterpret_cast<double*>(sums.span().data());
      detail::sum_of_squares(memory_space::device, g.data(), static_cast<std::int64_t>(g.size()), mine, stream);
      group_.all_reduce(std::span<const double>(mine, 1), std::span<double>(mine + 1, 1), stream);
      SEQPAR_CUDA_TRY(cudaMemcpyAsync(&total, mine + 1, sizeof total, cudaMemcpyDeviceToHost, stream));
      SEQPAR_CUDA_TRY(cudaStreamSynchronize(stream));
    }
    return std::sqrt(total);
  }
  //! Multiplies this rank's gradient shard by `factor` (local).
  void scale_gradients(float factor, stream_t stream) {
    const auto g = gradient_span();
    detail::for_each_index(group_.memory(), static_cast<std::int64_t>(g.size()), detail::scale_floats{g.data(), factor},
                           stream);
  }

  //! Bytes this rank holds now and the largest gathered working set so far.
  sharded_memory memory() const {
    return {master_.span().size(), gradients_.span().size(), working_set_.live, working_set_.peak};
  }
  //! Forgets the largest working set seen so far (e.g. after a warm-up step).
  void reset_peak() { working_set_.peak = working_set_.live; }
  //! Sets what each collective call checks: call_checks::group (the default) or call_checks::local.
  void set_call_checks(call_checks checks) { checks_ = checks; }

 private:
  static parameter_partition checked(Comm& group, parameter_partition partition) {
    agree_on_arguments(group, call_checks::group, nullptr, [&] {
      SEQPAR_EXPECTS(partition.ranks() == group.size(), "partition: split over " << partition.ranks()
                                                                                 << " ranks; expected the group's "
                                                                                 << group.size());
    });
    std::ostringstream description;
    description << partition.units() << " units, " << partition.elements() << " elements";
    agree_on_fingerprint(group, partition.fingerprint_value(), "sharded_parameters", description.str(), nullptr);
    return partition;
  }
  void check_unit(int u) const {
    SEQPAR_EXPECTS(u >= 0 && u < partition_.units(),
                   "unit: expected 0 <= unit < " << partition_.units() << ", got " << u);
  }
  template <element T>
  gathered_unit<T, Resource> make_unit(int u, stream_t stream) {
    const auto bytes = static_cast<std::size_t>(partition_.padded_elements(u)) * sizeof(T);
    return {partition_, working_set_, u, owned_bytes<Resource>(bytes, group_.memory(), resource_, stream)};
  }
  std::span<float> master_span() const { return as_floats(master_); }
  std::span<float> gradient_span() const { return as_floats(gradients_); }
  static std::span<float> as_floats(const owned_bytes<Resource>& b) {
    return {reinterpret_cast<float*>(b.span().data()), b.span().size() / sizeof(float)};
  }
  std::span<float> piece(std::span<float> all, int u) const {
    check_unit(u);
    return all.subspan(static_cast<std::size_t>(partition_.shard_offset(u)),
                       static_cast<std::size_t>(partition_.shard_elements(u)));
  }
  void fill(std::span<float> p, stream_t stream) {
    detail::for_each_index(group_.memory(), static_cast<std::int64_t>(p.size()), detail::fill_floats{p.data(), 0.0f},
                           stream);
  }

  Comm& group_;
  parameter_partition partition_;
  Resource resource_;
  call_checks checks_ = call_checks::group;
  owned_bytes<Resource> master_, gradients_;
  detail::working_set_bytes working_set_;
};

SEQPAR_KERNEL_NAMESPACE_END
