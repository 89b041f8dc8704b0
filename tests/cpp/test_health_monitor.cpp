// health::Monitor over in-process ranks: the flight record of a Reducer's collectives, the
// watchdog naming a rank that never arrives, and the Reducer's non-finite finding.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "efcomm/health.hpp"
#include "efcomm/reducer.hpp"

namespace efcomm::health {
namespace {

MonitorOptions fast() {
  MonitorOptions o;
  o.timeoutFloor = 0.5;
  o.heartbeatInterval = 0.05;
  o.heartbeatTimeout = 1.0;
  return o;
}

// Runs fn(rank, monitor) on n threads, one watched in-process rank each.
void watchedRanks(int n, const std::function<void(int, Monitor&)>& fn) {
  InProcessGroup group(n, 30.0);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      Monitor mon(group.backend(r), fast());
      fn(r, mon);
      mon.close();
    });
  }
  for (auto& t : threads) t.join();
}

std::vector<float> gradient(int rank, int step) {
  std::vector<float> g(2048);
  for (size_t i = 0; i < g.size(); ++i) g[i] = std::sin(static_cast<float>(rank * 131 + step * 7 + static_cast<int>(i)));
  return g;
}

TEST(HealthMonitor, RecordsTheReducersCollectivesWithKeyAndAlgorithm) {
  watchedRanks(3, [](int rank, Monitor& mon) {
    Reducer red(mon.backend(), "topk:ratio=0.1", "ef21", ReducerOptions{"allgather"});
    std::vector<float> out(2048);
    for (int step = 0; step < 3; ++step) {
      const auto g = gradient(rank, step);
      red.allreduce(ConstTensorView{g.data(), DType::kFloat32, {2048}}, TensorView{out.data(), DType::kFloat32, {2048}},
                    "layer1");
    }
    const std::string dump = mon.dumpJson();
    EXPECT_NE(dump.find("\"format\":\"efcomm-flight-record\""), std::string::npos);
    EXPECT_NE(dump.find("\"key\":\"layer1\",\"algorithm\":\"allgather\""), std::string::npos);
    EXPECT_NE(dump.find("\"seq\":5,"), std::string::npos);  // 3 calls x (header + payload)
    EXPECT_EQ(dump.find("\"seq\":6,"), std::string::npos);
    EXPECT_EQ(dump.find("\"status\":\"failed\""), std::string::npos);
    EXPECT_TRUE(mon.anomalies().empty());
  });
}

TEST(HealthMonitor, ARankThatNeverArrivesIsTheCulpritOnEveryRank) {
  watchedRanks(3, [](int rank, Monitor& mon) {
    auto b = mon.backend();
    b->barrier()->wait();
    if (rank == 1) std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // alive, elsewhere
    const auto t0 = std::chrono::steady_clock::now();
    try {
      b->barrier()->wait();
      ADD_FAILURE() << "rank " << rank << ": the barrier completed";
    } catch (const CollectiveTimeout& e) {
      EXPECT_EQ(e.culprits(), std::vector<int>{1}) << e.what();
      if (rank != 1) EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.4);
    }
    const auto found = mon.anomalies();
    ASSERT_FALSE(found.empty());
    EXPECT_EQ(found.front().kind, "hang");
    EXPECT_EQ(found.front().ranks, std::vector<int>{1});
  });
}

TEST(HealthMonitor, NonFiniteInputIsAttributedToItsRank) {
  watchedRanks(2, [](int rank, Monitor& mon) {
    Reducer red(mon.backend(), "topk:ratio=0.1", "ef21", ReducerOptions{"allgather"});
    auto g = gradient(rank, 0);
    if (rank == 1) g[5] = NAN;
    std::vector<float> out(2048);
    EXPECT_THROW(red.allreduce(ConstTensorView{g.data(), DType::kFloat32, {2048}},
                               TensorView{out.data(), DType::kFloat32, {2048}}, "w"),
                 NonFiniteError);
    const auto found = mon.anomalies();
    ASSERT_EQ(found.size(), 1u);
    EXPECT_EQ(found[0].kind, "nonfinite");
    EXPECT_EQ(found[0].ranks, std::vector<int>{1});
  });
}

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// Dumps that race (a failed collective, the agent's verdict, SIGUSR1 and close may dump at once)
// each leave a complete record and no temporary file behind; rank 0's close dump keeps the
// coordinator's view.
TEST(HealthMonitor, ConcurrentDumpsEachLeaveACompleteRecord) {
  const std::string dir = ::testing::TempDir() + "efcomm-dumps-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  MonitorOptions o = fast();
  o.dumpDir = dir;
  InProcessGroup group(2, 30.0);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      Monitor mon(group.backend(r), o);
      mon.backend()->barrier()->wait();
      const std::string path = dir + "/race-rank" + std::to_string(r) + ".json";
      std::atomic<int> failures{0};
      std::vector<std::thread> writers;
      for (int w = 0; w < 6; ++w) {
        writers.emplace_back([&] {
          for (int i = 0; i < 20; ++i) {
            try {
              mon.dump(path, "demand");
            } catch (const Error&) {
              ++failures;
            }
          }
        });
      }
      for (auto& t : writers) t.join();
      EXPECT_EQ(failures.load(), 0) << "rank " << r;
      const std::string text = readFile(path);
      EXPECT_EQ(text.rfind("{\"format\":\"efcomm-flight-record\"", 0), 0u) << text.substr(0, 80);
      EXPECT_EQ(text.substr(text.size() - 2), "}\n");
      mon.close();
    });
  }
  for (auto& t : ranks) t.join();
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"efcomm-flight-rank0.json", "efcomm-flight-rank1.json", "race-rank0.json",
                                          "race-rank1.json"}));
  const std::string closed0 = readFile(dir + "/efcomm-flight-rank0.json");
  EXPECT_NE(closed0.find("\"reason\":\"close\""), std::string::npos);
  EXPECT_EQ(closed0.find("\"coordinator\":null"), std::string::npos) << "rank 0's close dump lost the coordinator";
  EXPECT_NE(readFile(dir + "/efcomm-flight-rank1.json").find("\"coordinator\":null"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(HealthMonitor, RejectsBadOptions) {
  InProcessGroup group(1);
  MonitorOptions o;
  o.timeoutFloor = 0;
  EXPECT_THROW(Monitor(group.backend(0), o), InvalidArgument);
  o = MonitorOptions{};
  o.heartbeatTimeout = o.heartbeatInterval;
  EXPECT_THROW(Monitor(group.backend(0), o), InvalidArgument);
}

}  // namespace
}  // namespace efcomm::health
