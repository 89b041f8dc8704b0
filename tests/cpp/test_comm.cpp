// The in-process backend: every collective for several group sizes, sequence numbers,
// agreement checks, timeouts and error propagation from runRanks.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <vector>

#include "comm/backend.hpp"
#include "efcomm/comm.hpp"

namespace efcomm {
namespace {

// Rank r's allgatherv contribution: r * 3 bytes (rank 0 sends nothing), value r * 16 + i.
std::vector<uint8_t> contribution(int r) {
  std::vector<uint8_t> v(static_cast<size_t>(r) * 3);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<uint8_t>(r * 16 + static_cast<int>(i));
  return v;
}

class CommSizes : public ::testing::TestWithParam<int> {};

TEST_P(CommSizes, AllgathervVariableSizes) {
  const int n = GetParam();
  runRanks(n, [n](Backend& b) {
    EXPECT_EQ(b.size(), n);
    const std::vector<uint8_t> mine = contribution(b.rank());
    ByteBlocks recv;
    b.allgatherv(mine.data(), mine.size(), recv)->wait();
    ASSERT_EQ(recv.size(), static_cast<size_t>(n));
    size_t total = 0;
    for (int j = 0; j < n; ++j) {
      EXPECT_EQ(recv.copyBlock(static_cast<size_t>(j)), contribution(j));
      total += contribution(j).size();
    }
    EXPECT_EQ(recv.data.size(), total);  // no padding
    EXPECT_THROW(recv.block(static_cast<size_t>(n)), InvalidArgument);
    EXPECT_THROW(recv.blockBytes(static_cast<size_t>(n)), InvalidArgument);
  });
  EXPECT_THROW(ByteBlocks{}.blockBytes(0), InvalidArgument);  // empty: no block 0
}

TEST_P(CommSizes, AlltoallvVariableSizes) {
  const int n = GetParam();
  // Rank i sends (i + j) % 3 bytes of value i * 10 + j to rank j.
  runRanks(n, [n](Backend& b) {
    const int i = b.rank();
    std::vector<size_t> counts;
    std::vector<uint8_t> send;
    for (int j = 0; j < n; ++j) {
      counts.push_back(static_cast<size_t>((i + j) % 3));
      send.insert(send.end(), counts.back(), static_cast<uint8_t>(i * 10 + j));
    }
    ByteBlocks recv;
    b.alltoallv(send.data(), counts, recv)->wait();
    ASSERT_EQ(recv.size(), static_cast<size_t>(n));
    for (int j = 0; j < n; ++j) {
      EXPECT_EQ(recv.copyBlock(static_cast<size_t>(j)),
                std::vector<uint8_t>(static_cast<size_t>((j + i) % 3), static_cast<uint8_t>(j * 10 + i)));
    }
  });
}

template <typename T>
std::vector<T> rankValues(int r, size_t count) {
  std::vector<T> v(count);
  // Values of very different magnitudes so that the summation order changes the rounding.
  for (size_t k = 0; k < count; ++k) v[k] = static_cast<T>((r % 2 ? 1e8 : 1.0) * (0.1 + r) / (1.0 + k) - r * 0.37);
  return v;
}

template <typename T>
void checkAllreduceSum(int n, DType dtype) {
  const size_t count = 257;
  std::vector<T> expected = rankValues<T>(0, count);
  for (int r = 1; r < n; ++r) {
    const std::vector<T> x = rankValues<T>(r, count);
    for (size_t k = 0; k < count; ++k) expected[k] += x[k];
  }
  runRanks(n, [&](Backend& b) {
    std::vector<T> buf = rankValues<T>(b.rank(), count);
    b.allreduceSum(buf.data(), count, dtype)->wait();
    EXPECT_EQ(std::memcmp(buf.data(), expected.data(), count * sizeof(T)), 0) << "rank " << b.rank();
  });
}

TEST_P(CommSizes, AllreduceSumFixedOrderBitIdentical) {
  checkAllreduceSum<float>(GetParam(), DType::kFloat32);
  checkAllreduceSum<double>(GetParam(), DType::kFloat64);
}

TEST_P(CommSizes, BroadcastFromEveryRoot) {
  const int n = GetParam();
  runRanks(n, [n](Backend& b) {
    for (int root = 0; root < n; ++root) {
      std::vector<uint8_t> buf(5, static_cast<uint8_t>(b.rank() == root ? 100 + root : 0));
      b.broadcast(buf.data(), buf.size(), root)->wait();
      EXPECT_EQ(buf, std::vector<uint8_t>(5, static_cast<uint8_t>(100 + root)));
    }
  });
}

TEST_P(CommSizes, BarrierOrdersWrites) {
  const int n = GetParam();
  std::vector<int> seen(static_cast<size_t>(n), 0);
  runRanks(n, [&](Backend& b) {
    seen[static_cast<size_t>(b.rank())] = 1;
    b.barrier()->wait();
    EXPECT_EQ(std::accumulate(seen.begin(), seen.end(), 0), n);
  });
}

INSTANTIATE_TEST_SUITE_P(Comm, CommSizes, ::testing::Values(1, 2, 3, 4, 5));

TEST(Comm, ManyConsecutiveCollectivesInFlight) {
  // Several collectives posted before any wait: sequence numbers keep them apart.
  runRanks(3, [](Backend& b) {
    for (int round = 0; round < 50; ++round) {
      const std::vector<uint8_t> a(static_cast<size_t>(b.rank() + round % 4), static_cast<uint8_t>(round));
      double x = b.rank() + round;
      ByteBlocks ga;
      auto w1 = b.allgatherv(a.data(), a.size(), ga);
      auto w2 = b.allreduceSum(&x, 1, DType::kFloat64);
      auto w3 = b.barrier();
      w3->wait();
      w2->wait();
      w1->wait();
      EXPECT_TRUE(w1->completed());
      EXPECT_EQ(x, 3.0 + 3 * round);
      for (size_t j = 0; j < 3; ++j) EXPECT_EQ(ga.blockBytes(j), j + round % 4);
    }
  });
}

TEST(Comm, MissingRankTimesOutNamingIt) {
  std::atomic<int> timeouts{0};
  runRanks(3, [&](Backend& b) {
    if (b.rank() == 2) return;  // never calls
    try {
      b.barrier(0.2)->wait();
    } catch (const CollectiveTimeout& e) {
      EXPECT_EQ(e.culprits(), std::vector<int>{2});
      EXPECT_EQ(e.code(), ErrorCode::kCollectiveTimeout);
      ++timeouts;
    }
  });
  EXPECT_EQ(timeouts.load(), 2);
}

TEST(Comm, LateRankSeesTheTimeoutToo) {
  // A collective fails on every rank: the rank that arrives after the others gave up gets the
  // same error, and the next collective is matched correctly again.
  std::atomic<int> timeouts{0};
  runRanks(2, [&](Backend& b) {
    if (b.rank() == 0) {
      EXPECT_THROW(b.barrier(0.05)->wait(), CollectiveTimeout);
      ++timeouts;
    } else {
      while (timeouts.load() == 0) std::this_thread::yield();
      EXPECT_THROW(b.barrier(5.0)->wait(), CollectiveTimeout);
    }
    double x = 1.0;
    b.allreduceSum(&x, 1, DType::kFloat64)->wait();
    EXPECT_EQ(x, 2.0);
  });
}

TEST(Comm, WaitTimeoutAbortsTheCollective) {
  runRanks(2, [](Backend& b) {
    if (b.rank() == 1) {  // alive, elsewhere, past rank 0's wait (a rank that returns is named at once)
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      return;
    }
    auto w = b.barrier(60.0);
    EXPECT_FALSE(w->completed());
    try {
      w->wait(0.05);
      ADD_FAILURE() << "wait returned";
    } catch (const CollectiveTimeout& e) {
      EXPECT_EQ(e.culprits(), std::vector<int>{1});
    }
    EXPECT_TRUE(w->completed());
    EXPECT_THROW(w->wait(), CollectiveTimeout);  // the stored error, every time
  });
}

TEST(Comm, ARankThatReturnedIsNamedAtOnce) {
  const auto t0 = std::chrono::steady_clock::now();
  runRanks(3, [](Backend& b) {
    b.barrier()->wait();
    if (b.rank() == 2) return;
    try {
      b.barrier(60.0)->wait();
      ADD_FAILURE() << "rank " << b.rank() << ": the barrier completed without rank 2";
    } catch (const CollectiveTimeout& e) {
      EXPECT_EQ(e.culprits(), std::vector<int>{2}) << e.what();
      EXPECT_NE(std::string(e.what()).find("rank(s) 2 finished without calling it"), std::string::npos) << e.what();
    }
  });
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
}

TEST(Comm, MismatchedCollectivesFailOnEveryRank) {
  std::atomic<int> mismatches{0};
  runRanks(3, [&](Backend& b) {
    std::vector<uint8_t> buf(4);
    try {
      if (b.rank() == 1) {
        b.barrier()->wait();
      } else {
        b.broadcast(buf.data(), buf.size(), 0)->wait();
      }
    } catch (const MismatchError& e) {
      EXPECT_EQ(e.ranks(), std::vector<int>{1}) << e.what();  // the odd one, not rank 0's partner
      ++mismatches;
    }
    try {
      b.broadcast(buf.data(), b.rank() == 2 ? 3 : 4, 0)->wait();
    } catch (const MismatchError& e) {
      EXPECT_EQ(e.ranks(), std::vector<int>{2}) << e.what();
      ++mismatches;
    }
    // Rank 0 the odd one: it is named, though the message compares with it.
    try {
      b.broadcast(buf.data(), 4, b.rank() == 0 ? 0 : 1)->wait();
    } catch (const MismatchError& e) {
      EXPECT_EQ(e.ranks(), std::vector<int>{0}) << e.what();
      ++mismatches;
    }
  });
  EXPECT_EQ(mismatches.load(), 9);
}

TEST(Comm, SixteenBitSumsRoundAfterEveryAddition) {
  // bf16: 1 + 2^-8 is a tie that rounds to even (1), and so does the next + 2^-8: rank-order
  // 16-bit arithmetic gives 1, where a float32 sum rounded once would give 1 + 2^-7.
  runRanks(3, [](Backend& b) {
    const uint16_t one = 0x3F80, eps = 0x3B80;  // 1.0 and 2^-8 in bfloat16
    uint16_t v[2] = {b.rank() == 0 ? one : eps, static_cast<uint16_t>(b.rank() == 0 ? 0x3FC0 : 0x3F80)};  // 1.5, 1, 1
    b.allreduceSum(v, 2, DType::kBFloat16)->wait();
    EXPECT_EQ(v[0], one);
    EXPECT_EQ(v[1], 0x4060);  // 3.5
    uint16_t h = 0x3C00;      // float16 1.0
    b.allreduceSum(&h, 1, DType::kFloat16)->wait();
    EXPECT_EQ(h, 0x4200);  // 3.0
  });
}

TEST(Comm, InvalidArguments) {
  runRanks(2, [](Backend& b) {
    ByteBlocks recv;
    float f = 0;
    EXPECT_THROW(b.alltoallv(nullptr, {0}, recv), InvalidArgument);
    EXPECT_THROW(b.broadcast(&f, 4, 2), InvalidArgument);
    EXPECT_THROW(b.allreduceSum(reinterpret_cast<char*>(&f) + 1, 1, DType::kFloat16), InvalidArgument);  // misaligned
    EXPECT_THROW(b.barrier(0.0), InvalidArgument);
    EXPECT_THROW(b.allgatherv(nullptr, 3, recv), InvalidArgument);
    b.barrier()->wait();  // rejected calls consumed no sequence number
  });
  EXPECT_THROW(InProcessGroup(0), InvalidArgument);
}

TEST(Comm, ExceptionInOneRankPropagatesAndReleasesTheOthers) {
  try {
    runRanks(3, [](Backend& b) {
      if (b.rank() == 1) throw std::runtime_error("boom on rank 1");
      b.barrier()->wait();  // default timeout is minutes: only the abort ends this quickly
    });
    FAIL() << "runRanks returned";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "boom on rank 1");
  }
}

TEST(Comm, AbortFromAnotherThreadFailsPendingAndLaterCollectives) {
  // Ranks 0 and 1 wait in a barrier rank 2 never enters; a monitor thread aborts rank 0's
  // backend, which fails the group's collectives at once with exactly its error.
  InProcessGroup group(3);
  const CollectiveTimeout error("monitor: rank 2 stopped sending heartbeats", {2});
  std::atomic<int> waiting{0};
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      auto b = group.backend(r);
      auto w = b->barrier();  // the default timeout is minutes
      ++waiting;
      const auto t0 = std::chrono::steady_clock::now();
      try {
        w->wait();
        ADD_FAILURE() << "the barrier succeeded on rank " << r;
      } catch (const CollectiveTimeout& e) {
        EXPECT_STREQ(e.what(), error.what());
        EXPECT_EQ(e.culprits(), std::vector<int>{2});
      }
      EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
      EXPECT_LT(w->timing().readySeconds, 0);  // not every rank arrived
    });
  }
  std::thread monitor([&] {
    while (waiting.load() < 2) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    group.backend(0)->abort(error);
  });
  monitor.join();
  for (auto& t : ranks) t.join();
  // A second abort, of the backend or of the group, is ignored: the first error stays.
  group.backend(1)->abort(CollectiveTimeout("a second abort", {0}));
  group.abort(1, "a third abort");
  for (int r = 0; r < 3; ++r) {
    auto w = group.backend(r)->barrier();
    EXPECT_TRUE(w->completed());  // failed at once
    try {
      w->wait();
      ADD_FAILURE() << "a collective after the abort succeeded on rank " << r;
    } catch (const CollectiveTimeout& e) {
      EXPECT_STREQ(e.what(), error.what());
      EXPECT_EQ(e.culprits(), std::vector<int>{2});
    }
  }
}

