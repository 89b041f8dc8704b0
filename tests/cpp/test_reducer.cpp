// Reducer (allgather algorithm) on the in-process backend: the mean with identity/none, the EF21
// aggregate against standalone workers, bit-identical results across ranks, interleaved keys,
// mismatch detection on every rank, state dict round trip and stats.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/feedback.hpp"
#include "efcomm/reducer.hpp"
#include "test_util.hpp"

namespace efcomm {
namespace {

using test::mutableView;
using test::view;

constexpr size_t kDim = 257;

std::vector<float> input(int rank, int step, size_t d = kDim) {
  return test::randomVector(d, static_cast<uint64_t>(1000 * step + rank + 1));
}

// out[rank][step]: the reducer's result on every rank for `steps` calls of one key.
using Results = std::vector<std::vector<std::vector<float>>>;

Results reduce(int n, const std::string& comp, const std::string& fb, int steps) {
  Results res(static_cast<size_t>(n));
  runRanks(n, [&](Backend& b) {
    Reducer red(std::shared_ptr<Backend>(&b, [](Backend*) {}), comp, fb);
    for (int t = 0; t < steps; ++t) {
      const auto x = input(b.rank(), t);
      std::vector<float> out(kDim);
      red.allreduce(view(x), mutableView(out), "w");
      res[static_cast<size_t>(b.rank())].push_back(out);
    }
  });
  return res;
}

void expectIdenticalAcrossRanks(const Results& res) {
  for (size_t r = 1; r < res.size(); ++r)
    for (size_t t = 0; t < res[0].size(); ++t)
      EXPECT_EQ(std::memcmp(res[r][t].data(), res[0][t].data(), kDim * sizeof(float)), 0) << "rank " << r << " step " << t;
}

class ReducerSizes : public ::testing::TestWithParam<int> {};

TEST_P(ReducerSizes, IdentityNoneIsTheMean) {
  const int n = GetParam();
  const Results res = reduce(n, "identity", "none", 3);
  expectIdenticalAcrossRanks(res);
  for (int t = 0; t < 3; ++t) {
    for (size_t j = 0; j < kDim; ++j) {
      double mean = 0;
      for (int r = 0; r < n; ++r) mean += input(r, t)[j];
      mean /= n;
      EXPECT_NEAR(res[0][static_cast<size_t>(t)][j], mean, 1e-6 * (1 + std::abs(mean)));
    }
  }
}

TEST_P(ReducerSizes, Ef21TopKIsTheMeanOfWorkerEstimates) {
  const int n = GetParam();
  const int steps = 5;
  const Results res = reduce(n, "topk:ratio=0.05", "ef21", steps);
  expectIdenticalAcrossRanks(res);
  std::vector<std::unique_ptr<Feedback>> workers;
  for (int r = 0; r < n; ++r) workers.push_back(makeFeedback("ef21", makeCompressor("topk:ratio=0.05")));
  for (int t = 0; t < steps; ++t) {
    std::vector<double> mean(kDim, 0.0);
    for (int r = 0; r < n; ++r) {
      const auto x = input(r, t);
      workers[static_cast<size_t>(r)]->step(view(x));
      const auto* g = static_cast<const float*>(workers[static_cast<size_t>(r)]->estimate().data);
      for (size_t j = 0; j < kDim; ++j) mean[j] += g[j];
    }
    for (size_t j = 0; j < kDim; ++j) {
      mean[j] /= n;
      EXPECT_NEAR(res[0][static_cast<size_t>(t)][j], mean[j], 1e-5 * (1 + std::abs(mean[j]))) << t << " " << j;
    }
  }
}

TEST_P(ReducerSizes, StatsCountMessageBytes) {
  const int n = GetParam();
  const int steps = 4;
  std::vector<ReducerStats> stats(static_cast<size_t>(n));
  runRanks(n, [&](Backend& b) {
    Reducer red(std::shared_ptr<Backend>(&b, [](Backend*) {}), "topk:ratio=0.05", "ef21");
    for (int t = 0; t < steps; ++t) {
      const auto x = input(b.rank(), t);
      std::vector<float> out(kDim);
      red.allreduce(view(x), mutableView(out), "w");
    }
    stats[static_cast<size_t>(b.rank())] = red.stats().at("w");
  });
  uint64_t totalSent = 0, totalReceived = 0;
  for (int r = 0; r < n; ++r) {
    auto w = makeFeedback("ef21", makeCompressor("topk:ratio=0.05"));
    uint64_t sent = 0;
    for (int t = 0; t < steps; ++t) sent += w->step(view(input(r, t))).size();
    const ReducerStats& st = stats[static_cast<size_t>(r)];
    EXPECT_EQ(st.bytesSent, sent);
    EXPECT_EQ(st.calls, static_cast<uint64_t>(steps));
    EXPECT_GT(st.controlBytes, 0u);
    EXPECT_GE(st.compressSeconds, 0.0);
    EXPECT_GE(st.commSeconds, 0.0);
    totalSent += sent;
    totalReceived += st.bytesReceived;
  }
  EXPECT_EQ(totalReceived, totalSent * static_cast<uint64_t>(n - 1));
}

TEST_P(ReducerSizes, InterleavedKeysAreIndependent) {
  const int n = GetParam();
  const Results alone = reduce(n, "topk:ratio=0.05", "ef21", 3);
  runRanks(n, [&](Backend& b) {
    Reducer red(std::shared_ptr<Backend>(&b, [](Backend*) {}), "topk:ratio=0.05", "ef21");
    for (int t = 0; t < 3; ++t) {
      const auto y = input(b.rank() + 7, t, 33);
      std::vector<float> outY(33);
      red.allreduce(view(y), mutableView(outY), "other");
      const auto x = input(b.rank(), t);
      std::vector<float> out(kDim);
      red.allreduce(view(x), mutableView(out), "w");
      EXPECT_EQ(std::memcmp(out.data(), alone[0][static_cast<size_t>(t)].data(), kDim * sizeof(float)), 0);
    }
    EXPECT_EQ(red.stats().size(), 2u);
  });
}

TEST_P(ReducerSizes, StateDictContinuesBitIdentically) {
  const int n = GetParam();
  std::vector<StateDict> saved(static_cast<size_t>(n));
  Results first(static_cast<size_t>(n)), second(static_cast<size_t>(n));
  auto run = [&](Reducer& red, int rank, int t0, int t1, Results& res) {
    for (int t = t0; t < t1; ++t) {
      const auto x = input(rank, t);
      std::vector<float> out(kDim);
      red.allreduce(view(x), mutableView(out), "layer/0/shape");  // a key that looks like a state path
      res[static_cast<size_t>(rank)].push_back(out);
    }
  };
  runRanks(n, [&](Backend& b) {
    Reducer red(std::shared_ptr<Backend>(&b, [](Backend*) {}), "topk:ratio=0.05", "ef21");
    Results scratch(static_cast<size_t>(n));
    run(red, b.rank(), 0, 3, scratch);
    saved[static_cast<size_t>(b.rank())] = red.stateDict();
    run(red, b.rank(), 3, 6, first);
  });
  runRanks(n, [&](Backend& b) {
    Reducer red(std::shared_ptr<Backend>(&b, [](Backend*) {}), "topk:ratio=0.05", "ef21");
    red.loadStateDict(saved[static_cast<size_t>(b.rank())]);
    run(red, b.rank(), 3, 6, second);
  });
  for (int r = 0; r < n; ++r)
    for (size_t t = 0; t < 3; ++t)
      EXPECT_EQ(std::memcmp(first[static_cast<size_t>(r)][t].data(), second[static_cast<size_t>(r)][t].data(),
                            kDim * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(Ranks, ReducerSizes, ::testing::Values(1, 2, 3, 4));

TEST(Reducer, ShapeMismatchFailsOnEveryRank) {
  for (int n : {2, 3, 4}) {
    std::atomic<int> mismatches{0};
    runRanks(
        n,
        [&](Backend& b) {
          Reducer red(std::shared_ptr<Backend>(&b, [](Backend*) {}), "topk:ratio=0.05", "ef21");
          const size_t d = b.rank() == 1 ? 5 : 4;
          std::vector<float> x(d, 1.0f), out(d);
          try {
            red.allreduce(view(x), mutableView(out), "w");
          } catch (const MismatchError& e) {
            EXPECT_NE(std::string(e.what()).find("[5]"), std::string::npos) << e.what();
            ++mismatches;
          }
          // The failed call leaves the ranks in step: the next agreed call succeeds.
          std::vector<float> y(3, static_cast<float>(b.rank())), outY(3);
          red.allreduce(view(y), mutableView(outY), "v");
        },
        10.0);
    EXPECT_EQ(mismatches.load(), n);
  }
}

TEST(Reducer, KeyMismatchAndBadArgumentFailOnEveryRank) {
  std::atomic<int> mismatches{0}, invalid{0};
  runRanks(
      3,
      [&](Backend& b) {
        Reducer red(std::shared_ptr<Backend>(&b, [](Backend*) {}), "identity", "none");
        std::vector<float> x(4, 1.0f), out(4);
        try {
          red.allreduce(view(x), mutableView(out), b.rank() == 2 ? "b" : "a");
        } catch (const MismatchError&) {
          ++mismatches;
        }
        std::vector<float> shortOut(b.rank() == 0 ? 3 : 4);
        try {
          red.allreduce(view(x), mutableView(shortOut), "a");
        } catch (const InvalidArgument&) {
          ++invalid;
        } catch (const MismatchError&) {
          ++mismatches;
        }
      },
      10.0);
  EXPECT_EQ(mismatches.load(), 3 + 2);
  EXPECT_EQ(invalid.load(), 1);
}

TEST(Reducer, NonFiniteInputFailsOnEveryRank) {
  std::atomic<int> nonFinite{0};
  runRanks(
      2,
      [&](Backend& b) {
        Reducer red(std::shared_ptr<Backend>(&b, [](Backend*) {}), "topk:ratio=0.5", "ef21:init=compressed");
        std::vector<float> x(4, b.rank() == 1 ? std::nanf("") : 1.0f), out(4);
        try {
          red.allreduce(view(x), mutableView(out), "w");
        } catch (const NonFiniteError&) {
          ++nonFinite;
        }
      },
      10.0);
  EXPECT_EQ(nonFinite.load(), 2);
}

TEST(Reducer, RejectsBadConfiguration) {
  InProcessGroup g(2);
  EXPECT_THROW(Reducer(g.backend(0), "nope"), InvalidArgument);
  EXPECT_THROW(Reducer(g.backend(0), "identity", "nope"), InvalidArgument);
  EXPECT_THROW(Reducer(g.backend(0), "identity", "none", {1.0}), InvalidArgument);
}

}  // namespace
}  // namespace efcomm
