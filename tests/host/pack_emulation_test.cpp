// The CUDA pack and unpack kernels of the Ulysses exchange on the host, every block and thread of
// the grid that the shipped launch planning chooses (vectors or scalars, 32-bit row arithmetic,
// grid size for the device) run in turn, against the host loops that the exact-map tests check:
// for every rank of groups of 1 to 4, uneven and zigzag shards, uneven heads, GQA, every head-group
// split, float, half and bfloat16, packed views (16-byte vectors) and padded ones (scalars), on a
// large device (a block per 32 rows) and a one-multiprocessor one (each thread walks many rows).
// Pack outputs must match bit for bit, poisoned gaps included; the inverse unpack sums kv-head
// copies in fp32 in the same order, so it matches bit for bit too. The 32-bit row arithmetic is
// chosen only where no thread's row index, nor the one it steps to past its last, overflows.
#include <seqpar_test/warp_emulation.hpp>  // first: the kernel headers below compile as host code

#include <seqpar/ulysses/all_to_all_heads.hpp>
#include <seqpar/ulysses/detail/heads_pack_cuda.cuh>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {
namespace dev = seqpar::detail::device;
using seqpar::shape4;

// The pack kernels never synchronise within a block, so every CUDA thread can run to completion in
// turn on the calling thread: the same blocks, threads and indices as seqpar_emulation::launcher,
// without a std::thread per CUDA thread.
struct sequential_launcher {
  int multiprocessors = 132;  //!< what device() reports: the grid planning caps blocks by it
  seqpar::detail::device_info device() const { return {multiprocessors, 9}; }
  template <class... Params, class... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t, cudaStream_t,
                  const Args&... args) const {
    using namespace seqpar_emulation;
    grid_size = {grid.x, grid.y, grid.z};
    block_size = {block.x, block.y, block.z};
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x)
          for (unsigned t = 0; t < block.x; ++t) {
            block_index = {x, y, z};
            thread_index = {t, 0, 0};
            kernel(args...);
          }
  }
};

// A tensor in host memory of `extents`, its rows `pad` elements apart beyond H * D (0: packed),
// poisoned everywhere or filled with values distinct per (tensor tag, position).
template <class T>
struct padded {
  shape4 extents;
  std::int64_t pad;
  std::vector<T> data;
  padded(shape4 e, std::int64_t pad_, int tag, bool values)
      : extents(e), pad(pad_), data(static_cast<std::size_t>(e[0] * e[1] * (e[2] * e[3] + pad_)) + 8,
                                    seqpar_test::poison<T>()) {
    if (!values) return;
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = seqpar::from_float<T>(static_cast<float>((tag * 97 + i) % 251) - 125.0f);
  }
  seqpar::tensor_view<T> view() {
    const std::int64_t row = extents[2] * extents[3] + pad;
    return seqpar::make_strided(data.data(), extents, {extents[1] * row, row, extents[3], 1});
  }
};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Every walk of one rank's exchange, emulated against the host loops; returns the walks that differ.
template <class T>
std::string check_rank(const seqpar::all_to_all_heads_plan& plan, std::int64_t pad, const sequential_launcher& emulated) {
  const auto& g = plan.geometry(seqpar::heads_payload::qkv);
  const std::size_t seq_n = plan.seq_side_elements(seqpar::heads_payload::qkv),
                    heads_n = plan.heads_side_elements(seqpar::heads_payload::qkv);
  std::string wrong;
  auto seq_side = [&](int t, bool values) {
    return padded<T>(seqpar::detail::seq_side_extents(plan, t), pad, t + 1, values);
  };
  auto heads_side = [&](int t, bool values) {
    return padded<T>(seqpar::detail::heads_side_extents(plan, t), pad, t + 11, values);
  };
  // A pack walk: three valued tensors of one side into a poisoned buffer of n elements, by the host
  // loop and by the emulated kernels.
  auto check_pack = [&](auto side, std::size_t n, auto host_pack, auto device_pack, const char* name) {
    std::vector<padded<T>> in{side(0, true), side(1, true), side(2, true)};
    seqpar::detail::segment_views<T> v{{in[0].view(), in[1].view(), in[2].view()}, {}};
    std::vector<T> host(n, seqpar_test::poison<T>()), device = host;
    host_pack(v, host.data());
    device_pack(v, device.data());
    if (!same_bits(host, device)) wrong += name;
  };
  // An unpack walk: a valued buffer of n elements (value(i)) into three poisoned tensors of one side.
  auto check_unpack = [&](auto side, std::size_t n, auto value, auto host_unpack, auto device_unpack,
                          const std::string& name) {
    std::vector<T> buffer(n);
    for (std::size_t i = 0; i < buffer.size(); ++i) buffer[i] = seqpar::from_float<T>(value(i));
    std::vector<padded<T>> host{side(0, false), side(1, false), side(2, false)}, device = host;
    seqpar::detail::segment_views<T> hv{{}, {host[0].view(), host[1].view(), host[2].view()}},
        dv{{}, {device[0].view(), device[1].view(), device[2].view()}};
    host_unpack(buffer.data(), hv);
    device_unpack(buffer.data(), dv);
    for (int t = 0; t < 3; ++t)
      if (!same_bits(host[t].data, device[t].data)) wrong += name + "[" + std::to_string(t) + "]";
  };
  using views = seqpar::detail::segment_views<T>;
  // Forward pack: sequence shards into the buffer.
  check_pack(
      seq_side, seq_n, [&](const views& v, T* out) { seqpar::detail::pack_seq_side(g, v, out); },
      [&](const views& v, T* out) { dev::pack_seq_side(g, v, out, nullptr, emulated); }, " seq_side_pack");
  // Forward unpack: the buffer into head shards.
  check_unpack(
      heads_side, heads_n, [](std::size_t i) { return static_cast<float>(i % 509) - 250.0f; },
      [&](const T* in, const views& v) { seqpar::detail::unpack_heads_side(g, in, v); },
      [&](const T* in, const views& v) { dev::unpack_heads_side(g, in, v, nullptr, emulated); }, " heads_side_unpack");
  // Inverse pack: head shards into the buffer.
  check_pack(
      heads_side, heads_n, [&](const views& v, T* out) { seqpar::detail::pack_heads_side(g, v, out); },
      [&](const views& v, T* out) { dev::pack_heads_side(g, v, out, nullptr, emulated); }, " heads_side_pack");
  // Inverse unpack: the buffer back into sequence shards, kv heads summed over their owners.
  check_unpack(
      seq_side, seq_n, [](std::size_t i) { return static_cast<float>(i % 383) * 0.25f; },
      [&](const T* in, const views& v) { seqpar::detail::unpack_seq_side_sum(g, in, v); },
      [&](const T* in, const views& v) { dev::unpack_seq_side_sum(g, in, v, nullptr, emulated); }, " seq_side_sum");
  return wrong;
}
}  // namespace

