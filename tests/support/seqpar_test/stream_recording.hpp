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

#include <seqpar/detail/for_each_index.hpp>
#include <seqpar/detail/stream_fork.hpp>
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
#include <span>
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
//! The bytes a span covers (a message's buffer).
template <class T>
byte_range range_of(std::span<T> s) {
  if (s.empty()) return {};
  const auto lo = reinterpret_cast<std::uintptr_t>(s.data());
  return {lo, lo + s.size_bytes()};
}
//! The bytes an mdspan (a state or a chunk-decay view) spans.
template <class E, class X, class L, class A>
byte_range range_of(const cuda::std::mdspan<E, X, L, A>& v) {
  if (v.data_handle() == nullptr || v.size() == 0) return {};
  const auto lo = reinterpret_cast<std::uintptr_t>(v.data_handle());
  return {lo, lo + sizeof(E) * static_cast<std::size_t>(v.mapping().required_span_size())};
}

//! The bytes some memory work touches: ranges in ascending order, none overlapping or adjacent.
using footprint = std::vector<byte_range>;

//! True when the two footprints share a byte.
inline bool overlap(const footprint& a, const footprint& b) {
  for (std::size_t i = 0, j = 0; i < a.size() && j < b.size();) {
    if (a[i].overlaps(b[j])) return true;
    (a[i].hi <= b[j].lo ? i : j)++;
  }
  return false;
}

//! The bytes of `ranges`, sorted and merged.
inline footprint merged(std::vector<byte_range> ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const byte_range& x, const byte_range& y) { return x.lo < y.lo; });
  footprint f;
  for (const auto& r : ranges) {
    if (r.lo == r.hi) continue;
    if (!f.empty() && r.lo <= f.back().hi)
      f.back().hi = std::max(f.back().hi, r.hi);
    else
      f.push_back(r);
  }
  return f;
}

