// The MPI backend as a C++ application uses it: linked with MPI, efcomm::mpiBackend(MPI_COMM_WORLD).
// Run under mpiexec with any number of ranks (ctest runs 2, 3 and 4). Every rank runs every test
// in the same order; rank 0 prints the usual GoogleTest output, the others only their failures,
// and the exit status is non-zero when any rank failed.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/mpi.hpp"

namespace efcomm {
namespace {

// Timeout of the collectives expected to succeed: generous, since 4 ranks may share 2 cores.
constexpr double kTimeout = 60.0;

int worldRank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int worldSize() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Rank r's allgatherv contribution: r * 5 bytes (rank 0 sends nothing), value r * 16 + i.
std::vector<uint8_t> contribution(int r) {
  std::vector<uint8_t> v(static_cast<size_t>(r) * 5);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<uint8_t>(r * 16 + static_cast<int>(i));
  return v;
}

TEST(Mpi, RankAndSizeMatchTheCommunicator) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  EXPECT_EQ(b->rank(), worldRank());
  EXPECT_EQ(b->size(), worldSize());
}

TEST(Mpi, ThreadLevelIsMpis) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  int provided = -1;
  MPI_Query_thread(&provided);
  ASSERT_TRUE(mpiThreadLevel(*b).has_value());
  EXPECT_EQ(static_cast<int>(*mpiThreadLevel(*b)), provided);
  InProcessGroup group(1);
  EXPECT_FALSE(mpiThreadLevel(*group.backend(0)).has_value());
}

TEST(Mpi, AllgathervVariableSizesWithoutPadding) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  const int n = b->size();
  const std::vector<uint8_t> mine = contribution(b->rank());
  ByteBlocks recv;
  b->allgatherv(mine.data(), mine.size(), recv)->wait();
  ASSERT_EQ(recv.size(), static_cast<size_t>(n));
  size_t total = 0;
  for (int j = 0; j < n; ++j) {
    EXPECT_EQ(recv.copyBlock(static_cast<size_t>(j)), contribution(j)) << "block " << j;
    total += contribution(j).size();
  }
  EXPECT_EQ(recv.data.size(), total);
}

TEST(Mpi, AlltoallvVariableSizes) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  const int n = b->size();
  const int i = b->rank();
  // Rank i sends (i + 2j) % 4 bytes of value i * 10 + j to rank j.
  std::vector<size_t> counts;
  std::vector<uint8_t> send;
  for (int j = 0; j < n; ++j) {
    counts.push_back(static_cast<size_t>((i + 2 * j) % 4));
    send.insert(send.end(), counts.back(), static_cast<uint8_t>(i * 10 + j));
  }
  ByteBlocks recv;
  b->alltoallv(send.data(), counts, recv)->wait();
  ASSERT_EQ(recv.size(), static_cast<size_t>(n));
  for (int j = 0; j < n; ++j) {
    EXPECT_EQ(recv.copyBlock(static_cast<size_t>(j)),
              std::vector<uint8_t>(static_cast<size_t>((j + 2 * i) % 4), static_cast<uint8_t>(j * 10 + i)));
  }
}

TEST(Mpi, BroadcastFromEveryRoot) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  for (int root = 0; root < b->size(); ++root) {
    std::vector<uint8_t> buf(1000, static_cast<uint8_t>(b->rank() == root ? 0 : 0xEE));
    if (b->rank() == root) std::iota(buf.begin(), buf.end(), static_cast<uint8_t>(root));
    b->broadcast(buf.data(), buf.size(), root)->wait();
    std::vector<uint8_t> want(1000);
    std::iota(want.begin(), want.end(), static_cast<uint8_t>(root));
    EXPECT_EQ(buf, want) << "root " << root;
  }
}

// Rank r's input to allreduceSum: magnitudes spread over many binades, so that the order of the
// additions shows in the rounding.
template <typename T>
std::vector<T> summand(int rank, size_t count) {
  std::mt19937_64 rng(1234 + static_cast<uint64_t>(rank));
  std::uniform_real_distribution<double> mantissa(-1.0, 1.0);
  std::uniform_int_distribution<int> exponent(-20, 20);
  std::vector<T> v(count);
  for (T& x : v) x = static_cast<T>(std::ldexp(mantissa(rng), exponent(rng)));
  return v;
}