TEST_CASE_TEMPLATE("pack kernels under the emulated device equal the host loops, every walk", T, float, __half,
                   __nv_bfloat16) {
  struct heads {
    int H, H_kv;
  };
  struct sharding {
    seqpar::shard_strategy strategy;
    std::int64_t S;
  };
  for (int P = 1; P <= 4; ++P)
    for (const heads h : {heads{4, 4}, heads{8, 2}, heads{7, 7}, heads{4, 1}, heads{10, 5}})
      for (const sharding sh : {sharding{seqpar::shard_strategy::contiguous, 2 * P + 1},
                                sharding{seqpar::shard_strategy::contiguous, 13},
                                sharding{seqpar::shard_strategy::zigzag, 4 * P}})
        for (std::int64_t pad : {0, 1})
          // 132 multiprocessors: a block per 32 rows; 1: the grid capped, each thread walks many rows.
          for (int multiprocessors : {132, 1}) {
            const auto part = seqpar::make_seq_partition(sh.S, P, sh.strategy);
            const auto split = seqpar::make_head_partition(h.H, h.H_kv, P);
            int fewest = h.H_kv;
            for (int r = 0; r < P; ++r) fewest = std::min(fewest, split.kv_count(r));
            // Every head group split the ranks allow (a group: a balanced share of each rank's kv heads).
            for (int groups = 1; groups <= std::max(fewest, 1); ++groups)
              for (int group = 0; group < groups; ++group)
                for (int r = 0; r < P; ++r) {
                  const auto plan = seqpar::make_all_to_all_heads_plan(
                      r, part, {.batch = 2, .heads = h.H, .kv_heads = h.H_kv, .head_dim = 16}, seqpar::dtype_of<T>,
                      {groups, group});
                  INFO("P=" << P << " H=" << h.H << " H_kv=" << h.H_kv << " S=" << sh.S << " "
                            << seqpar::to_string(sh.strategy) << " pad=" << pad << " multiprocessors=" << multiprocessors
                            << " groups=" << groups << " group=" << group << " rank=" << r);
                  CHECK(check_rank<T>(plan, pad, sequential_launcher{multiprocessors}) == "");
                }
          }
}

TEST_CASE("the pack walks count rows in 32 bits only where no thread's next row overflows") {
  constexpr std::int64_t max32 = std::numeric_limits<std::int32_t>::max();
  for (std::int64_t rows : {std::int64_t{1} << 20, (max32 - 256) / 2, (max32 - 255) / 2 + 1, std::int64_t{1} << 30,
                            max32 - 300, max32, max32 + 1})
    for (int lanes : {1, 2, 4, 8})
      for (int block_rows : {1, 4})
        for (int sms : {1, 132, 100000}) {
          const dim3 grid = dev::row_grid(rows, {lanes}, block_rows, {sms, 9});
          // A thread's rows are first, first + step, ...; the last below `rows`, then one step more.
          const std::int64_t step = std::int64_t{grid.x} * (256 / lanes), next_past_last = rows - 1 + step;
          if (dev::rows_fit_32_bits(rows))
            CHECK_MESSAGE(next_past_last <= max32, rows << " rows, " << grid.x << " blocks");
        }
  CHECK(dev::rows_fit_32_bits(std::int64_t{1} << 20));  // the narrow walk is still taken where it is safe
  CHECK(dev::rows_fit_32_bits((max32 - 256) / 2));
  CHECK_FALSE(dev::rows_fit_32_bits(max32));
}
