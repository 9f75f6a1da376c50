//! @file adamw.hpp
//! adamw: the AdamW optimizer (decoupled weight decay, as torch.optim.AdamW) stepping only on this
//! rank's shard of sharded_parameters; its moment estimates are sharded the same way.
#pragma once

#include <seqpar/detail/for_each_index.hpp>
#include <seqpar/zero/sharded_parameters.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! AdamW's hyper-parameters (torch.optim.AdamW's defaults, but weight decay 0 unless asked).
struct adamw_options {
  float learning_rate = 1e-3f;  //!< step size
  float beta1 = 0.9f;           //!< decay of the first moment
  float beta2 = 0.999f;         //!< decay of the second moment
  float epsilon = 1e-8f;        //!< added to the root of the second moment
  float weight_decay = 0.0f;    //!< decoupled decay, applied to parameters whose spec says decay
};

SEQPAR_NAMESPACE_END

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! One AdamW update of element i of a run of parameters.
struct adamw_update {
  float* w;              //!< parameters
  const float* g;        //!< their gradients
  float* m;              //!< first moments
  float* v;              //!< second moments
  float learning_rate;   //!< step size
  float beta1, beta2;    //!< moment decays
  float epsilon;         //!< added to the root of the second moment
  float decay;           //!< learning_rate * weight_decay, or 0 for this run
  float correction1;     //!< 1 - beta1^t
  float root_correction2;  //!< sqrt(1 - beta2^t)
  //! Updates element i.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t i) const {
    const float grad = g[i];
    w[i] -= decay * w[i];
    m[i] = beta1 * m[i] + (1.0f - beta1) * grad;
    v[i] = beta2 * v[i] + (1.0f - beta2) * grad * grad;
    const float denominator = sqrtf(v[i]) / root_correction2 + epsilon;
    w[i] -= learning_rate / correction1 * m[i] / denominator;
  }
};

SEQPAR_DETAIL_KERNEL_NAMESPACE_END

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! AdamW on this rank's shard of `params`: step() updates the master piece from the gradient piece
//! (it does not zero the gradients). Padding is never touched. Local: no bytes move.
template <communicator Comm, memory_resource Resource = default_memory_resource>
class adamw {
 public:
  //! Zeroed moments for `params`' shard, in the group's memory.
  adamw(sharded_parameters<Comm, Resource>& params, adamw_options options = {}, Resource resource = {})
      : params_(params), options_(checked(options)) {
    const auto& part = params.partition();
    const int r = params.group().rank();
    for (int u = 0; u < part.units(); ++u) {
      const auto [first, count] = part.owned(u, r);
      for (int p = 0; p < part.parameters(u); ++p) {
        const std::int64_t begin = std::max(first, part.offset(u, p));
        const std::int64_t end = std::min(first + count, part.offset(u, p) + part.parameter(u, p).elements);
        if (begin < end)
          runs_.push_back({part.shard_offset(u) + begin - first, end - begin, part.parameter(u, p).decay});
      }
    }
    const auto n = static_cast<std::size_t>(part.shard_elements());
    moments_ = owned_bytes<Resource>(2 * n * sizeof(float), params.group().memory(), resource);
    detail::for_each_index(params.group().memory(), static_cast<std::int64_t>(2 * n),
                           detail::fill_floats{moment(0), 0.0f}, nullptr);
  }

  //! One update of the shard from its gradients, ordered on `stream`.
  void step(stream_t stream) {
    ++steps_;
    const double t = static_cast<double>(steps_);
    const auto correction1 = static_cast<float>(1.0 - std::pow(double(options_.beta1), t));
    const auto root_correction2 = static_cast<float>(std::sqrt(1.0 - std::pow(double(options_.beta2), t)));
    for (const run& x : runs_) {
      const detail::adamw_update update{params_.master().data() + x.first,
                                        params_.gradients().data() + x.first,
                                        moment(0) + x.first,
                                        moment(1) + x.first,
                                        options_.learning_rate,
                                        options_.beta1,
                                        options_.beta2,
                                        options_.epsilon,
                                        x.decay ? options_.learning_rate * options_.weight_decay : 0.0f,
                                        correction1,
                                        root_correction2};
      detail::for_each_index(params_.group().memory(), x.count, update, stream);
    }
  }
  //! The hyper-parameters; the learning rate may change between steps (a schedule).
  adamw_options& options() { return options_; }
  //! Steps taken.
  std::int64_t steps() const { return steps_; }
  //! Bytes of optimizer state this rank holds (two fp32 moments per element of its shard).
  std::size_t state_bytes() const { return moments_.span().size(); }

 private:
  struct run {
    std::int64_t first, count;  // in the rank's shard
    bool decay;
  };
  static adamw_options checked(const adamw_options& o) {
    SEQPAR_EXPECTS(o.learning_rate >= 0, "options.learning_rate: expected >= 0, got " << o.learning_rate);
    SEQPAR_EXPECTS(o.beta1 >= 0 && o.beta1 < 1, "options.beta1: expected in [0, 1), got " << o.beta1);
    SEQPAR_EXPECTS(o.beta2 >= 0 && o.beta2 < 1, "options.beta2: expected in [0, 1), got " << o.beta2);
    SEQPAR_EXPECTS(o.epsilon > 0, "options.epsilon: expected > 0, got " << o.epsilon);
    SEQPAR_EXPECTS(o.weight_decay >= 0, "options.weight_decay: expected >= 0, got " << o.weight_decay);
    return o;
  }
  float* moment(int which) const {
    return reinterpret_cast<float*>(moments_.span().data()) + which * params_.partition().shard_elements();
  }

  sharded_parameters<Comm, Resource>& params_;
  adamw_options options_;
  std::vector<run> runs_;
  owned_bytes<Resource> moments_;
  std::int64_t steps_ = 0;
};

SEQPAR_KERNEL_NAMESPACE_END