template <typename T>
void checkAllreduceSum(Backend& b, size_t count, DType dtype) {
  const int n = b.size();
  std::vector<T> buf = summand<T>(b.rank(), count);
  b.allreduceSum(buf.data(), count, dtype)->wait();
  // The in-process backend on the same inputs: the MPI result must have exactly its bits.
  std::vector<T> reference;
  runRanks(n, [&](Backend& local) {
    std::vector<T> x = summand<T>(local.rank(), count);
    local.allreduceSum(x.data(), count, dtype)->wait();
    if (local.rank() == 0) reference = x;
  });
  ASSERT_EQ(buf.size(), reference.size());
  if (count == 0) return;
  EXPECT_EQ(std::memcmp(buf.data(), reference.data(), count * sizeof(T)), 0)
      << dtypeName(dtype) << " x " << count << " differs from the in-process backend's sum";
  if (n >= 3 && count >= 1000) {
    // The test can tell orders apart: summing in reverse rank order rounds differently.
    std::vector<T> reversed = summand<T>(n - 1, count);
    for (int r = n - 2; r >= 0; --r) {
      const std::vector<T> x = summand<T>(r, count);
      for (size_t i = 0; i < count; ++i) reversed[i] += x[i];
    }
    EXPECT_NE(std::memcmp(reversed.data(), reference.data(), count * sizeof(T)), 0);
  }
}

TEST(Mpi, AllreduceSumIsBitIdenticalToRankOrder) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  const size_t n = static_cast<size_t>(b->size());
  for (size_t count : {size_t{0}, size_t{1}, n - 1, n + 1, size_t{1000}, size_t{100003}}) {
    checkAllreduceSum<float>(*b, count, DType::kFloat32);
    checkAllreduceSum<double>(*b, count, DType::kFloat64);
  }
}

TEST(Mpi, BarrierAndManyCollectivesInFlight) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  const int n = b->size();
  b->barrier()->wait();
  // Issued back to back and waited for in reverse order: sequence numbers keep them apart.
  const std::vector<uint8_t> mine = contribution(b->rank());
  ByteBlocks gathered;
  std::vector<double> sum(10, 1.0);
  std::vector<uint8_t> bcast(64, static_cast<uint8_t>(b->rank()));
  auto w1 = b->allgatherv(mine.data(), mine.size(), gathered);
  auto w2 = b->allreduceSum(sum.data(), sum.size(), DType::kFloat64);
  auto w3 = b->broadcast(bcast.data(), bcast.size(), n - 1);
  auto w4 = b->barrier();
  w4->wait();
  w3->wait();
  w2->wait();
  w1->wait();
  EXPECT_TRUE(w1->completed() && w2->completed() && w3->completed() && w4->completed());
  EXPECT_EQ(gathered.copyBlock(static_cast<size_t>(n - 1)), contribution(n - 1));
  EXPECT_EQ(sum, std::vector<double>(10, static_cast<double>(n)));
  EXPECT_EQ(bcast, std::vector<uint8_t>(64, static_cast<uint8_t>(n - 1)));
}

TEST(Mpi, MismatchedCollectivesFailOnEveryRankAndTheBackendStaysUsable) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  const int n = b->size();
  const bool odd = b->rank() == n - 1;
  // The last rank broadcasts while the others gather.
  std::vector<uint8_t> buf(16, 1);
  ByteBlocks recv;
  auto work = odd ? b->broadcast(buf.data(), buf.size(), 0) : b->allgatherv(buf.data(), buf.size(), recv);
  try {
    work->wait();
    ADD_FAILURE() << "no MismatchError on rank " << b->rank();
  } catch (const MismatchError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank 0 called allgatherv but rank " + std::to_string(n - 1) + " called broadcast"),
              std::string::npos)
        << what;
    if (n > 2) EXPECT_EQ(e.ranks(), std::vector<int>{n - 1});  // two ranks: a tie, rank 0's call wins
    if (n == 2) EXPECT_EQ(e.ranks(), std::vector<int>{1});
  }
  // The last rank sums one element more.
  std::vector<float> x(odd ? 9 : 8, 1.0f);
  EXPECT_THROW(b->allreduceSum(x.data(), x.size(), DType::kFloat32)->wait(), MismatchError);
  // A mismatch moves no payload and leaves the ranks in step.
  std::vector<double> y(5, 2.0);
  b->allreduceSum(y.data(), y.size(), DType::kFloat64)->wait();
  EXPECT_EQ(y, std::vector<double>(5, 2.0 * n));
}

