// The MPI backend with one rank per process (run with 2 and 4 processes). Only CHECK is used, never
// REQUIRE: a case that stopped on one rank would leave the others waiting in a collective.
#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/mpi.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

using seqpar_test::key_of;
using seqpar_test::poison;
using seqpar_test::tagged;

namespace {
seqpar::mpi_communicator world() { return seqpar::mpi_communicator(MPI_COMM_WORLD); }
std::size_t uneven_count(int src, int dst) { return static_cast<std::size_t>((3 * src + 5 * dst) % 4 + (src == dst)); }

// Fault injection through the MPI profiling interface: this executable's MPI_Comm_dup,
// MPI_Comm_split, MPI_Comm_free and MPI_Comm_size wrap the PMPI_ ones, count the communicators
// created and freed, and let a test make MPI_Comm_size fail (the last step of setting one up).
struct mpi_faults {
  static inline bool fail_comm_size = false;
  static inline long live_comms = 0;  // created by dup or split minus freed
};
}  // namespace

extern "C" int MPI_Comm_dup(MPI_Comm comm, MPI_Comm* newcomm) {
  const int rc = PMPI_Comm_dup(comm, newcomm);
  if (rc == MPI_SUCCESS) ++mpi_faults::live_comms;
  return rc;
}
extern "C" int MPI_Comm_split(MPI_Comm comm, int color, int key, MPI_Comm* newcomm) {
  const int rc = PMPI_Comm_split(comm, color, key, newcomm);
  if (rc == MPI_SUCCESS && *newcomm != MPI_COMM_NULL) ++mpi_faults::live_comms;
  return rc;
}
extern "C" int MPI_Comm_free(MPI_Comm* comm) {
  const int rc = PMPI_Comm_free(comm);
  if (rc == MPI_SUCCESS) --mpi_faults::live_comms;
  return rc;
}
extern "C" int MPI_Comm_size(MPI_Comm comm, int* size) {
  if (mpi_faults::fail_comm_size) return MPI_ERR_COMM;
  return PMPI_Comm_size(comm, size);
}

TEST_CASE_TEMPLATE("mpi: all_to_all, all_to_all_v, neighbor ring and all_gather move exact bits", T, float, __half,
                   __nv_bfloat16, std::int64_t) {
  auto comm = world();
  const int P = comm.size(), r = comm.rank();
  const std::size_t count = 3;
  std::vector<T> send(P * count), recv(P * count, poison<T>()), want(P * count);
  for (int j = 0; j < P; ++j)
    for (std::size_t i = 0; i < count; ++i) {
      send[j * count + i] = tagged<T>(key_of(r, j, i));
      want[j * count + i] = tagged<T>(key_of(j, r, i));
    }
  comm.all_to_all<T>(send, recv, count, nullptr);
  CHECK(seqpar_test::first_mismatch(recv, want) == -1);

  // all_to_all_v: uneven counts, receive blocks in reverse rank order.
  std::vector<std::size_t> sc(P), sd(P), rc(P), rd(P);
  std::vector<T> vsend;
  for (int j = 0; j < P; ++j) {
    sc[j] = uneven_count(r, j), sd[j] = vsend.size();
    for (std::size_t i = 0; i < sc[j]; ++i) vsend.push_back(tagged<T>(key_of(r, j, i)));
  }
  std::size_t at = 0;
  for (int j = P - 1; j >= 0; --j) rc[j] = uneven_count(j, r), rd[j] = at, at += rc[j];
  std::vector<T> vrecv(at, poison<T>()), vwant(at);
  for (int j = 0; j < P; ++j)
    for (std::size_t i = 0; i < rc[j]; ++i) vwant[rd[j] + i] = tagged<T>(key_of(j, r, i));
  comm.all_to_all_v<T>(vsend, sc, sd, vrecv, rc, rd, nullptr);
  CHECK(seqpar_test::first_mismatch(vrecv, vwant) == -1);

  std::vector<T> ring_send{tagged<T>(key_of(r, 7)), tagged<T>(key_of(r, 8))}, ring_recv(2, poison<T>());
  comm.neighbor_exchange<T>(ring_send, (r + 1) % P, ring_recv, (r + P - 1) % P, nullptr);
  const int left = (r + P - 1) % P;
  CHECK(seqpar_test::first_mismatch(ring_recv, {tagged<T>(key_of(left, 7)), tagged<T>(key_of(left, 8))}) == -1);

  std::vector<T> mine{tagged<T>(key_of(r, 9))}, all(P, poison<T>()), all_want(P);
  for (int j = 0; j < P; ++j) all_want[j] = tagged<T>(key_of(j, 9));
  comm.all_gather<T>(mine, all, nullptr);
  CHECK(seqpar_test::first_mismatch(all, all_want) == -1);
}

