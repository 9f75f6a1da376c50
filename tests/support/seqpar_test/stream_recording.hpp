//! @file stream_recording.hpp
//! CUDA stream order checked on the host. stream_order_log models each stream as a vector clock:
//! work enqueued on a stream happens after what was enqueued on it before and, once the stream
//! waits for another (an event recorded there, then waited for), after everything that other
//! stream held at that moment. Every access to memory is logged with its stream and clock; a read
//! not ordered after the last conflicting write, a write not ordered after earlier reads and
//! writes, a free of memory still in use on another stream and a use after a free are findings.
//!
//! recording_launcher is a launcher for the CUDA policies (seqpar/policy/detail/launcher.cuh)
//! that runs nothing: each launch logs what it reads and writes, from the kernel's parameter types
//! (a view or pointer to const is read, any other written), workspaces log their allocation and
//! their free, order() logs the wait. A launch configuration CUDA refuses (an empty grid or block,
//! a grid y or z past 65535, more than 1024 threads a block) is a finding too. Only the order is
//! checked: values read back with to_host are the workspace's fill (-1, so a search kernel's
//! result reads "nothing found").
#pragma once

#include <seqpar/memory_space.hpp>
#include <seqpar/policy/detail/launcher.cuh>
#include <seqpar/policy/linear_state.hpp>
#include <seqpar/tensor.hpp>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace seqpar_test {

//! The bytes [lo, hi) of host memory that stand for device memory.
struct byte_range {
  std::uintptr_t lo = 0, hi = 0;  //!< first byte, one past the last
  //! True when the two share a byte.
  bool overlaps(const byte_range& o) const { return lo < o.hi && o.lo < hi; }
};

//! The bytes a view spans (empty for an empty view).
template <class T>
byte_range range_of(const seqpar::tensor_view<T>& v) {
  if (v.data() == nullptr || v.size() == 0) return {};
  const auto lo = reinterpret_cast<std::uintptr_t>(v.data());
  return {lo, lo + sizeof(T) * static_cast<std::size_t>(v.required_span_size())};
}
//! The bytes an mdspan (a state or a chunk-decay view) spans.
template <class E, class X, class L, class A>
byte_range range_of(const cuda::std::mdspan<E, X, L, A>& v) {
  if (v.data_handle() == nullptr || v.size() == 0) return {};
  const auto lo = reinterpret_cast<std::uintptr_t>(v.data_handle());
  return {lo, lo + sizeof(E) * static_cast<std::size_t>(v.mapping().required_span_size())};
}

//! The log of a device path's streams, waits and memory accesses, and what it found out of order.
class stream_order_log {
 public:
  //! A stream of its own, named `name` in the findings (a handle nothing is ever enqueued on).
  cudaStream_t stream(std::string name) {
    streams_.push_back({std::move(name), {}});
    streams_.back().clock.resize(streams_.size(), 0);
    return reinterpret_cast<cudaStream_t>(static_cast<std::uintptr_t>(streams_.size()) << 4);
  }
  //! Names the memory `view` spans in the findings.
  template <class V>
  void name(const V& view, std::string name) {
    names_.push_back({range_of(view), std::move(name)});
  }
  //! Work on `s` by `who` reads the memory `view` spans.
  template <class V>
  void read(const V& view, cudaStream_t s, const std::string& who) {
    access(range_of(view), s, false, who);
  }
  //! Work on `s` by `who` writes the memory `view` spans.
  template <class V>
  void write(const V& view, cudaStream_t s, const std::string& who) {
    access(range_of(view), s, true, who);
  }
  //! Work enqueued on `waiting` from now on runs after the work enqueued on `after` so far.
  void order(cudaStream_t waiting, cudaStream_t after) {
    const std::size_t w = index_of(waiting), a = index_of(after);  // first: either may add a stream
    const auto from = clock_of(a);
    auto& to = clock_of(w);
    for (std::size_t i = 0; i < from.size(); ++i) to[i] = std::max(to[i], from[i]);
  }
  //! `floats` floats allocated on `s` (stream-ordered), filled with `fill`; they stay allocated
  //! until the log goes, so no later allocation reuses their addresses.
  float* allocate(std::int64_t floats, cudaStream_t s, float fill) {
    auto& block = blocks_.emplace_back(static_cast<std::size_t>(std::max<std::int64_t>(floats, 1)), fill);
    const byte_range r = range_of_floats(block.data(), floats);
    allocations_.push_back({r, "workspace " + std::to_string(allocations_.size() + 1), false});
    access(r, s, true, "its allocation");
    return block.data();
  }
  //! The allocation at `data` freed on `s` (stream-ordered).
  void free(const float* data, cudaStream_t s) {
    for (auto& a : allocations_)
      if (a.range.lo == reinterpret_cast<std::uintptr_t>(data) && !a.freed) {
        access(a.range, s, true, "its free");
        a.freed = true;
        return;
      }
    found("free of " + name_of(range_of_floats(data, 1)) + ", which is not a live allocation");
  }
  //! The memory known to contain `p`: an allocation or a named range (else the one byte at p).
  byte_range known_range(const void* p) const {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    for (const auto& x : allocations_)
      if (x.range.lo <= a && a < x.range.hi) return x.range;
    for (const auto& x : names_)
      if (x.range.lo <= a && a < x.range.hi) return x.range;
    return {a, a + 1};
  }
  //! A label for the next launch ("launch 3 (on side)").
  std::string next_launch(cudaStream_t s) {
    return "launch " + std::to_string(++launches_) + " (on " + name_of(s) + ")";
  }
  //! What was out of order, each once, in the order found.
  const std::vector<std::string>& findings() const { return findings_; }
  //! The findings on one line each (for a failing check's message).
  std::string report() const {
    std::string r;
    for (const auto& f : findings_) r += f + "\n";
    return r;
  }

