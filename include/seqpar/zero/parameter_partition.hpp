//! @file parameter_partition.hpp
//! parameter_partition: where each element of a model's parameters lives when ZeRO-3-style
//! sharding splits them over N ranks. Host-side layout algebra, testable without a group.
#pragma once

#include <seqpar/comm/agreement.hpp>
#include <seqpar/error.hpp>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! One parameter tensor, flattened: its element count and whether AdamW's weight decay applies to
//! it (weight matrices yes; norm gains and biases usually not).
struct parameter_spec {
  std::int64_t elements = 0;  //!< elements of the tensor
  bool decay = true;          //!< whether weight decay applies
};

//! A model's parameters grouped into units (a layer each: gathered together, freed together) and
//! each unit split evenly over N ranks, as flat units: unit u's parameters lie back to back,
//! padded with zeros to N * shard(u) elements, and rank r owns elements [r * shard(u), (r + 1) *
//! shard(u)) of it. A rank's shard of the whole model is its pieces of every unit, in unit order.
class parameter_partition {
 public:
  //! Parameters grouped by unit, split over `ranks` ranks. Throws naming the first bad entry.
  parameter_partition(std::vector<std::vector<parameter_spec>> units, int ranks)
      : units_(std::move(units)), ranks_(ranks) {
    SEQPAR_EXPECTS(ranks >= 1, "ranks: expected at least 1, got " << ranks);
    SEQPAR_EXPECTS(!units_.empty(), "units: expected at least one unit of parameters");
    std::int64_t shard_at = 0;
    for (std::size_t u = 0; u < units_.size(); ++u) {
      SEQPAR_EXPECTS(!units_[u].empty(), "units[" << u << "]: expected at least one parameter");
      std::vector<std::int64_t> offsets;
      std::int64_t at = 0;
      for (std::size_t p = 0; p < units_[u].size(); ++p) {
        SEQPAR_EXPECTS(units_[u][p].elements >= 1,
                       "units[" << u << "][" << p << "].elements: expected at least 1, got " << units_[u][p].elements);
        offsets.push_back(at);
        at += units_[u][p].elements;
      }
      offsets.push_back(at);
      offsets_.push_back(std::move(offsets));
      shard_offsets_.push_back(shard_at);
      shard_at += (at + ranks - 1) / ranks;
    }
    shard_offsets_.push_back(shard_at);
  }

  //! N, the ranks the parameters are split over.
  int ranks() const { return ranks_; }
  //! Units in the model.
  int units() const { return static_cast<int>(units_.size()); }
  //! Parameters in unit u.
  int parameters(int u) const { return static_cast<int>(units_[at(u)].size()); }
  //! Parameter p of unit u.
  const parameter_spec& parameter(int u, int p) const { return units_[at(u)][at(u, p)]; }
  //! Where parameter p starts in unit u (elements).
  std::int64_t offset(int u, int p) const { return offsets_[at(u)][at(u, p)]; }
  //! Elements of unit u, without padding.
  std::int64_t unit_elements(int u) const { return offsets_[at(u)].back(); }
  //! Elements of unit u each rank owns: ceil(unit_elements(u) / N).
  std::int64_t shard_elements(int u) const { return shard_offsets_[at(u) + 1] - shard_offsets_[at(u)]; }
  //! Elements of unit u with its padding: N * shard_elements(u), what a gather holds.
  std::int64_t padded_elements(int u) const { return ranks_ * shard_elements(u); }
  //! Where unit u's piece starts in a rank's shard of the model.
  std::int64_t shard_offset(int u) const { return shard_offsets_[at(u)]; }
  //! Elements of a rank's shard of the model (every unit's piece, padding included).
  std::int64_t shard_elements() const { return shard_offsets_.back(); }
  //! Elements of the whole model, unsharded and unpadded.
  std::int64_t elements() const {
    std::int64_t n = 0;
    for (int u = 0; u < units(); ++u) n += unit_elements(u);
    return n;
  }
  //! Elements of unit u that rank r owns and that are not padding: [first, first + count) of the unit.
  std::pair<std::int64_t, std::int64_t> owned(int u, int r) const {
    SEQPAR_EXPECTS(r >= 0 && r < ranks_, "rank: expected 0 <= rank < " << ranks_ << ", got " << r);
    const std::int64_t first = r * shard_elements(u);
    return {first, std::max<std::int64_t>(0, std::min(unit_elements(u), first + shard_elements(u)) - first)};
  }
  //! The sizes, flags and rank count, as one value peers compare.
  std::int64_t fingerprint_value() const {
    fingerprint f;
    f.add(ranks_).add(units());
    for (const auto& unit : units_) {
      f.add(static_cast<std::int64_t>(unit.size()));
      for (const auto& p : unit) f.add(p.elements).add(p.decay ? 1 : 0);
    }
    return f.value();
  }

 private:
  std::size_t at(int u) const {
    SEQPAR_EXPECTS(u >= 0 && u < units(), "unit: expected 0 <= unit < " << units() << ", got " << u);
    return static_cast<std::size_t>(u);
  }
  std::size_t at(int u, int p) const {
    SEQPAR_EXPECTS(p >= 0 && p < static_cast<int>(units_[u].size()),
                   "parameter: expected 0 <= parameter < " << units_[u].size() << " in unit " << u << ", got " << p);
    return static_cast<std::size_t>(p);
  }

  std::vector<std::vector<parameter_spec>> units_;
  int ranks_;
  std::vector<std::vector<std::int64_t>> offsets_;  // per unit: each parameter's start, then the end
  std::vector<std::int64_t> shard_offsets_;         // per unit: its piece's start in a rank's shard, then the end
};

SEQPAR_NAMESPACE_END