TEST_CASE_TEMPLATE("mpi: reduce_scatter and all_reduce sum exactly (16-bit types in fp32)", T, float, __half,
                   __nv_bfloat16, double, std::int32_t) {
  auto comm = world();
  const int P = comm.size(), r = comm.rank();
  const std::size_t n = 5;
  auto value = [](int rank, std::size_t i) { return static_cast<int>((rank * 7 + i * 3) % 11) - 5; };
  std::vector<T> send(n * P), part(n, poison<T>());
  for (std::size_t i = 0; i < n * P; ++i) send[i] = seqpar_test::exact<T>(value(r, i));
  comm.reduce_scatter<T>(send, part, nullptr);
  for (std::size_t i = 0; i < n; ++i) {
    double want = 0;
    for (int j = 0; j < P; ++j) want += value(j, r * n + i);
    CHECK(seqpar_test::as_double(part[i]) == want);
  }
  comm.all_reduce<T>(send, send, nullptr);  // in place
  for (std::size_t i = 0; i < n * P; ++i) {
    double want = 0;
    for (int j = 0; j < P; ++j) want += value(j, i);
    CHECK(seqpar_test::as_double(send[i]) == want);
  }
}

TEST_CASE("mpi: split by parity with reversed keys, then an all_gather inside each part") {
  auto comm = world();
  const int P = comm.size(), r = comm.rank();
  auto part = comm.split(r % 2, -r);
  std::vector<int> members;
  for (int j = P - 1; j >= 0; --j)
    if (j % 2 == r % 2) members.push_back(j);
  CHECK(part.size() == static_cast<int>(members.size()));
  std::vector<std::int32_t> mine{r}, all(part.size(), -1);
  part.all_gather<std::int32_t>(mine, all, nullptr);
  CHECK(std::vector<int>(all.begin(), all.end()) == members);
  comm.barrier(nullptr);
}

TEST_CASE("mpi: counting decorator over MPI records the all_to_all volume") {
  seqpar::counting_communicator<seqpar::mpi_communicator> comm(world());
  const int P = comm.size();
  std::vector<float> send(P * 6), recv(P * 6);
  comm.all_to_all<float>(send, recv, 6, nullptr);
  CHECK(comm.bytes_sent() == static_cast<std::size_t>((P - 1) * 6 * 4));
  CHECK(comm.bytes_sent_to(comm.rank()) == 0);
}

TEST_CASE("mpi: bad input on one rank is reported on every rank before anything moves") {
  auto comm = world();
  const int P = comm.size(), r = comm.rank();
  const int culprit = P - 1;
  std::vector<float> send(r == culprit ? 2 * P - 1 : 2 * P, 1.0f), recv(2 * P, poison<float>());
  try {
    comm.all_to_all<float>(send, recv, 2, nullptr);
    CHECK(false);
  } catch (const seqpar::error& e) {
    const std::string what = e.what();
    if (r == culprit) {
      CHECK(e.code() == seqpar::errc::invalid_argument);
      CHECK(what.find("send: expected group size * count = " + std::to_string(2 * P)) != std::string::npos);
    } else {
      CHECK(e.code() == seqpar::errc::peer_failed);
    }
  }
  for (float x : recv) CHECK(seqpar_test::same_bits(x, poison<float>()));

  // A receive count that disagrees with what the peer sends: found by the receiver, felt by all.
  std::vector<std::size_t> counts(P, 1), displs(P), wrong(P, 1);
  for (int j = 0; j < P; ++j) displs[j] = j;
  wrong[0] = 0;
  std::vector<float> vsend(P, 1.0f), vrecv(P, poison<float>());
  CHECK_THROWS_AS(
      comm.all_to_all_v<float>(vsend, counts, displs, vrecv, r == culprit ? wrong : counts, displs, nullptr),
      seqpar::error);
  for (float x : vrecv) CHECK(seqpar_test::same_bits(x, poison<float>()));

}