  //! Adds a finding (once).
  void found(const std::string& f) {
    if (std::find(findings_.begin(), findings_.end(), f) == findings_.end()) findings_.push_back(f);
  }

  //! Logs an access to `r` on `s` by `who` and checks it against every earlier one it conflicts with.
  void access(byte_range r, cudaStream_t s, bool write, const std::string& who) {
    if (r.lo == r.hi) return;
    const std::size_t on = index_of(s);
    auto& clock = clock_of(on);
    for (const auto& a : allocations_)
      if (a.freed && a.range.overlaps(r))
        found(who + " uses " + a.name + " on " + streams_[on].name + " after its free");
    for (const auto& e : accesses_) {
      if (!(e.write || write) || !e.range.overlaps(r)) continue;
      if (e.stream == on || clock[e.stream] >= e.stamp) continue;
      found(who + (write ? " writes " : " reads ") + name_of(r) + " on " + streams_[on].name + ", not ordered after " +
            e.who + (e.write ? " (a write" : " (a read") + " on " + streams_[e.stream].name + ")");
    }
    const std::uint64_t stamp = ++clock[on];
    accesses_.push_back({r, on, stamp, write, who});
  }

 private:
  struct stream_state {
    std::string name;
    std::vector<std::uint64_t> clock;  // per stream: how much of its work this stream's next work runs after
  };
  struct logged_access {
    byte_range range;
    std::size_t stream;
    std::uint64_t stamp;
    bool write;
    std::string who;
  };
  struct named_range {
    byte_range range;
    std::string name;
  };
  struct allocation {
    byte_range range;
    std::string name;
    bool freed;
  };

  static byte_range range_of_floats(const float* p, std::int64_t floats) {
    const auto lo = reinterpret_cast<std::uintptr_t>(p);
    return {lo, lo + sizeof(float) * static_cast<std::size_t>(std::max<std::int64_t>(floats, 1))};
  }
  // Streams this log did not make (the legacy default stream, a caller's) join on first use.
  std::size_t index_of(cudaStream_t s) {
    const auto h = reinterpret_cast<std::uintptr_t>(s);
    if (h != 0 && (h & 15) == 0 && (h >> 4) <= streams_.size()) return (h >> 4) - 1;
    for (std::size_t i = 0; i < foreign_.size(); ++i)
      if (foreign_[i].first == s) return foreign_[i].second;
    std::ostringstream n;
    if (s == nullptr)
      n << "the legacy default stream";
    else
      n << "stream " << static_cast<const void*>(s);
    (void)stream(n.str());
    foreign_.emplace_back(s, streams_.size() - 1);
    return streams_.size() - 1;
  }
  // A stream's clock, with an entry for every stream made so far.
  std::vector<std::uint64_t>& clock_of(std::size_t i) {
    auto& c = streams_[i].clock;
    c.resize(streams_.size(), 0);
    return c;
  }
  std::string name_of(cudaStream_t s) { return streams_[index_of(s)].name; }
  std::string name_of(const byte_range& r) const {
    for (const auto& x : names_)
      if (x.range.overlaps(r)) return x.name;
    for (const auto& x : allocations_)
      if (x.range.overlaps(r)) return x.name;
    std::ostringstream n;
    n << "memory at " << reinterpret_cast<const void*>(r.lo);
    return n.str();
  }
  std::vector<stream_state> streams_;
  std::vector<std::pair<cudaStream_t, std::size_t>> foreign_;
  std::vector<logged_access> accesses_;
  std::vector<named_range> names_;
  std::vector<allocation> allocations_;
  std::deque<std::vector<float>> blocks_;
  std::vector<std::string> findings_;
  int launches_ = 0;
};

