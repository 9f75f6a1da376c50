// The DP x SP mesh: for every shape up to 8 ranks, each group holds exactly the world ranks the
// arrangement says (checked by gathering world ranks over it), in order; bad shapes fail on every
// rank before any group is made.
#include <seqpar/comm/in_process.hpp>
#include <seqpar/mesh.hpp>
#include <seqpar_test/all_or_nothing.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <mutex>
#include <vector>

namespace {
// The world ranks of a group, in group-rank order, gathered over it.
std::vector<std::int64_t> members(seqpar::in_process_communicator& group, int world_rank) {
  std::vector<std::int64_t> all(group.size());
  const std::int64_t me = world_rank;
  group.all_gather(std::span<const std::int64_t>(&me, 1), std::span<std::int64_t>(all), nullptr);
  return all;
}
std::vector<std::int64_t> range(int first, int count, int step) {
  std::vector<std::int64_t> out;
  for (int i = 0; i < count; ++i) out.push_back(first + i * step);
  return out;
}
}  // namespace

TEST_CASE("mesh: sequence-parallel groups of contiguous ranks, data-parallel groups across them") {
  for (int P = 1; P <= 8; ++P)
    for (int sp = 1; sp <= P; ++sp) {
      if (P % sp) continue;
      for (int u = 1; u <= sp; ++u) {
        if (sp % u) continue;
        const int dp = P / sp;
        CAPTURE(P);
        CAPTURE(sp);
        CAPTURE(u);
        std::mutex m;
        int wrong = 0;
        seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& world) {
          const int r = world.rank(), d = r / sp, s = r % sp;
          seqpar::mesh mesh(world, {.dp = dp, .sp = sp, .ulysses = u});
          const int i = s % u, j = s / u;
          const bool ok = mesh.sp_rank() == s && mesh.dp_rank() == d && mesh.shape().ulysses == u &&
                          members(mesh.sp_group(), r) == range(d * sp, sp, 1) &&
                          members(mesh.dp_group(), r) == range(s, dp, sp) &&
                          members(mesh.zero_group(), r) == range(0, P, 1) &&
                          members(mesh.ulysses_group(), r) == range(d * sp + j * u, u, 1) &&
                          members(mesh.ring_group(), r) == range(d * sp + i, sp / u, u) &&
                          mesh.sp_mesh().ulysses == u && mesh.sp_mesh().ring == sp / u;
          std::lock_guard lock(m);
          wrong += !ok;
        });
        CHECK(wrong == 0);
      }
    }
}

TEST_CASE("mesh: ulysses = 0 means Ulysses over the whole sequence-parallel group") {
  seqpar::run_in_process(4, seqpar::memory_space::host, [&](seqpar::in_process_communicator& world) {
    seqpar::mesh mesh(world, {.dp = 2, .sp = 2});
    CHECK(mesh.shape().ulysses == 2);
    CHECK(mesh.ring_group().size() == 1);
  });
}

TEST_CASE("all or nothing: a mesh whose sizes do not fit the world, on one rank at a time") {
  auto bad = [](seqpar::mesh_shape shape) {
    return [shape](seqpar::in_process_communicator& world, bool is_bad, seqpar_test::sentinels&) {
      seqpar::mesh mesh(world, is_bad ? shape : seqpar::mesh_shape{.dp = 2, .sp = 2});
    };
  };
  seqpar_test::expect_all_or_nothing(4, "shape: dp * sp = 6; expected the world group's 4 ranks",
                                     bad({.dp = 3, .sp = 2}));
  seqpar_test::expect_all_or_nothing(4, "shape.ulysses: expected a divisor of sp = 2 (or 0 for sp), got 3",
                                     bad({.dp = 2, .sp = 2, .ulysses = 3}));
  seqpar_test::expect_all_or_nothing(4, "shape: expected dp >= 1 and sp >= 1, got dp = 0, sp = 4",
                                     bad({.dp = 0, .sp = 4}));
}
