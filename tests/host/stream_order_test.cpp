// The host model of CUDA stream order (seqpar_test/stream_recording.hpp) against cases worked out
// by hand from CUDA's rules: work on one stream runs in order; a wait orders what a stream
// enqueues afterwards after what the other held at the wait, and nothing enqueued there later;
// waits compose; a stream-ordered free must come after every use.
#include <seqpar_test/stream_recording.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace {
using seqpar_test::recording_launcher;
using seqpar_test::stream_order_log;

struct buffers {
  std::vector<float> x = std::vector<float>(64), y = std::vector<float>(64);
  seqpar::tensor_view<float> vx = seqpar::make_bshd(x.data(), 1, 4, 2, 8), vy = seqpar::make_bshd(y.data(), 1, 4, 2, 8);
};

bool mentions(const stream_order_log& log, const std::string& what) {
  for (const auto& f : log.findings())
    if (f.find(what) != std::string::npos) return true;
  return false;
}

// Stand-ins for kernels: only their parameter types matter to the recording launcher.
void reads_x_writes_y(seqpar::tensor_view<const float>, float*, int) {}
void reads_state(seqpar::const_state_view, const float*) {}
}  // namespace

TEST_CASE("stream order: a read on another stream needs a wait after the write") {
  buffers b;
  stream_order_log log;
  const auto main = log.stream("main"), side = log.stream("side");
  log.name(b.vx, "x");
  log.write(b.vx, main, "the producer");
  log.read(b.vx, side, "the consumer");
  REQUIRE(log.findings().size() == 1);
  CHECK(log.findings()[0] == "the consumer reads x on side, not ordered after the producer (a write on main)");

  stream_order_log ordered;
  const auto m2 = ordered.stream("main"), s2 = ordered.stream("side");
  ordered.write(b.vx, m2, "the producer");
  ordered.order(s2, m2);
  ordered.read(b.vx, s2, "the consumer");
  CHECK_MESSAGE(ordered.findings().empty(), ordered.report());
}

TEST_CASE("stream order: a wait covers only the work enqueued before it") {
  buffers b;
  stream_order_log log;
  const auto main = log.stream("main"), side = log.stream("side");
  log.order(side, main);
  log.write(b.vx, main, "a late write");
  log.read(b.vx, side, "the consumer");
  CHECK(log.findings().size() == 1);
}

TEST_CASE("stream order: waits compose, and the same stream needs none") {
  buffers b;
  stream_order_log log;
  const auto a = log.stream("a"), m = log.stream("m"), c = log.stream("c");
  log.write(b.vx, a, "w");
  log.order(m, a);
  log.order(c, m);
  log.read(b.vx, c, "r");
  log.write(b.vx, c, "w2");
  log.read(b.vx, c, "r2");
  CHECK_MESSAGE(log.findings().empty(), log.report());
  // Disjoint memory never conflicts; two reads never conflict.
  log.write(b.vy, a, "wy");
  log.read(b.vx, c, "r3");
  CHECK_MESSAGE(log.findings().empty(), log.report());
}

TEST_CASE("stream order: a write after a read on another stream needs a wait") {
  buffers b;
  stream_order_log log;
  const auto main = log.stream("main"), side = log.stream("side");
  log.name(b.vx, "x");
  log.read(b.vx, side, "the reader");
  log.write(b.vx, main, "the next step");
  CHECK(mentions(log, "the next step writes x on main, not ordered after the reader (a read on side)"));
}

TEST_CASE("recording launcher: parameters to const are read, the rest written, on the launch's stream") {
  buffers b;
  recording_launcher rec;
  const auto main = rec.log->stream("main"), side = rec.log->stream("side");
  rec.log->name(b.vx, "x");
  rec.log->name(b.vy, "y");
  // A non-const view passed where the kernel takes a const one is a read.
  rec(reads_x_writes_y, dim3(1), dim3(32), 0, main, b.vx, b.y.data(), 3);
  rec(reads_x_writes_y, dim3(1), dim3(32), 0, side, b.vx, b.y.data() + 8, 3);  // y again, inside its named range
  REQUIRE(rec.log->findings().size() == 1);
  CHECK(rec.log->findings()[0] ==
        "launch 2 (on side) writes y on side, not ordered after launch 1 (on main) (a write on main)");

  recording_launcher rec2;
  const auto m2 = rec2.log->stream("main"), s2 = rec2.log->stream("side");
  rec2.log->write(b.vx, m2, "x's producer");
  const auto st = seqpar::make_state(b.x.data(), 1, 2, 4, 8);
  rec2(reads_state, dim3(1), dim3(32), 0, s2, st, static_cast<const float*>(nullptr));
  CHECK(rec2.log->findings().size() == 1);
  rec2.order(s2, m2);
  rec2(reads_state, dim3(1), dim3(32), 0, s2, st, static_cast<const float*>(nullptr));
  CHECK(rec2.log->findings().size() == 1);
}

TEST_CASE("recording launcher: a workspace freed on its stream while another still uses it") {
  recording_launcher rec;
  const auto main = rec.log->stream("main"), side = rec.log->stream("side");
  float* p = nullptr;
  {
    auto w = rec.workspace(16, main);
    p = w.data();
    rec.order(side, main);  // the allocation is ordered before side's use
    rec(reads_x_writes_y, dim3(1), dim3(32), 0, side, seqpar::tensor_view<const float>{}, w.data(), 0);
    CHECK_MESSAGE(rec.log->findings().empty(), rec.log->report());
  }  // freed on main, which never waited for side
  CHECK(mentions(*rec.log, "its free writes workspace 1 on main, not ordered after launch 1 (on side)"));
  rec(reads_x_writes_y, dim3(1), dim3(32), 0, main, seqpar::tensor_view<const float>{}, p, 0);
  CHECK(mentions(*rec.log, "launch 2 (on main) uses workspace 1 on main after its free"));

  recording_launcher joined;
  const auto m2 = joined.log->stream("main"), s2 = joined.log->stream("side");
  {
    auto w = joined.workspace(16, m2);
    joined.order(s2, m2);
    joined(reads_x_writes_y, dim3(1), dim3(32), 0, s2, seqpar::tensor_view<const float>{}, w.data(), 0);
    joined.order(m2, s2);
  }
  CHECK_MESSAGE(joined.log->findings().empty(), joined.log->report());
}