//! The bytes a view's elements occupy, exactly: a head slice of a wider tensor leaves the other
//! heads' rows out, so work on different head groups of one buffer does not conflict.
template <class T>
footprint footprint_of(const seqpar::tensor_view<T>& v) {
  using seqpar::axis;
  if (v.data() == nullptr || v.size() == 0) return {};
  const bool rows = v.stride(axis::head_dim) == 1;  // a head's D elements in a row
  const std::int64_t run = rows ? v.head_dim() : 1, last = rows ? 1 : v.head_dim();
  std::vector<byte_range> r;
  const auto base = reinterpret_cast<std::uintptr_t>(v.data());
  for (std::int64_t b = 0; b < v.batch(); ++b)
    for (std::int64_t s = 0; s < v.seq(); ++s)
      for (std::int64_t h = 0; h < v.heads(); ++h)
        for (std::int64_t d = 0; d < last; ++d) {
          const auto lo = base + sizeof(T) * static_cast<std::size_t>(v.offset(b, s, h, d));
          r.push_back({lo, lo + sizeof(T) * static_cast<std::size_t>(run)});
        }
  return merged(std::move(r));
}
//! The bytes of any other memory (a span, a state): one range.
template <class V>
footprint footprint_of(const V& v) {
  const byte_range r = range_of(v);
  return r.lo == r.hi ? footprint{} : footprint{r};
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
    access(footprint_of(view), s, false, who);
  }
  //! Work on `s` by `who` writes the memory `view` spans.
  template <class V>
  void write(const V& view, cudaStream_t s, const std::string& who) {
    access(footprint_of(view), s, true, who);
  }
  //! Work enqueued on `waiting` from now on runs after the work enqueued on `after` so far.
  void order(cudaStream_t waiting, cudaStream_t after) {
    const std::size_t w = index_of(waiting), a = index_of(after);  // first: either may add a stream
    const auto from = clock_of(a);
    auto& to = clock_of(w);
    for (std::size_t i = 0; i < from.size(); ++i) to[i] = std::max(to[i], from[i]);
  }
  //! What a stream's work so far is: an event recorded on it.
  using mark = std::vector<std::uint64_t>;
  //! The event recorded on `s` now.
  mark snapshot(cudaStream_t s) { return clock_of(index_of(s)); }
  //! Work enqueued on `waiting` from now on runs after the work `m` marks (the wait for an event).
  void wait(cudaStream_t waiting, const mark& m) {
    auto& to = clock_of(index_of(waiting));
    for (std::size_t i = 0; i < m.size(); ++i) to[i] = std::max(to[i], m[i]);
  }

  //! `floats` floats allocated on `s` (stream-ordered), filled with `fill`; they stay allocated
  //! until the log goes, so no later allocation reuses their addresses.
  float* allocate(std::int64_t floats, cudaStream_t s, float fill) {
    float* const p = allocate_unordered(floats, fill);
    access(range_of_floats(p, floats), s, true, "its allocation");
    return p;
  }
  //! `floats` floats allocated outside stream order (cudaMalloc: ready for every stream).
  float* allocate_unordered(std::int64_t floats, float fill) {
    auto& block = blocks_.emplace_back(static_cast<std::size_t>(std::max<std::int64_t>(floats, 1)), fill);
    allocations_.push_back(
        {range_of_floats(block.data(), floats), "workspace " + std::to_string(allocations_.size() + 1), false});
    return block.data();
  }
  //! The allocation at `data` freed on `s` (stream-ordered).
  void free(const void* data, cudaStream_t s) {
    if (allocation* a = live(data)) {
      access(a->range, s, true, "its free");
      a->freed = true;
    }
  }
  //! The allocation at `data` freed outside stream order (cudaFree: after all work on the device).
  void free_unordered(const void* data) {
    if (allocation* a = live(data)) a->freed = true;
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
    access(r.lo == r.hi ? footprint{} : footprint{r}, s, write, who);
  }
  //! The same for the bytes of `f`.
  void access(const footprint& f, cudaStream_t s, bool write, const std::string& who) {
    if (f.empty()) return;
    const byte_range r{f.front().lo, f.back().hi};  // what names it
    const std::size_t on = index_of(s);
    auto& clock = clock_of(on);
    for (const auto& a : allocations_)
      if (a.freed && overlap(footprint{a.range}, f))
        found(who + " uses " + a.name + " on " + streams_[on].name + " after its free");
    for (const auto& e : accesses_) {
      if (!(e.write || write) || !overlap(e.bytes, f)) continue;
      if (e.stream == on || clock[e.stream] >= e.stamp) continue;
      found(who + (write ? " writes " : " reads ") + name_of(r) + " on " + streams_[on].name + ", not ordered after " +
            e.who + (e.write ? " (a write" : " (a read") + " on " + streams_[e.stream].name + ")");
    }
    const std::uint64_t stamp = ++clock[on];
    accesses_.push_back({f, on, stamp, write, who});
  }

 private:
  struct stream_state {
    std::string name;
    std::vector<std::uint64_t> clock;  // per stream: how much of its work this stream's next work runs after
  };
  struct logged_access {
    footprint bytes;
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

  allocation* live(const void* data) {
    for (auto& a : allocations_)
      if (a.range.lo == reinterpret_cast<std::uintptr_t>(data) && !a.freed) return &a;
    found("free of " +
          name_of(byte_range{reinterpret_cast<std::uintptr_t>(data), reinterpret_cast<std::uintptr_t>(data) + 1}) +
          ", which is not a live allocation");
    return nullptr;
  }
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
    log.access(footprint_of(p), s, !std::is_const_v<typename P::element_type>, who);
  } else if constexpr (requires {
                         p.in[0];
                         p.out[0];
                       }) {  // the Ulysses packs' segment views
    for (const auto& v : p.in) log_parameter(log, v, s, who);
    for (const auto& v : p.out) log_parameter(log, v, s, who);
  } else if constexpr (requires { p.documents.ids; }) {  // flash's score positions: the document ids
    log_parameter(log, p.documents.ids, s, who);
  } else if constexpr (holds_totals<P>) {
    if constexpr (requires { p.g; }) log_parameter(log, p.g, s, who);
    log_parameter(log, p.totals, s, who);
  } else {
    static_assert(pointer_free<P>,
                  "recording_launcher: say in pointer_free or log_parameter how this kernel "
                  "parameter type reads or writes memory");
  }
}

//! A layer's side stream, its waits and its zero fills, logged instead of enqueued.
class recording_stream_fork final : public seqpar::detail::stream_fork {
 public:
  //! Logs into `log`; with `joins` false, leaves out every join (to see that the log finds that).
  explicit recording_stream_fork(std::shared_ptr<stream_order_log> log, bool joins = true)
      : log_(std::move(log)), joins_(joins) {}