TEST(Mpi, ARankThatSkipsACollectiveIsNamedByTheOthers) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  const int n = b->size();
  const int skipper = n - 1;
  constexpr double kShort = 1.0;
  const auto t0 = std::chrono::steady_clock::now();
  if (b->rank() != skipper) {
    std::vector<uint8_t> mine(8, 7);
    ByteBlocks recv;
    try {
      b->allgatherv(mine.data(), mine.size(), recv, kShort)->wait();
      ADD_FAILURE() << "no CollectiveTimeout on rank " << b->rank();
    } catch (const CollectiveTimeout& e) {
      EXPECT_EQ(e.culprits(), std::vector<int>{skipper}) << e.what();
      // Its own timeout, or a peer's that came first.
      EXPECT_NE(std::string(e.what()).find("after 1 s waiting for rank(s) " + std::to_string(skipper)),
                std::string::npos)
          << e.what();
    }
    EXPECT_LT(secondsSince(t0), 10.0);
  } else {
    // Its next collective comes after the others gave up; they told it so, and it fails at once
    // rather than at its own (long) timeout.
    std::this_thread::sleep_for(std::chrono::duration<double>(3 * kShort));
    try {
      b->barrier(kTimeout)->wait();
      ADD_FAILURE() << "the late rank's barrier succeeded";
    } catch (const CollectiveTimeout& e) {
      EXPECT_EQ(e.culprits(), std::vector<int>{skipper}) << e.what();
    }
    EXPECT_LT(secondsSince(t0), 10.0);
  }
  // The communicator is unusable from now on: later collectives fail at once.
  const auto t1 = std::chrono::steady_clock::now();
  try {
    b->barrier()->wait();
    ADD_FAILURE() << "a collective after the timeout succeeded";
  } catch (const CollectiveTimeout& e) {
    EXPECT_NE(std::string(e.what()).find("unusable"), std::string::npos) << e.what();
    EXPECT_EQ(e.culprits(), std::vector<int>{skipper});
  }
  EXPECT_LT(secondsSince(t1), 1.0);
  // A fresh backend on the same MPI communicator works.
  auto fresh = mpiBackend(MPI_COMM_WORLD, kTimeout);
  std::vector<double> y(3, 1.0);
  fresh->allreduceSum(y.data(), y.size(), DType::kFloat64)->wait();
  EXPECT_EQ(y, std::vector<double>(3, static_cast<double>(n)));
}

TEST(Mpi, ShortWaitAbortsTheCollective) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  if (b->size() == 1) GTEST_SKIP() << "needs a peer";
  // Rank 0 waits at most 0.5 s for a barrier rank 1 enters only later.
  if (b->rank() == 1) std::this_thread::sleep_for(std::chrono::seconds(2));
  const auto t0 = std::chrono::steady_clock::now();
  try {
    b->barrier()->wait(b->rank() == 0 ? std::optional<double>(0.5) : std::nullopt);
    ADD_FAILURE() << "barrier succeeded on rank " << b->rank();
  } catch (const CollectiveTimeout& e) {
    EXPECT_EQ(e.culprits(), std::vector<int>{1}) << e.what();
  }
  EXPECT_LT(secondsSince(t0), 10.0);
}

TEST(Mpi, InvalidArgumentsAreRejectedBeforeAnythingIsSent) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  std::vector<uint8_t> buf(4);
  ByteBlocks recv;
  EXPECT_THROW(b->broadcast(buf.data(), buf.size(), b->size()), InvalidArgument);
  EXPECT_THROW(b->alltoallv(buf.data(), std::vector<size_t>(static_cast<size_t>(b->size()) + 1, 0), recv),
               InvalidArgument);
  std::vector<float> sum(4);
  EXPECT_THROW(b->allreduceSum(reinterpret_cast<uint8_t*>(sum.data()) + 1, 1, DType::kFloat32), InvalidArgument);
  EXPECT_THROW(b->barrier(-1.0), InvalidArgument);
  b->barrier()->wait();  // nothing was sent: the ranks are still in step
}

