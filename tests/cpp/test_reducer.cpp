// Reducer on the in-process backend, for every algorithm: the mean with identity/none, the EF21
// aggregate against standalone workers (allgather), convergence to the mean with fixed inputs,
// agreement between algorithms, bit-identical results across ranks, interleaved keys, mismatch
// detection on every rank, state dict round trip, stats, async calls, buckets and auto.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <tuple>
#include <cstring>
#include <memory>
#include <thread>
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

std::shared_ptr<Backend> borrow(Backend& b) { return std::shared_ptr<Backend>(&b, [](Backend*) {}); }

Results reduce(int n, const std::string& comp, const std::string& fb, int steps, const std::string& alg = "allgather",
               bool fixedInput = false) {
  Results res(static_cast<size_t>(n));
  runRanks(n, [&](Backend& b) {
    Reducer red(borrow(b), comp, fb, ReducerOptions{alg});
    for (int t = 0; t < steps; ++t) {
      const auto x = input(b.rank(), fixedInput ? 0 : t);
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

const char* const kAlgorithms[] = {"allgather", "reduce_scatter", "allreduce"};

class ReducerAlgorithms : public ::testing::TestWithParam<std::tuple<int, const char*>> {};

TEST_P(ReducerAlgorithms, IdentityNoneIsTheMean) {
  const auto [n, alg] = GetParam();
  const Results res = reduce(n, "identity", "none", 3, alg);
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

// With the same input every step, EF21 (and the owner's EF21-BC for reduce_scatter) converges to
// the mean of the inputs.
TEST_P(ReducerAlgorithms, Ef21ConvergesToTheMeanOfFixedInputs) {
  const auto [n, alg] = GetParam();
  const std::string comp = std::string(alg) == "allreduce" ? "randk:ratio=0.25,seed=5,scaled=false" : "topk:ratio=0.25";
  const Results res = reduce(n, comp, "ef21:init=compressed", 80, alg, true);
  expectIdenticalAcrossRanks(res);
  double err = 0, norm = 0;
  for (size_t j = 0; j < kDim; ++j) {
    double mean = 0;
    for (int r = 0; r < n; ++r) mean += input(r, 0)[j];
    mean /= n;
    err += (res[0].back()[j] - mean) * (res[0].back()[j] - mean);
    norm += mean * mean;
  }
  EXPECT_LT(err, 1e-6 * norm) << alg << " n=" << n;
}

TEST_P(ReducerAlgorithms, StatsConserveBytes) {
  const auto [n, alg] = GetParam();
  std::vector<ReducerStats> stats(static_cast<size_t>(n));
  runRanks(n, [&](Backend& b) {
    Reducer red(borrow(b), std::string(alg) == "allreduce" ? "randk:ratio=0.05" : "topk:ratio=0.05", "ef21",
                ReducerOptions{alg});
    for (int t = 0; t < 3; ++t) {
      std::vector<float> out(kDim);
      red.allreduce(view(input(b.rank(), t)), mutableView(out), "w");
    }
    stats[static_cast<size_t>(b.rank())] = red.stats().at("w");
  });
  uint64_t sent = 0, received = 0;
  for (const ReducerStats& st : stats) {
    EXPECT_EQ(st.algorithm, alg);
    EXPECT_EQ(st.calls, 3u);
    sent += st.bytesSent;
    received += st.bytesReceived;
  }
  EXPECT_EQ(sent, received);
  if (n > 1) EXPECT_GT(sent, 0u);
}

TEST_P(ReducerAlgorithms, StateDictContinuesBitIdentically) {
  const auto [n, alg] = GetParam();
  const std::string comp = std::string(alg) == "allreduce" ? "randk:ratio=0.1,seed=9" : "topk:ratio=0.05";
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
    Reducer red(borrow(b), comp, "ef21", ReducerOptions{alg});
    Results scratch(static_cast<size_t>(n));
    run(red, b.rank(), 0, 3, scratch);
    saved[static_cast<size_t>(b.rank())] = red.stateDict();
    run(red, b.rank(), 3, 6, first);
  });
  runRanks(n, [&](Backend& b) {
    Reducer red(borrow(b), comp, "ef21", ReducerOptions{alg});
    red.loadStateDict(saved[static_cast<size_t>(b.rank())]);
    run(red, b.rank(), 3, 6, second);
  });
  for (int r = 0; r < n; ++r)
    for (size_t t = 0; t < 3; ++t)
      EXPECT_EQ(std::memcmp(first[static_cast<size_t>(r)][t].data(), second[static_cast<size_t>(r)][t].data(),
                            kDim * sizeof(float)), 0) << alg;
}

// A second rank is needed to see the failing one.
class ReducerAlgorithmsMultiRank : public ReducerAlgorithms {};

TEST_P(ReducerAlgorithmsMultiRank, NonFiniteRankSkipsTheRoundAndEveryRankRaises) {
  const auto [n, alg] = GetParam();
  const std::string comp = std::string(alg) == "allreduce" ? "randk:ratio=0.5,seed=1" : "topk:ratio=0.5";
  std::atomic<int> nonFinite{0};
  Results after(static_cast<size_t>(n));
  runRanks(
      n,
      [&](Backend& b) {
        Reducer red(borrow(b), comp, "ef21:init=compressed", ReducerOptions{alg});
        std::vector<float> x(kDim, b.rank() == 1 ? std::nanf("") : 1.0f), out(kDim);
        try {
          red.allreduce(view(x), mutableView(out), "w");
        } catch (const NonFiniteError& e) {
          if (b.rank() != 1) EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
          ++nonFinite;
        }
        // The ranks stay in step and their estimates consistent: the next round works everywhere.
        const auto y = input(b.rank(), 1);
        red.allreduce(view(y), mutableView(out), "w");
        after[static_cast<size_t>(b.rank())].push_back(out);
      },
      20.0);
  EXPECT_EQ(nonFinite.load(), n);
  expectIdenticalAcrossRanks(after);
}

std::string paramName(const ::testing::TestParamInfo<std::tuple<int, const char*>>& info) {
  return std::get<1>(info.param) + std::string("_n") + std::to_string(std::get<0>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Ranks, ReducerAlgorithms,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4), ::testing::ValuesIn(kAlgorithms)), paramName);
INSTANTIATE_TEST_SUITE_P(Ranks, ReducerAlgorithmsMultiRank,
                         ::testing::Combine(::testing::Values(2, 3, 4), ::testing::ValuesIn(kAlgorithms)), paramName);

TEST(Reducer, AlgorithmsAgreeOnAdditivePayloads) {
  // RandK with a shared seed: allgather folds n messages, allreduce sums their payloads first.
  for (int n : {2, 3}) {
    const Results a = reduce(n, "randk:ratio=0.2,seed=4", "ef21", 4, "allgather");
    const Results b = reduce(n, "randk:ratio=0.2,seed=4", "ef21", 4, "allreduce");
    for (size_t t = 0; t < 4; ++t)
      for (size_t j = 0; j < kDim; ++j) EXPECT_NEAR(a[0][t][j], b[0][t][j], 1e-5 * (1 + std::abs(a[0][t][j])));
  }
}

TEST(Reducer, CastPayloadsAddIn16Bits) {
  for (const char* spec : {"cast:dtype=bf16", "cast:dtype=fp16"}) {
    const Results a = reduce(3, spec, "none", 2, "allgather");
    const Results b = reduce(3, spec, "none", 2, "allreduce");
    expectIdenticalAcrossRanks(b);
    const double tol = std::string(spec).find("bf16") != std::string::npos ? 2e-2 : 3e-3;
    for (size_t t = 0; t < 2; ++t)
      for (size_t j = 0; j < kDim; ++j) EXPECT_NEAR(a[0][t][j], b[0][t][j], tol * (1 + std::abs(a[0][t][j]))) << spec;
  }
}

TEST(Reducer, PowerSgdFactorRoundsAreExactAtFullRank) {
  // 257 elements are a 16 x 17 matrix; rank 16 spans its columns, so P P^T M = M and the summed
  // messages P (sum_i w_i Q_i)^T are the mean. The P round runs inside the workers' steps.
  for (int n : {1, 2, 3}) {
    const Results res = reduce(n, "powersgd:rank=16", "none", 3, "allreduce");
    expectIdenticalAcrossRanks(res);
    for (size_t t = 0; t < 3; ++t) {
      for (size_t j = 0; j < kDim; ++j) {
        double mean = 0;
        for (int r = 0; r < n; ++r) mean += input(r, static_cast<int>(t))[j];
        mean /= n;
        EXPECT_NEAR(res[0][t][j], mean, 1e-4 * (1 + std::abs(mean))) << n << " " << t << " " << j;
      }
    }
  }
  // Low rank with EF21: bit-identical, finite, and a non-finite rank fails every rank.
  const Results low = reduce(3, "powersgd:rank=2", "ef21", 4, "allreduce");
  expectIdenticalAcrossRanks(low);
  std::atomic<int> nonFinite{0};
  runRanks(3, [&](Backend& b) {
    Reducer red(borrow(b), "powersgd:rank=2", "ef21:init=compressed", ReducerOptions{"allreduce"});
    std::vector<float> x(kDim, b.rank() == 2 ? std::nanf("") : 1.0f), out(kDim);
    try {
      red.allreduce(view(x), mutableView(out), "w");
    } catch (const NonFiniteError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 2"), std::string::npos) << e.what();
      ++nonFinite;
    }
    red.allreduce(view(input(b.rank(), 1)), mutableView(out), "w");
  });
  EXPECT_EQ(nonFinite.load(), 3);
}

TEST(Reducer, ReduceScatterBytesDoNotGrowWithRanks) {
  // Per-rank bytes: allgather sends (n-1) m(d); reduce_scatter 2 (n-1)/n m(d) < 2 m(d).
  constexpr size_t kBig = 1 << 18;
  auto perRank = [&](int n, const char* alg) {
    std::vector<uint64_t> sent(static_cast<size_t>(n));
    runRanks(n, [&](Backend& b) {
      Reducer red(borrow(b), "topk:ratio=0.01", "ef21:init=compressed", ReducerOptions{alg});
      std::vector<float> out(kBig);
      red.allreduce(view(input(b.rank(), 0, kBig)), mutableView(out), "w");
      sent[static_cast<size_t>(b.rank())] = red.stats().at("w").bytesSent;
    });
    return static_cast<double>(sent[0]);
  };
  // m(d): rank 0's message of the whole vector.
  const double m = static_cast<double>(
      makeFeedback("ef21:init=compressed", makeCompressor("topk:ratio=0.01"))->step(view(input(0, 0, kBig))).size());
  for (int n : {2, 4, 8}) {
    EXPECT_NEAR(perRank(n, "allgather") / m, n - 1, 0.05 * (n - 1)) << n;
    EXPECT_NEAR(perRank(n, "reduce_scatter") / m, 2.0 * (n - 1) / n, 0.1) << n;
  }
}

TEST(Reducer, AsyncCallsRunInOrderAndMatchBlockingOnes) {
  const Results blocking = reduce(3, "topk:ratio=0.05", "ef21", 4);
  runRanks(3, [&](Backend& b) {
    Reducer red(borrow(b), "topk:ratio=0.05", "ef21", ReducerOptions{"allgather"});
    std::vector<std::vector<float>> xs, outs(4, std::vector<float>(kDim));
    std::vector<std::shared_ptr<Work>> works;
    for (int t = 0; t < 4; ++t) xs.push_back(input(b.rank(), t));
    for (int t = 0; t < 4; ++t) works.push_back(red.allreduceAsync(view(xs[t]), mutableView(outs[t]), "w"));
    for (auto& w : works) w->wait(30.0);
    for (size_t t = 0; t < 4; ++t) EXPECT_EQ(std::memcmp(outs[t].data(), blocking[0][t].data(), kDim * sizeof(float)), 0);
    // A blocking call after async ones runs after them, on the reducer's thread.
    std::vector<float> out(kDim);
    red.allreduce(view(xs[0]), mutableView(out), "v");
    EXPECT_EQ(red.stats().at("w").calls, 4u);
  });
}

TEST(Reducer, CoalescedBucketsMatchOneFusedCall) {
  runRanks(2, [&](Backend& b) {
    ReducerOptions o{"allgather"};
    o.bucketBytes = 100 * sizeof(float);
    Reducer red(borrow(b), "identity", "none", o);
    std::vector<std::vector<float>> xs = {input(b.rank(), 0, 30), input(b.rank(), 1, 60), input(b.rank(), 2, 150),
                                          input(b.rank(), 3, 5)};
    std::vector<std::vector<float>> outs;
    std::vector<ConstTensorView> in;
    std::vector<TensorView> out;
    for (auto& x : xs) outs.emplace_back(x.size());
    for (size_t i = 0; i < xs.size(); ++i) {
      in.push_back(view(xs[i]));
      out.push_back(mutableView(outs[i]));
    }
    red.allreduceCoalesced(in, out, "grads");
    // Buckets: [30 + 60], [150], [5].
    const auto st = red.stats();
    EXPECT_EQ(st.size(), 3u);
    EXPECT_TRUE(st.count("grads#0") && st.count("grads#1") && st.count("grads#2"));
    for (size_t i = 0; i < xs.size(); ++i) {
      for (size_t j = 0; j < xs[i].size(); ++j) {
        double mean = 0;
        for (int r = 0; r < 2; ++r) mean += input(r, static_cast<int>(i), xs[i].size())[j];
        EXPECT_NEAR(outs[i][j], mean / 2, 1e-6);
      }
    }
  });
}

TEST(Reducer, AutoChoosesByTheLinkModelAndAgreesAcrossRanks) {
  // Latency-bound links favour allgather's single round; bandwidth-bound ones reduce_scatter.
  for (const auto& [link, expected] : {std::pair{LinkModel{1e-3, 1e-12}, "allgather"},
                                       std::pair{LinkModel{1e-7, 1e-8}, "reduce_scatter"}}) {
    runRanks(4, [&](Backend& b) {
      ReducerOptions o;
      o.link = link;
      Reducer red(borrow(b), "topk:ratio=0.01", "ef21", o);
      std::vector<float> out(1 << 14);
      red.allreduce(view(input(b.rank(), 0, 1 << 14)), mutableView(out), "w");
      EXPECT_EQ(red.stats().at("w").algorithm, expected);
    });
  }
  // Measured: the same model on every rank.
  std::vector<LinkModel> seen(3);
  runRanks(3, [&](Backend& b) {
    Reducer red(borrow(b), "identity", "none");
    std::vector<float> out(64);
    red.allreduce(view(input(b.rank(), 0, 64)), mutableView(out), "w");
    seen[static_cast<size_t>(b.rank())] = *red.link();
  });
  for (const LinkModel& l : seen) {
    EXPECT_EQ(l.alphaSeconds, seen[0].alphaSeconds);
    EXPECT_EQ(l.betaSecondsPerByte, seen[0].betaSecondsPerByte);
    EXPECT_GT(l.alphaSeconds, 0);
  }
}

class ReducerSizes : public ::testing::TestWithParam<int> {};

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
    Reducer red(borrow(b), "topk:ratio=0.05", "ef21", ReducerOptions{"allgather"});
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
    EXPECT_EQ(st.bytesSent, sent * static_cast<uint64_t>(n - 1));  // to each of the n - 1 peers
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
    Reducer red(borrow(b), "topk:ratio=0.05", "ef21");
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

INSTANTIATE_TEST_SUITE_P(AllgatherRanks, ReducerSizes, ::testing::Values(1, 2, 3, 4));

TEST(Reducer, ShapeMismatchFailsOnEveryRank) {
  for (int n : {2, 3, 4}) {
    std::atomic<int> mismatches{0};
    runRanks(
        n,
        [&](Backend& b) {
          Reducer red(borrow(b), "topk:ratio=0.05", "ef21");
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
        Reducer red(borrow(b), "identity", "none");
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
        Reducer red(borrow(b), "topk:ratio=0.5", "ef21:init=compressed");
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

TEST(Reducer, ASecondThreadsCallIsRefusedWhileOneRuns) {
  // Rank 1 never calls: thread A's call waits for it (until the group's 1.5 s timeout) while
  // thread B calls the same reducer: B is refused at once, A's call and state are untouched.
  InProcessGroup g(2, 1.5);
  Reducer red(g.backend(0), "topk:ratio=0.5", "ef21", ReducerOptions{"allgather"});
  std::vector<float> xa(8, 1.0f), outa(8), xb(8, 2.0f), outb(8);
  std::atomic<bool> entered{false};
  std::exception_ptr aError;
  std::thread a([&] {
    entered = true;
    try {
      red.allreduce(view(xa), mutableView(outa), "a");
    } catch (...) {
      aError = std::current_exception();
    }
  });
  while (!entered) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // A is inside its call
  try {
    red.allreduce(view(xb), mutableView(outb), "b");
    ADD_FAILURE() << "the second thread's call ran";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("another thread is inside a call"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("key 'b'"), std::string::npos) << e.what();
  }
  a.join();
  ASSERT_TRUE(aError);
  EXPECT_THROW(std::rethrow_exception(aError), CollectiveTimeout);
  EXPECT_EQ(red.stats().count("b"), 0u);  // waits for no call now; B left no trace
}

TEST(Reducer, AsyncWaitTimeoutAbortsTheCallBeforeReturning) {
  // Work::wait's promise: when its timeout runs out first, the call is aborted and has ended when
  // wait throws, so the caller may free its buffers (the call used to go on writing into them).
  InProcessGroup g(2, 30.0);
  Reducer red(g.backend(0), "topk:ratio=0.5", "ef21", ReducerOptions{"allgather"});
  auto x = std::make_unique<std::vector<float>>(64, 1.0f);
  auto out = std::make_unique<std::vector<float>>(64);
  auto work = red.allreduceAsync(view(*x), mutableView(*out), "w");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(work->wait(0.3), CollectiveTimeout);  // rank 1 never calls
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
  EXPECT_TRUE(work->completed());
  x.reset();
  out.reset();
  EXPECT_THROW(work->wait(0.0), CollectiveTimeout);  // 0 is a valid timeout; the error again
  EXPECT_THROW(work->wait(-1.0), InvalidArgument);
}

TEST(Reducer, RejectsBadConfiguration) {
  InProcessGroup g(2);
  EXPECT_THROW(Reducer(g.backend(0), "nope"), InvalidArgument);
  EXPECT_THROW(Reducer(g.backend(0), "identity", "nope"), InvalidArgument);
  EXPECT_THROW(Reducer(g.backend(0), "identity", "none", ReducerOptions{"auto", {1.0}}), InvalidArgument);
  EXPECT_THROW(Reducer(g.backend(0), "identity", "none", ReducerOptions{"ring"}), InvalidArgument);
  EXPECT_THROW(Reducer(g.backend(0), "topk:ratio=0.1", "ef21", ReducerOptions{"allreduce"}), InvalidArgument);
}

}  // namespace
}  // namespace efcomm