 private:
  cudaStream_t fork_device(cudaStream_t main) override {
    if (!side_) side_ = log_->stream("the side stream");
    log_->order(side_, main);
    return side_;
  }
  void join_device(cudaStream_t main) override {
    if (joins_) log_->order(main, side_);
  }
  void mark_device() override { marked_ = log_->snapshot(side_); }
  void wait_for_mark_device(cudaStream_t main) override { log_->wait(main, marked_); }
  void zero_device(float* p, std::size_t floats, cudaStream_t stream) override {
    log_->access(range_of(std::span<float>(p, floats)), stream, true, "a zero fill");
  }

  std::shared_ptr<stream_order_log> log_;
  bool joins_;
  cudaStream_t side_ = nullptr;
  stream_order_log::mark marked_;
};

//! Logs what kernel(params...) reads and writes on `s`: each parameter as its type says. A more
//! specialised overload in this namespace (found by argument-dependent lookup through the log)
//! says more of one kernel, where a parameter's type alone does not tell what it touches.
template <class Kernel, class... Params>
void log_launch(stream_order_log& log, Kernel, cudaStream_t s, const std::string& who, const Params&... params) {
  (log_parameter(log, params, s, who), ...);
}

//! Element-wise work (detail/for_each_index.hpp) has no parameter list to read: each body says
//! what its n indices touch with an overload of this (found through the log by argument-dependent
//! lookup); a body with none is a compile error that says so.
template <class Op>
void log_element_wise(stream_order_log&, const Op&, std::int64_t, cudaStream_t, const std::string&) {
  static_assert(sizeof(Op) == 0,
                "recording_launcher: say in a log_element_wise overload what this element-wise "
                "body reads and writes");
}
//! A fill writes its n floats.
inline void log_element_wise(stream_order_log& log, const seqpar::detail::fill_floats& op, std::int64_t n,
                             cudaStream_t s, const std::string& who) {
  log.write(std::span<float>(op.p, static_cast<std::size_t>(n)), s, who);
}
//! A sum reads its n floats and writes (adds to) the accumulator's.
inline void log_element_wise(stream_order_log& log, const seqpar::detail::add_floats& op, std::int64_t n,
                             cudaStream_t s, const std::string& who) {
  log.read(std::span<const float>(op.from, static_cast<std::size_t>(n)), s, who);
  log.write(std::span<float>(op.to, static_cast<std::size_t>(n)), s, who);
}

//! A launcher that runs nothing and logs every launch's reads and writes, every workspace and every
//! wait into `log` (see the file comment).
struct recording_launcher {
  std::shared_ptr<stream_order_log> log = std::make_shared<stream_order_log>();  //!< shared by copies
  seqpar::detail::device_info info{132, 9};                                      //!< what device() reports
  bool joins = true;  //!< false: the layers' side streams are never joined (a mistake the log must find)

  //! Logs kernel(args...) on `stream`, each argument as the kernel's parameter type sees it.
  template <class... Params, class... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t, cudaStream_t stream,
                  const Args&... args) const {
    const std::string who = log->next_launch(stream);
    const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || threads == 0 ||
        threads > 1024 || grid.x > 2147483647u)
      log->found(who + " has grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
                 std::to_string(grid.z) + ") and " + std::to_string(threads) + " threads a block, which CUDA refuses");
    const std::tuple<std::remove_cvref_t<Params>...> parameters{args...};
    std::apply([&](const auto&... p) { log_launch(*log, kernel, stream, who, p...); }, parameters);
  }
  //! Logs element-wise work of `n` indices on `stream` (see log_element_wise).
  template <class Op>
  void for_each_index(std::int64_t n, const Op& op, cudaStream_t stream) const {
    log_element_wise(*log, op, n, stream, log->next_launch(stream));
  }
  //! The device the planning is told of.
  seqpar::detail::device_info device() const { return info; }
  //! The side stream, waits and zero fills of a layer over a policy with this launcher, logged.
  std::unique_ptr<seqpar::detail::stream_fork> make_stream_fork() const {
    return std::make_unique<recording_stream_fork>(log, joins);
  }

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