TEST(Mpi, TimingMeasuresEveryPeersTransfer) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  const int n = b->size();
  const int me = b->rank();
  const auto expectPeers = [&](const WorkTiming& t, int silent, const char* what) {
    EXPECT_GE(t.readySeconds, 0.0) << what;
    ASSERT_EQ(t.peerSeconds.size(), static_cast<size_t>(n)) << what;
    for (int p = 0; p < n; ++p) {
      if (p == me || p == silent) {
        EXPECT_LT(t.peerSeconds[static_cast<size_t>(p)], 0.0) << what << ", peer " << p;
      } else {
        EXPECT_GE(t.peerSeconds[static_cast<size_t>(p)], 0.0) << what << ", peer " << p;
      }
    }
  };
  const std::vector<uint8_t> mine(1000, static_cast<uint8_t>(me));
  ByteBlocks recv;
  auto w = b->allgatherv(mine.data(), mine.size(), recv);
  w->wait();
  expectPeers(w->timing(), -1, "allgatherv");
  // Every rank sends nothing to the next one: rank me hears nothing from rank me - 1.
  std::vector<size_t> counts(static_cast<size_t>(n), 8);
  counts[static_cast<size_t>((me + 1) % n)] = 0;
  const std::vector<uint8_t> send(8 * static_cast<size_t>(n), 1);
  w = b->alltoallv(send.data(), counts, recv);
  w->wait();
  expectPeers(w->timing(), n > 1 ? (me + n - 1) % n : -1, "alltoallv");
  std::vector<double> sum(1000, 1.0);
  w = b->allreduceSum(sum.data(), sum.size(), DType::kFloat64);
  w->wait();
  expectPeers(w->timing(), -1, "allreduceSum");
  w = b->barrier();
  w->wait();
  const WorkTiming t = w->timing();
  EXPECT_GE(t.readySeconds, 0.0);
  ASSERT_EQ(t.peerSeconds.size(), static_cast<size_t>(n));
  for (double s : t.peerSeconds) EXPECT_LT(s, 0.0);  // a barrier moves no payload
}

TEST(Mpi, AbortFromAnotherThreadEndsAWaitAndTellsThePeers) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  const int n = b->size();
  if (n == 1) GTEST_SKIP() << "needs a peer";
  const int culprit = n - 1;
  const CollectiveTimeout error("test monitor: rank " + std::to_string(culprit) + " stopped", {culprit});
  const auto t0 = std::chrono::steady_clock::now();
  if (b->rank() == 0) {
    // Rank 0 waits in a barrier the others enter only later; a second thread aborts it.
    auto w = b->barrier();
    std::thread monitor([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      b->abort(error);
    });
    try {
      w->wait();
      ADD_FAILURE() << "the barrier succeeded on rank 0";
    } catch (const CollectiveTimeout& e) {
      EXPECT_STREQ(e.what(), error.what());
      EXPECT_EQ(e.culprits(), std::vector<int>{culprit});
    }
    monitor.join();
    b->abort(CollectiveTimeout("a second abort", {0}));  // ignored
  } else {
    // The others learn of the abort from rank 0's notice: their barrier fails at once rather
    // than at its (long) timeout.
    std::this_thread::sleep_for(std::chrono::seconds(1));
    try {
      b->barrier()->wait();
      ADD_FAILURE() << "the barrier succeeded on rank " << b->rank();
    } catch (const CollectiveTimeout& e) {
      const std::string what = e.what();
      EXPECT_EQ(e.culprits(), std::vector<int>{culprit}) << what;
      EXPECT_NE(what.find("rank 0 aborted"), std::string::npos) << what;
      EXPECT_NE(what.find(error.what()), std::string::npos) << what;
    }
  }
  EXPECT_LT(secondsSince(t0), 10.0);
  // The communicator is unusable from now on: later collectives fail at once.
  const auto t1 = std::chrono::steady_clock::now();
  try {
    b->barrier()->wait();
    ADD_FAILURE() << "a collective after the abort succeeded";
  } catch (const CollectiveTimeout& e) {
    EXPECT_NE(std::string(e.what()).find("unusable"), std::string::npos) << e.what();
    EXPECT_EQ(e.culprits(), std::vector<int>{culprit});
  }
  EXPECT_LT(secondsSince(t1), 1.0);
  auto fresh = mpiBackend(MPI_COMM_WORLD, kTimeout);
  std::vector<double> y(3, 1.0);
  fresh->allreduceSum(y.data(), y.size(), DType::kFloat64)->wait();
  EXPECT_EQ(y, std::vector<double>(3, static_cast<double>(n)));
}

TEST(Mpi, EveryRankAbortingAtOnceDoesNotHang) {
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  const int n = b->size();
  if (n == 1) GTEST_SKIP() << "needs a peer";
  // The last rank never enters the allgatherv; every rank's "monitor" aborts, notices cross.
  const int skipper = n - 1;
  const CollectiveTimeout error("test monitor: rank " + std::to_string(skipper) + " is gone", {skipper});
  const auto t0 = std::chrono::steady_clock::now();
  if (b->rank() == skipper) {
    b->abort(error);
  } else {
    const std::vector<uint8_t> mine(16, 3);
    ByteBlocks recv;
    auto w = b->allgatherv(mine.data(), mine.size(), recv);
    std::thread monitor([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100 * (b->rank() + 1)));
      b->abort(error);
    });
    try {
      w->wait();
      ADD_FAILURE() << "the allgatherv succeeded on rank " << b->rank();
    } catch (const CollectiveTimeout& e) {
      // Its own abort, or a peer's notice that came first.
      EXPECT_EQ(e.culprits(), std::vector<int>{skipper}) << e.what();
      EXPECT_NE(std::string(e.what()).find(error.what()), std::string::npos) << e.what();
    }
    monitor.join();
  }
  EXPECT_THROW(b->barrier()->wait(), CollectiveTimeout);
  EXPECT_LT(secondsSince(t0), 10.0);
  auto fresh = mpiBackend(MPI_COMM_WORLD, kTimeout);
  fresh->barrier()->wait();
}