TEST(Comm, TimingMeasuresTheWaitForTheLastRank) {
  // Rank 2 issues its allreduceSum 50 ms after both others have issued theirs: they waited at
  // least that long for it.
  std::atomic<int> issued{0};
  runRanks(3, [&](Backend& b) {
    double x = 1.0;
    if (b.rank() == 2) {
      while (issued.load() < 2) std::this_thread::yield();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    auto w = b.allreduceSum(&x, 1, DType::kFloat64);
    ++issued;
    w->wait();
    const WorkTiming t = w->timing();
    EXPECT_GE(t.readySeconds, b.rank() == 2 ? 0.0 : 0.05);
    EXPECT_TRUE(t.peerSeconds.empty());
  });
}

TEST(Comm, LinkDelaySpecIsParsedAndChecked) {
  using comm::parseLinkDelays;
  EXPECT_TRUE(parseLinkDelays("", 4).empty());
  EXPECT_TRUE(parseLinkDelays("  ", 4).empty());
  const auto d = parseLinkDelays("0>1=0.05, 3>2=1e-3", 4);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].src, 0);
  EXPECT_EQ(d[0].dst, 1);
  EXPECT_DOUBLE_EQ(d[0].seconds, 0.05);
  EXPECT_EQ(d[1].src, 3);
  EXPECT_EQ(d[1].dst, 2);
  EXPECT_DOUBLE_EQ(d[1].seconds, 0.001);
  for (const char* bad : {"0>1", "0=1>2", "0>1=", ">1=2", "a>1=1", "0>1=x", "0>1=1,", "0>1=1;1>0=1", "0>1=-1",
                          "0>1=inf", "0>1=nan", "0>4=1", "-1>0=1", "1>1=1", "0>1=1,0>1=2", "0 1=1"}) {
    try {
      parseLinkDelays(bad, 4);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const InvalidArgument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("EFCOMM_FAULT_LINK_DELAY"), std::string::npos) << what;
      EXPECT_NE(what.find("SRC>DST=SECONDS"), std::string::npos) << what;
    }
  }
}

}  // namespace
}  // namespace efcomm
