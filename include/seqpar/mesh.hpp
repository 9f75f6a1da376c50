//! @file mesh.hpp
//! How the ranks of a training job are arranged. mesh_2d: the 2-D attention layer's Ulysses groups
//! times ring groups. mesh: data parallelism times sequence parallelism (sequence-parallel groups of
//! contiguous ranks, meant to share a node), with the group ZeRO-style sharding spans and the
//! sequence-parallel group's own Ulysses and ring sub-groups.
#pragma once

#include <seqpar/comm/agreement.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/error.hpp>

#include <sstream>

SEQPAR_NAMESPACE_BEGIN

//! How P = ulysses * ring ranks are arranged: rank = j * ulysses + i, with i the index in its
//! Ulysses group (contiguous ranks) and j its index in its ring group (ranks i, i + u, ...).
struct mesh_2d {
  int ulysses = 1;  //!< u, ranks per Ulysses group
  int ring = 1;     //!< r, ranks per ring group
  //! i: the rank's index in its Ulysses group.
  int ulysses_index(int rank) const { return rank % ulysses; }
  //! j: the rank's index in its ring group.
  int ring_index(int rank) const { return rank / ulysses; }
};

//! The shape of a data-parallel x sequence-parallel mesh: dp * sp ranks; the sequence-parallel
//! group splits further into Ulysses groups of `ulysses` ranks times ring groups of sp / ulysses
//! (0, the default, means ulysses = sp: Ulysses only).
struct mesh_shape {
  int dp = 1;       //!< data-parallel replicas
  int sp = 1;       //!< ranks per sequence-parallel group
  int ulysses = 0;  //!< ranks per Ulysses group inside it (0: sp)
  //! The Ulysses group size, resolved.
  int ulysses_size() const { return ulysses == 0 ? sp : ulysses; }
};

//! A DP x SP mesh over `world` (dp * sp ranks): world rank = d * sp + s, with s the rank's index
//! in its sequence-parallel group (contiguous ranks) and d its index in its data-parallel group
//! (ranks s, s + sp, ...). Holds the split groups; the ZeRO group is `world` itself (every rank of
//! the mesh). Construction is collective: bad sizes throw a named error on every rank.
template <communicator Comm>
class mesh {
 public:
  //! Splits `world` into the mesh's groups (collective over world).
  mesh(Comm& world, const mesh_shape& shape)
      : world_(world),
        shape_(checked(world, shape)),
        sp_(world.split(world.rank() / shape.sp, world.rank() % shape.sp)),
        dp_(world.split(world.rank() % shape.sp, world.rank() / shape.sp)),
        ulysses_(sp_.split(sp_.rank() / shape_.ulysses_size(), sp_.rank() % shape_.ulysses_size())),
        ring_(sp_.split(sp_.rank() % shape_.ulysses_size(), sp_.rank() / shape_.ulysses_size())) {}

  //! The shape, with ulysses resolved.
  const mesh_shape& shape() const { return shape_; }
  //! This rank's index in its sequence-parallel group.
  int sp_rank() const { return sp_.rank(); }
  //! This rank's index in its data-parallel group (which replica it is).
  int dp_rank() const { return dp_.rank(); }
  //! The sequence-parallel group: sp contiguous ranks that hold shards of the same sequences.
  Comm& sp_group() { return sp_; }
  //! The data-parallel group: the dp ranks with the same sequence-parallel index.
  Comm& dp_group() { return dp_; }
  //! The group ZeRO-style sharding spans: all dp * sp ranks (the world communicator).
  Comm& zero_group() { return world_; }
  //! The Ulysses sub-group of the sequence-parallel group (contiguous ranks).
  Comm& ulysses_group() { return ulysses_; }
  //! The ring sub-group of the sequence-parallel group (one rank of each Ulysses group).
  Comm& ring_group() { return ring_; }
  //! The sequence-parallel group's arrangement for the 2-D layer.
  mesh_2d sp_mesh() const { return {shape_.ulysses_size(), shape_.sp / shape_.ulysses_size()}; }

 private:
  static mesh_shape checked(Comm& world, mesh_shape shape) {
    agree_on_arguments(world, call_checks::group, nullptr, [&] {
      SEQPAR_EXPECTS(shape.dp >= 1 && shape.sp >= 1,
                     "shape: expected dp >= 1 and sp >= 1, got dp = " << shape.dp << ", sp = " << shape.sp);
      SEQPAR_EXPECTS(shape.dp * shape.sp == world.size(), "shape: dp * sp = " << shape.dp * shape.sp
                                                                              << "; expected the world group's "
                                                                              << world.size() << " ranks");
      SEQPAR_EXPECTS(shape.ulysses >= 0 && shape.ulysses <= shape.sp && shape.sp % shape.ulysses_size() == 0,
                     "shape.ulysses: expected a divisor of sp = " << shape.sp << " (or 0 for sp), got "
                                                                  << shape.ulysses);
    });
    std::ostringstream description;
    description << "mesh dp = " << shape.dp << ", sp = " << shape.sp << ", ulysses = " << shape.ulysses_size();
    agree_on_fingerprint(world, fingerprint{}.add(shape.dp).add(shape.sp).add(shape.ulysses_size()).value(), "mesh",
                         description.str(), nullptr);
    shape.ulysses = shape.ulysses_size();
    return shape;
  }

  Comm& world_;
  mesh_shape shape_;
  Comm sp_, dp_, ulysses_, ring_;
};

SEQPAR_NAMESPACE_END