//! Kernel parameter types that carry no pointer: nothing to log.
template <class T>
inline constexpr bool pointer_free = std::is_arithmetic_v<T> || std::is_enum_v<T>;

//! Kernel parameters that hold views as members: totals, and g with it (the gated weights and walk segments).
template <class T>
concept holds_totals = requires(const T& t) { t.totals; };

//! A tensor_view or an mdspan (a state, a chunk-decay view): element_type says whether it is read-only.
template <class P>
concept a_view = requires(const P& p) { range_of(p); };

//! Logs what a kernel parameter of type P reads or writes on `s`.
template <class P>
void log_parameter(stream_order_log& log, const P& p, cudaStream_t s, const std::string& who) {
  if constexpr (pointer_free<P>) {
  } else if constexpr (std::is_pointer_v<P>) {
    log.access(p == nullptr ? byte_range{} : log.known_range(p), s, !std::is_const_v<std::remove_pointer_t<P>>, who);
  } else if constexpr (a_view<P>) {
    log.access(range_of(p), s, !std::is_const_v<typename P::element_type>, who);
  } else if constexpr (holds_totals<P>) {
    if constexpr (requires { p.g; }) log_parameter(log, p.g, s, who);
    log_parameter(log, p.totals, s, who);
  } else {
    static_assert(pointer_free<P>,
                  "recording_launcher: say in pointer_free or log_parameter how this kernel "
                  "parameter type reads or writes memory");
  }
}

//! A launcher that runs nothing and logs every launch's reads and writes, every workspace and every
//! wait into `log` (see the file comment).
struct recording_launcher {
  std::shared_ptr<stream_order_log> log = std::make_shared<stream_order_log>();  //!< shared by copies
  seqpar::detail::device_info info{132, 9};                                      //!< what device() reports

  //! Logs kernel(args...) on `stream`, each argument as the kernel's parameter type sees it.
  template <class... Params, class... Args>
  void operator()(void (*)(Params...), dim3 grid, dim3 block, std::size_t, cudaStream_t stream,
                  const Args&... args) const {
    const std::string who = log->next_launch(stream);
    const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || threads == 0 ||
        threads > 1024 || grid.x > 2147483647u)
      log->found(who + " has grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
                 std::to_string(grid.z) + ") and " + std::to_string(threads) + " threads a block, which CUDA refuses");
    const std::tuple<std::remove_cvref_t<Params>...> parameters{args...};
    std::apply([&](const auto&... p) { (log_parameter(*log, p, stream, who), ...); }, parameters);
  }
  //! The device the planning is told of.
  seqpar::detail::device_info device() const { return info; }

  //! A workspace allocated and freed in stream order on the stream it was made for.
  class workspace_floats {
   public:
    workspace_floats(stream_order_log& log, std::int64_t floats, cudaStream_t s)
        : log_(log), stream_(s), data_(floats > 0 ? log.allocate(floats, s, -1.0f) : nullptr) {}
    workspace_floats(const workspace_floats&) = delete;
    workspace_floats& operator=(const workspace_floats&) = delete;
    ~workspace_floats() {
      if (data_) log_.free(data_, stream_);
    }
    //! The first float (null when empty).
    float* data() const { return data_; }

   private:
    stream_order_log& log_;
    cudaStream_t stream_;
    float* data_;
  };
  //! `floats` of scratch on `stream`.
  workspace_floats workspace(std::int64_t floats, cudaStream_t stream) const { return {*log, floats, stream}; }
  //! Logs the wait.
  void order(cudaStream_t waiting, cudaStream_t after) const {
    if (waiting != after) log->order(waiting, after);
  }
  //! Logs the read on `stream`, then copies (the host waits for `stream`).
  void to_host(float* dst, const float* src, std::int64_t floats, cudaStream_t stream) const {
    if (floats <= 0) return;
    log->access(log->known_range(src), stream, false, "to_host");
    std::copy(src, src + floats, dst);
  }
};

}  // namespace seqpar_test