TEST(Mpi, LinkDelaySlowsOneLinkOnly) {
  if (worldSize() == 1) GTEST_SKIP() << "needs a peer";
  // Rank 0's payload to rank 1 leaves 0.4 s after the headers are in; every other link is fast.
  constexpr double kDelay = 0.4;
  ASSERT_EQ(setenv("EFCOMM_FAULT_LINK_DELAY", "0>1=0.4", 1), 0);
  auto b = mpiBackend(MPI_COMM_WORLD, kTimeout);
  unsetenv("EFCOMM_FAULT_LINK_DELAY");
  const int n = b->size();
  const int me = b->rank();
  // Checks the receive side: on rank 1, rank 0's data came last and late.
  const auto check = [&](const WorkTiming& t, const char* what) {
    ASSERT_EQ(t.peerSeconds.size(), static_cast<size_t>(n)) << what;
    if (me != 1) return;
    EXPECT_GE(t.peerSeconds[0], kDelay / 2) << what;
    for (int p = 2; p < n; ++p) EXPECT_LT(t.peerSeconds[static_cast<size_t>(p)], t.peerSeconds[0]) << what;
  };
  b->barrier()->wait();
  const std::vector<uint8_t> mine(1000, static_cast<uint8_t>(me));
  ByteBlocks recv;
  auto t0 = std::chrono::steady_clock::now();
  auto w = b->allgatherv(mine.data(), mine.size(), recv);
  w->wait();
  if (me == 0 || me == 1) EXPECT_GE(secondsSince(t0), kDelay / 2);
  for (int p = 0; p < n; ++p) {
    EXPECT_EQ(recv.copyBlock(static_cast<size_t>(p)), std::vector<uint8_t>(1000, static_cast<uint8_t>(p)));
  }
  check(w->timing(), "allgatherv");
  std::vector<double> sum(1000, 1.0);
  w = b->allreduceSum(sum.data(), sum.size(), DType::kFloat64);
  w->wait();
  EXPECT_EQ(sum, std::vector<double>(1000, static_cast<double>(n)));
  check(w->timing(), "allreduceSum");
  // A broadcast from rank 0 reaches rank 1 late too; from rank 1 it is fast.
  std::vector<uint8_t> buf(100, static_cast<uint8_t>(me));
  w = b->broadcast(buf.data(), buf.size(), 0);
  w->wait();
  EXPECT_EQ(buf, std::vector<uint8_t>(100, 0));
  if (me == 1) EXPECT_GE(w->timing().peerSeconds[0], kDelay / 2);
}

TEST(Mpi, MalformedLinkDelayIsRejectedOnEveryRank) {
  for (const char* bad : {"0>1", "0>99=1", "0>1=-2"}) {
    ASSERT_EQ(setenv("EFCOMM_FAULT_LINK_DELAY", bad, 1), 0);
    try {
      mpiBackend(MPI_COMM_WORLD, kTimeout);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("EFCOMM_FAULT_LINK_DELAY"), std::string::npos) << e.what();
    }
  }
  unsetenv("EFCOMM_FAULT_LINK_DELAY");
  mpiBackend(MPI_COMM_WORLD, kTimeout)->barrier()->wait();  // the ranks are still in step
}

// Rank 0 keeps GoogleTest's printer; the others print only their failures.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
    }
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace efcomm

// LeakSanitizer (the sanitizer build): communicators broken by a timeout or an abort are left to
// MPI_Finalize on purpose (freeing one that peers may still send to is unsafe, see mpi.cpp), and
// MPICH does not release their memory there once a few are left over. Only allocations made
// inside libmpi are exempted.
extern "C" const char* __lsan_default_suppressions() { return "leak:libmpi.so\n"; }

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = efcomm::worldRank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new efcomm::FailurePrinter(rank));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int anyFailed = 0;
  MPI_Allreduce(&failed, &anyFailed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return anyFailed;
}