TEST_CASE("mpi: neighbor_exchange with a send size the receiver does not expect fails on the receiver") {
  auto comm = world();
  const int P = comm.size(), r = comm.rank();
  const int culprit = P - 1, receiver = 0;  // the culprit sends one element to its right neighbour, rank 0
  std::vector<float> send(r == culprit ? 1 : 2, float(r)), recv(2, poison<float>());
  try {
    comm.neighbor_exchange<float>(send, (r + 1) % P, recv, (r + P - 1) % P, nullptr);
    CHECK(false);
  } catch (const seqpar::error& e) {
    const std::string what = e.what();
    if (r == receiver) {
      CHECK(e.code() == seqpar::errc::invalid_argument);
      CHECK(what.find("recv: expected rank " + std::to_string(culprit) + "'s send size = 1 elements, got 2") !=
            std::string::npos);
    } else {
      CHECK(e.code() == seqpar::errc::peer_failed);
    }
  }
  for (float x : recv) CHECK(seqpar_test::same_bits(x, poison<float>()));
}

TEST_CASE("mpi: neighbor_exchange with a receiver waiting for a rank that sends elsewhere fails on the receiver") {
  auto comm = world();
  const int P = comm.size(), r = comm.rank();
  const int culprit = P - 1;  // sends nothing, while rank 0 still expects its block
  std::vector<float> send(2, float(r)), recv(2, poison<float>());
  try {
    comm.neighbor_exchange<float>(send, r == culprit ? seqpar::no_rank : r + 1, recv, (r + P - 1) % P, nullptr);
    CHECK(false);
  } catch (const seqpar::error& e) {
    const std::string what = e.what();
    if (r == 0) {
      CHECK(e.code() == seqpar::errc::invalid_argument);
      CHECK(what.find("source: rank " + std::to_string(culprit) + " sends to -1; expected it to send to this rank 0") !=
            std::string::npos);
    } else {
      CHECK(e.code() == seqpar::errc::peer_failed);
    }
  }
  for (float x : recv) CHECK(seqpar_test::same_bits(x, poison<float>()));
}

TEST_CASE("mpi: neighbor_exchange to a rank that does not receive from the sender fails, and leaves no stray message") {
  auto comm = world();
  const int P = comm.size(), r = comm.rank();
  // Every rank sends to its right neighbour, but rank 1 receives from nobody.
  std::vector<float> send(2, float(r) + 0.25f), recv(2, poison<float>());
  try {
    comm.neighbor_exchange<float>(send, (r + 1) % P, recv, r == 1 ? seqpar::no_rank : (r + P - 1) % P, nullptr);
    CHECK(false);
  } catch (const seqpar::error& e) {
    const std::string what = e.what();
    if (r == 0) {
      CHECK(e.code() == seqpar::errc::invalid_argument);
      CHECK(what.find("dest: rank 1 receives from -1; expected it to receive from this rank 0") != std::string::npos);
    } else {
      CHECK(e.code() == seqpar::errc::peer_failed);
    }
  }
  for (float x : recv) CHECK(seqpar_test::same_bits(x, poison<float>()));

  // The next, well-formed ring receives this call's data, not a leftover of the rejected one.
  std::vector<float> ring_send{float(r) + 0.5f, float(r) + 0.75f}, ring_recv(2, poison<float>());
  comm.neighbor_exchange<float>(ring_send, (r + 1) % P, ring_recv, (r + P - 1) % P, nullptr);
  const int left = (r + P - 1) % P;
  CHECK(ring_recv == std::vector<float>{float(left) + 0.5f, float(left) + 0.75f});
}

TEST_CASE("mpi: a communicator whose set-up fails after MPI created it is freed, not leaked") {
  const long before = mpi_faults::live_comms;
  mpi_faults::fail_comm_size = true;
  try {
    seqpar::mpi_communicator comm(MPI_COMM_WORLD);  // MPI_Comm_dup succeeds, MPI_Comm_size fails
    CHECK(false);
  } catch (const seqpar::error& e) {
    CHECK(e.code() == seqpar::errc::mpi);
    CHECK(std::string(e.what()).find("MPI_Comm_size") != std::string::npos);
  }
  mpi_faults::fail_comm_size = false;
  CHECK(mpi_faults::live_comms == before);

  auto comm = world();
  const long with_world = mpi_faults::live_comms;
  CHECK(with_world == before + 1);
  mpi_faults::fail_comm_size = true;
  try {
    (void)comm.split(comm.rank() % 2, 0);  // MPI_Comm_split succeeds, MPI_Comm_size fails
    CHECK(false);
  } catch (const seqpar::error& e) {
    CHECK(e.code() == seqpar::errc::mpi);
  }
  mpi_faults::fail_comm_size = false;
  CHECK(mpi_faults::live_comms == with_world);
}
