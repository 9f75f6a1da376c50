// The communicator concept: shipped backends satisfy it; a type missing a part fails exactly there.
#include <seqpar/comm/agreement.hpp>
#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/in_process.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace {
// Everything but split.
struct no_split {
  using communicator_concept = seqpar::communicator_tag;
  int rank() const { return 0; }
  int size() const { return 1; }
  seqpar::memory_space memory() const { return seqpar::memory_space::host; }
  template <class T> void all_to_all(std::span<const T>, std::span<T>, std::size_t, seqpar::stream_t = nullptr) {}
  template <class T>
  void all_to_all_v(std::span<const T>, std::span<const std::size_t>, std::span<const std::size_t>, std::span<T>,
                    std::span<const std::size_t>, std::span<const std::size_t>, seqpar::stream_t = nullptr) {}
  template <class T> void neighbor_exchange(std::span<const T>, int, std::span<T>, int, seqpar::stream_t = nullptr) {}
  template <class T> void all_gather(std::span<const T>, std::span<T>, seqpar::stream_t = nullptr) {}
  template <class T> void reduce_scatter(std::span<const T>, std::span<T>, seqpar::stream_t = nullptr) {}
  template <class T> void all_reduce(std::span<const T>, std::span<T>, seqpar::stream_t = nullptr) {}
  void barrier(seqpar::stream_t = nullptr) {}
};

// Complete, but never opted in.
struct not_opted_in : no_split {
  using communicator_concept = void;
  not_opted_in split(int, int) const { return {}; }
};

struct opted_in : no_split {
  opted_in split(int, int) const { return {}; }
};
}  // namespace

TEST_CASE("shipped communicators satisfy the concept; incomplete or silent types do not") {
  static_assert(seqpar::communicator<seqpar::in_process_communicator>);
  static_assert(seqpar::communicator<seqpar::counting_communicator<seqpar::in_process_communicator>>);
  static_assert(seqpar::communicator<opted_in>);
  static_assert(!seqpar::communicator<no_split>);
  static_assert(!seqpar::detail::has_split<no_split>);
  static_assert(seqpar::detail::has_all_to_all_v<no_split>);
  static_assert(!seqpar::communicator<not_opted_in>);
  static_assert(!seqpar::detail::opts_into_communicator<not_opted_in>);
  static_assert(!seqpar::communicator<int>);
  CHECK(seqpar::communicator<opted_in>);
}

namespace {
// A user's communicator without all_gather_value: it forwards all_gather to an in-process rank.
struct gathers_only {
  using communicator_concept = seqpar::communicator_tag;
  seqpar::in_process_communicator* inner;
  int rank() const { return inner->rank(); }
  int size() const { return inner->size(); }
  seqpar::memory_space memory() const { return seqpar::memory_space::host; }
  template <class T> void all_to_all(std::span<const T>, std::span<T>, std::size_t, seqpar::stream_t = nullptr) {}
  template <class T>
  void all_to_all_v(std::span<const T>, std::span<const std::size_t>, std::span<const std::size_t>, std::span<T>,
                    std::span<const std::size_t>, std::span<const std::size_t>, seqpar::stream_t = nullptr) {}
  template <class T> void neighbor_exchange(std::span<const T>, int, std::span<T>, int, seqpar::stream_t = nullptr) {}
  template <class T> void all_gather(std::span<const T> send, std::span<T> recv, seqpar::stream_t s = nullptr) {
    inner->all_gather(send, recv, s);
  }
  template <class T> void reduce_scatter(std::span<const T>, std::span<T>, seqpar::stream_t = nullptr) {}
  template <class T> void all_reduce(std::span<const T>, std::span<T>, seqpar::stream_t = nullptr) {}
  void barrier(seqpar::stream_t = nullptr) {}
  gathers_only split(int, int) const { return *this; }
};
}  // namespace

TEST_CASE("agreement over a communicator without all_gather_value uses its all_gather") {
  static_assert(seqpar::communicator<gathers_only> && !seqpar::detail::gathers_values<gathers_only>);
  std::vector<std::string> what(3);
  seqpar::run_in_process(3, seqpar::memory_space::host, [&](seqpar::in_process_communicator& inner) {
    gathers_only comm{&inner};
    CHECK(seqpar::all_gather_value(comm, 7 * comm.rank(), nullptr) == std::vector<std::int64_t>{0, 7, 14});
    try {
      seqpar::agree_on_arguments(comm, seqpar::call_checks::group, nullptr, [&] {
        SEQPAR_EXPECTS(comm.rank() != 1, "x: expected anything but rank 1");
      });
    } catch (const seqpar::error& e) {
      what[comm.rank()] = e.what();
    }
  });
  CHECK(what[1].find("x: expected anything but rank 1") != std::string::npos);
  for (int r : {0, 2}) CHECK(what[r].find("peer failed: rank(s) 1 rejected their arguments") != std::string::npos);
}
