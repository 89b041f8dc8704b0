// The health monitor's control plane: the coordinator's statistics with synthetic numbers
// (detect.hpp: no alarm on noise, a 1.3x straggler, a slow cell / row / column, overdue
// collectives), the wire decoder under fuzzing (wire.hpp), and agents plus coordinator over TCP
// with ranks as threads of the in-process backend (control.hpp). Crashes, silences and malformed
// frames are produced by a hand-made peer that speaks the documented rendezvous and wire format
// (a fake agent or a fake coordinator), so no test hook is needed in the product code.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/health.hpp"
#include "health/control.hpp"
#include "health/detect.hpp"
#include "health/wire.hpp"

namespace efcomm::health {
namespace {

using detect::Finding;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// ---- detect: statistics ------------------------------------------------------------------------

TEST(HealthDetect, MedianMadQuantile) {
  EXPECT_TRUE(std::isnan(detect::median({})));
  EXPECT_EQ(detect::median({3, 1, 2}), 2);
  EXPECT_EQ(detect::median({4, 1, 3, 2}), 2.5);
  EXPECT_NEAR(detect::madScale({1, 2, 3, 4, 100}, 3), 1.4826, 1e-12);
  std::vector<double> v;
  for (int i = 1; i <= 100; ++i) v.push_back(i);
  EXPECT_EQ(detect::quantile(v, 0.99), 99);
  EXPECT_EQ(detect::quantile(v, 1.0), 100);
  EXPECT_EQ(detect::quantile({5}, 0.99), 5);
  detect::Ring r(3);
  for (double x : {1.0, 2.0, 3.0, 4.0}) r.push(x);
  EXPECT_EQ(r.values(), (std::vector<double>{2, 3, 4}));
}

TEST(HealthDetect, LatchPersistsAndRearms) {
  detect::Latch l(3, 2);
  EXPECT_FALSE(l.update(true));
  EXPECT_FALSE(l.update(true));
  EXPECT_FALSE(l.update(false));  // interrupted: starts over
  EXPECT_FALSE(l.update(true));
  EXPECT_FALSE(l.update(true));
  EXPECT_TRUE(l.update(true));  // third in a row: raised, once
  EXPECT_FALSE(l.update(true));
  EXPECT_FALSE(l.update(false));
  EXPECT_TRUE(l.raised());
  EXPECT_FALSE(l.update(false));  // cleared after 2 false
  EXPECT_FALSE(l.raised());
  EXPECT_FALSE(l.update(true));
  EXPECT_FALSE(l.update(true));
  EXPECT_TRUE(l.update(true));  // a restart is reported again
}

// Compute gaps with the jitter measured on this oversubscribed 2-core machine (4 and 8 processes
// computing ~20 ms of work per step behind a barrier, other jobs building next to them): a
// lognormal factor common to the step (log-sd 0.2), a lognormal factor per rank (log-sd 0.15, a
// bit above the measured 0.10-0.18), and now and then a preemption of up to half a step.
struct GapModel {
  std::mt19937_64 g{7};
  double base = 0.020;
  std::vector<double> step(int n, int slowRank = -1, double factor = 1.0) {
    std::lognormal_distribution<double> common(0, 0.2), own(0, 0.15);
    std::uniform_real_distribution<double> u(0, 1);
    const double c = common(g);
    std::vector<double> gaps(static_cast<size_t>(n));
    for (int r = 0; r < n; ++r) {
      double x = base * c * own(g) * (r == slowRank ? factor : 1.0);
      if (u(g) < 0.03) x += 0.5 * base * u(g);
      gaps[static_cast<size_t>(r)] = x;
    }
    return gaps;
  }
};

TEST(HealthDetect, StragglerNoAlarmOnNoise) {
  for (int n : {2, 3, 4, 8}) {
    detect::StragglerDetector d(n, 20);
    GapModel m;
    uint64_t seq = 0;
    for (int s = 0; s < 200 * 20; ++s) {
      const auto f = d.add(seq++, m.step(n));
      EXPECT_TRUE(f.empty()) << "n=" << n << " step " << s << ": " << f.front().detail;
    }
  }
}

TEST(HealthDetect, StragglerAt1_3xIsFoundOnceAndNamed) {
  for (int n : {2, 4, 8}) {
    detect::StragglerDetector d(n, 20);
    GapModel m;
    std::vector<Finding> found;
    int foundAt = -1;
    for (int s = 0; s < 400; ++s) {
      for (const Finding& f : d.add(static_cast<uint64_t>(s), m.step(n, 1, 1.3))) {
        found.push_back(f);
        if (foundAt < 0) foundAt = s;
      }
    }
    ASSERT_EQ(found.size(), 1u) << "n=" << n;
    EXPECT_EQ(found[0].kind, "straggler");
    EXPECT_EQ(found[0].ranks, std::vector<int>{1});
    EXPECT_NE(found[0].detail.find("rank 1 computes 1."), std::string::npos) << found[0].detail;
    EXPECT_LT(foundAt, 60) << "n=" << n;  // a full window (20) and the persistence (3), plus noise
    EXPECT_TRUE(d.flagged(1));
  }
}

// A Reducer step issues several collectives; only the first follows the compute. The follow-ups
// (microsecond gaps) must neither dilute the window nor raise anything.
TEST(HealthDetect, StragglerWithFollowUpCollectives) {
  const int n = 4;
  detect::StragglerDetector d(n, 20);
  GapModel m;
  std::mt19937_64 g(3);
  std::uniform_real_distribution<double> tiny(20e-6, 80e-6);
  std::vector<Finding> found;
  uint64_t seq = 0;
  for (int step = 0; step < 200; ++step) {
    for (const Finding& f : d.add(seq++, m.step(n, step >= 100 ? 3 : -1, 1.5))) found.push_back(f);
    for (int k = 0; k < 3; ++k) {
      std::vector<double> gaps(n);
      for (double& x : gaps) x = tiny(g);
      for (const Finding& f : d.add(seq++, gaps)) found.push_back(f);
    }
    if (step == 99) {
      EXPECT_TRUE(found.empty()) << found.front().detail;
    }
  }
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].ranks, std::vector<int>{3});
}

TEST(HealthDetect, StragglerReportedAgainAfterItStopsAndRestarts) {
  const int n = 3;
  detect::StragglerDetector d(n, 20);
  GapModel m;
  int reports = 0;
  for (int s = 0; s < 300; ++s) {
    const bool slow = s < 100 || s >= 200;
    reports += static_cast<int>(d.add(static_cast<uint64_t>(s), m.step(n, 0, slow ? 1.6 : 1.0)).size());
  }
  EXPECT_EQ(reports, 2);
}

TEST(HealthDetect, StragglerSkipsUnknownGapsAndTinyDifferences) {
  detect::StragglerDetector d(3, 5);
  for (int s = 0; s < 50; ++s) EXPECT_TRUE(d.add(s, {-1, 0.5, 0.01}).empty());  // unknown: skipped
  EXPECT_EQ(d.collectives(), 0u);
  // 1.5x, but 0.5 ms of difference: below the absolute floor.
  for (int s = 0; s < 50; ++s) EXPECT_TRUE(d.add(s, {0.001, 0.001, 0.0015}).empty());
}

// Per-peer transfer times: ~1 ms lognormal, with occasional 20 ms hiccups on random cells.
struct LinkModel {
  std::mt19937_64 g{11};
  std::vector<double> report(int n, int dst, const std::function<double(int, int)>& extra = {}) {
    std::lognormal_distribution<double> ln(0, 0.5);
    std::uniform_real_distribution<double> u(0, 1);
    std::vector<double> p(static_cast<size_t>(n), -1);
    for (int src = 0; src < n; ++src) {
      if (src == dst) continue;
      double x = 0.001 * ln(g);
      if (u(g) < 0.05) x += 0.020 * u(g);
      if (extra) x += extra(src, dst);
      p[static_cast<size_t>(src)] = x;
    }
    return p;
  }
};

std::vector<Finding> runLinks(int n, int collectives, const std::function<double(int, int)>& extra,
                              const std::vector<bool>& quiet = {}) {
  detect::LinkDetector d(n, 20);
  LinkModel m;
  std::vector<Finding> out;
  for (int s = 0; s < collectives; ++s) {
    for (int dst = 0; dst < n; ++dst) d.add(dst, m.report(n, dst, extra));
    for (const Finding& f : d.evaluate(static_cast<uint64_t>(s), quiet)) out.push_back(f);
  }
  return out;
}

TEST(HealthDetect, LinksNoAlarmOnNoise) {
  for (int n : {2, 3, 4, 8, 12}) {
    const auto f = runLinks(n, 200 * 20, {});
    EXPECT_TRUE(f.empty()) << "n=" << n << ": " << f.front().detail;
  }
}

TEST(HealthDetect, SlowCellIsALink) {
  for (int n : {2, 3, 4, 8, 12}) {
    const auto f = runLinks(n, 100, [](int s, int d) { return s == 1 && d == 0 ? 0.025 : 0.0; });
    ASSERT_EQ(f.size(), 1u) << "n=" << n;
    EXPECT_EQ(f[0].kind, "slow_link");
    EXPECT_EQ(f[0].ranks, (std::vector<int>{1, 0}));
    EXPECT_NE(f[0].detail.find("link 1 -> 0 is slow"), std::string::npos) << f[0].detail;
  }
}

TEST(HealthDetect, SlowRowIsTheSenderAndSlowColumnTheReceiver) {
  for (int n : {3, 4, 8}) {
    auto f = runLinks(n, 100, [](int s, int) { return s == 2 ? 0.030 : 0.0; });
    ASSERT_EQ(f.size(), 1u) << "n=" << n;
    EXPECT_EQ(f[0].ranks, std::vector<int>{2});
    EXPECT_NE(f[0].detail.find("rank 2 sends slowly to every peer"), std::string::npos) << f[0].detail;
    f = runLinks(n, 100, [](int, int d) { return d == 0 ? 0.030 : 0.0; });
    ASSERT_EQ(f.size(), 1u) << "n=" << n;
    EXPECT_EQ(f[0].ranks, std::vector<int>{0});
    EXPECT_NE(f[0].detail.find("rank 0 receives slowly from every peer"), std::string::npos) << f[0].detail;
  }
  // A compute straggler's row is not reported as a slow sender.
  EXPECT_TRUE(runLinks(4, 100, [](int s, int) { return s == 2 ? 0.030 : 0.0; }, {false, false, true, false}).empty());
}

TEST(HealthDetect, TrackerOverdueNamesTheAbsentAndTheUnfinished) {
  detect::Tracker t(3, 0.5, 4.0, 20);
  EXPECT_EQ(t.deadline(), 0.5);  // no history: the floor
  double clock = 100;
  for (uint64_t s = 0; s < 10; ++s) {
    for (int r = 0; r < 3; ++r) t.arrive(r, s, "allgatherv", 0.01, clock);
    for (int r = 0; r < 3; ++r) t.complete(r, s, true, {}, clock + 0.01);
    clock += 0.1;
  }
  EXPECT_NEAR(t.spansP99(), 0.01, 1e-9);
  EXPECT_EQ(t.deadline(), 0.5);
  EXPECT_EQ(t.pending(), 0u);
  t.arrive(0, 10, "allgatherv", 0.01, clock);
  t.arrive(1, 10, "allgatherv", 0.01, clock + 0.1);
  EXPECT_FALSE(t.overdue(clock + 0.45));
  auto f = t.overdue(clock + 0.6);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->kind, "hang");
  EXPECT_EQ(f->ranks, std::vector<int>{2});
  EXPECT_EQ(f->seq, 10u);
  EXPECT_NE(f->detail.find("collective #10 (allgatherv) is overdue: rank 2 has not arrived"), std::string::npos)
      << f->detail;
  EXPECT_NE(f->detail.find("rank 2 was last heard arriving at collective #9 (allgatherv)"), std::string::npos) << f->detail;

  // All arrived, rank 1 never finishes: measured from the last arrival.
  t.arrive(2, 10, "allgatherv", 0.01, clock + 0.3);
  t.complete(0, 10, true, {}, clock + 0.31);
  t.complete(2, 10, true, {}, clock + 0.31);
  EXPECT_FALSE(t.overdue(clock + 0.75));
  f = t.overdue(clock + 0.85);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->ranks, std::vector<int>{1});
  EXPECT_NE(f->detail.find("not finished"), std::string::npos) << f->detail;
}

TEST(HealthDetect, TrackerNamesARankThatLeftAtOnceAndOnlyIt) {
  detect::Tracker t(4, 0.5, 4.0, 20);
  for (int r = 0; r < 4; ++r) t.arrive(r, 0, "barrier", -1, 10.0);
  for (int r = 0; r < 4; ++r) t.complete(r, 0, true, {}, 10.01);
  t.left(3);  // rank 3 closed its monitor after #0
  t.arrive(0, 1, "allgatherv", 0.01, 11.0);
  // Rank 1 and 2 may still come; rank 3 never will: named at once, alone.
  auto f = t.overdue(11.0);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->kind, "hang");
  EXPECT_EQ(f->ranks, std::vector<int>{3});
  EXPECT_EQ(f->seq, 1u);
  EXPECT_NE(f->detail.find("collective #1 (allgatherv) cannot complete: rank 3 closed its monitor (left the job) and "
                           "was last heard arriving at collective #0 (barrier)"),
            std::string::npos)
      << f->detail;
  // A rank that leaves after arriving holds nothing up by leaving.
  detect::Tracker u(2, 0.5, 4.0, 20);
  u.arrive(0, 0, "barrier", -1, 1.0);
  u.arrive(1, 0, "barrier", -1, 1.0);
  u.left(1);
  EXPECT_FALSE(u.overdue(1.1));
}

TEST(HealthDetect, TrackerAllowsALargeTransferItsBytesAtMinGbps) {
  // The job's first collective, 3 ranks of 100 MB each: at 0.1 Gbit/s the busiest rank may take
  // 3 x 100 MB x 8 / 1e8 = 24 s beyond the 0.5 s floor before the unfinished are named.
  detect::Tracker t(3, 0.5, 4.0, 20, 0.1);
  for (int r = 0; r < 3; ++r) t.arrive(r, 0, "allgatherv", -1, 10.0, 100000000);
  t.complete(0, 0, true, {}, 12.0);
  EXPECT_FALSE(t.overdue(10.0 + 24.4));
  auto f = t.overdue(10.0 + 24.6);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->ranks, (std::vector<int>{1, 2}));
  EXPECT_NE(f->detail.find("(deadline 24.50 s = max(floor 500.0 ms, 4 x recent p99 n/a) + 24.00 s for its bytes at "
                           "0.1 Gbit/s)"),
            std::string::npos)
      << f->detail;
  // Ranks that never arrive get no allowance: nothing is moving for them.
  detect::Tracker u(3, 0.5, 4.0, 20, 0.1);
  u.arrive(0, 0, "allgatherv", -1, 10.0, 100000000);
  EXPECT_TRUE(u.overdue(10.6));
}

TEST(HealthDetect, TrackerDeadlineAdaptsToRecentSpans) {
  detect::Tracker t(2, 0.5, 4.0, 20);
  for (uint64_t s = 0; s < 100; ++s) {
    t.arrive(0, s, "barrier", -1, s * 10.0);
    t.arrive(1, s, "barrier", -1, s * 10.0 + 1.0);
    t.complete(0, s, true, {}, s * 10.0 + 2.0);
    t.complete(1, s, true, {}, s * 10.0 + 2.0);
  }
  EXPECT_NEAR(t.spansP99(), 2.0, 1e-9);
  EXPECT_NEAR(t.deadline(), 8.0, 1e-9);
  // A failed collective adds no span.
  t.arrive(0, 100, "barrier", -1, 1000);
  t.arrive(1, 100, "barrier", -1, 1000);
  t.complete(0, 100, false, {}, 1100);
  t.complete(1, 100, false, {}, 1100);
  EXPECT_NEAR(t.spansP99(), 2.0, 1e-9);
}

// ---- wire: the decoder never trusts the network ---------------------------------------------------

TEST(HealthWire, RoundTrips) {
  wire::Finding f;
  f.fatal = true;
  f.seq = 17;
  f.time = 1.5;
  f.kind = "hang";
  f.ranks = {2, 3};
  f.detail = "rank 2 \"stopped\"";
  const std::string bytes = wire::encode(f);
  size_t pos = 0;
  wire::Type type{};
  std::string payload;
  ASSERT_TRUE(wire::nextFrame(bytes, pos, type, payload));
  EXPECT_EQ(pos, bytes.size());
  EXPECT_EQ(type, wire::Type::kFinding);
  const wire::Finding g = wire::decodeFinding(payload, 4);
  EXPECT_EQ(g.fatal, true);
  EXPECT_EQ(g.seq, 17u);
  EXPECT_EQ(g.ranks, (std::vector<int>{2, 3}));
  EXPECT_EQ(g.detail, f.detail);
  EXPECT_THROW(wire::decodeFinding(payload, 3), wire::ProtocolError);  // rank 3 of 3

  wire::Complete c;
  c.seq = 5;
  c.peerSeconds = {-1, 0.25, 0.5};
  const std::string cb = wire::encode(c);
  pos = 0;
  ASSERT_TRUE(wire::nextFrame(cb, pos, type, payload));
  EXPECT_EQ(wire::decodeComplete(payload, 3).peerSeconds, c.peerSeconds);
  EXPECT_THROW(wire::decodeComplete(payload, 4), wire::ProtocolError);  // one per rank or none
  // The coordinator's goodbye says how far rank 0 got; an empty one (a coordinator that does not
  // know) is -1; anything else is a protocol error.
  const std::string bye = wire::encodeCoordinatorBye(42);
  pos = 0;
  ASSERT_TRUE(wire::nextFrame(bye, pos, type, payload));
  EXPECT_EQ(type, wire::Type::kBye);
  EXPECT_EQ(wire::decodeCoordinatorBye(payload), 42);
  EXPECT_EQ(wire::decodeCoordinatorBye(""), -1);
  EXPECT_THROW(wire::decodeCoordinatorBye(payload.substr(0, 4)), wire::ProtocolError);
  EXPECT_THROW(wire::decodeCoordinatorBye(payload + "x"), wire::ProtocolError);
  // A partial frame waits for more bytes.
  pos = 0;
  EXPECT_FALSE(wire::nextFrame(cb.substr(0, cb.size() - 1), pos, type, payload));
  EXPECT_EQ(pos, 0u);
}

TEST(HealthWire, FuzzedFramesAreRejectedOrDecodedCleanly) {
  std::mt19937_64 g(5);
  wire::Arrive a;
  a.seq = 3;
  a.op = "allgatherv";
  const std::vector<std::string> seeds = {
      wire::encode(wire::Hello{1, 2, 4, 99}), wire::encode(a),
      wire::encode(wire::Complete{7, true, 0.1, 0.01, {-1, 1, 2, 3}}),
      wire::encode(wire::Finding{false, 1, 2.0, "straggler", {1}, "x"}), wire::encodeHeartbeat({1, 2}),
      wire::frame(wire::Type::kBye)};
  int decoded = 0, rejected = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string s = seeds[static_cast<size_t>(i) % seeds.size()];
    const int edits = 1 + static_cast<int>(g() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (g() % 3) {
        case 0: s[g() % s.size()] = static_cast<char>(g()); break;
        case 1: s.resize(g() % (s.size() + 1)); break;
        default: s.insert(g() % (s.size() + 1), 1, static_cast<char>(g())); break;
      }
      if (s.empty()) s = "x";
    }
    try {
      size_t pos = 0;
      wire::Type type{};
      std::string payload;
      while (wire::nextFrame(s, pos, type, payload)) {
        switch (type) {
          case wire::Type::kHello: wire::decodeHello(payload); break;
          case wire::Type::kArrive: wire::decodeArrive(payload); break;
          case wire::Type::kComplete: wire::decodeComplete(payload, 4); break;
          case wire::Type::kFinding: wire::decodeFinding(payload, 4); break;
          case wire::Type::kHeartbeat: wire::decodeHeartbeat(payload, 4); break;
          default: wire::decodeEmpty(payload); break;
        }
        ++decoded;
      }
    } catch (const wire::ProtocolError&) {
      ++rejected;
    }
  }
  EXPECT_GT(decoded, 0);
  EXPECT_GT(rejected, 0);
}

// ---- the control plane over TCP ---------------------------------------------------------------------

MonitorOptions fastOptions() {
  MonitorOptions o;
  o.heartbeatInterval = 0.05;
  o.heartbeatTimeout = 0.5;
  o.timeoutFloor = 0.5;
  o.timeoutFactor = 4;
  o.window = 20;
  o.address = "127.0.0.1";
  return o;
}

// The findings one rank's agent delivered.
class Inbox {
 public:
  FindingCallback callback() {
    return [this](const Anomaly& a, bool fatal) {
      std::lock_guard<std::mutex> lk(mu_);
      got_.push_back({a, fatal, now()});
      cv_.notify_all();
    };
  }
  // Waits up to `seconds` for a finding of `kind`; returns it (kind empty if none came).
  Anomaly waitFor(const std::string& kind, double seconds, bool* fatal = nullptr, double* at = nullptr) {
    std::unique_lock<std::mutex> lk(mu_);
    Anomaly found;
    cv_.wait_for(lk, std::chrono::duration<double>(seconds), [&] {
      for (const auto& e : got_)
        if (e.a.kind == kind) {
          found = e.a;
          if (fatal) *fatal = e.fatal;
          if (at) *at = e.at;
          return true;
        }
      return false;
    });
    return found;
  }
  size_t count() {
    std::lock_guard<std::mutex> lk(mu_);
    return got_.size();
  }
  std::string list() {
    std::lock_guard<std::mutex> lk(mu_);
    std::string s;
    for (const auto& e : got_) s += e.a.kind + ": " + e.a.detail + "\n";
    return s;
  }

 private:
  struct Entry {
    Anomaly a;
    bool fatal;
    double at;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Entry> got_;
};

// One collective as the monitor reports it: arrive, the collective (a barrier), complete.
void step(Agent& agent, Backend& b, uint64_t seq, double gap, std::vector<double> peers = {}) {
  agent.arrive({seq, "allgatherv", 64, gap});
  b.barrier()->wait();
  Completion c;
  c.seq = seq;
  c.seconds = 1e-4;
  c.timing.peerSeconds = std::move(peers);
  agent.complete(c);
}

constexpr double kCollectiveTimeout = 30.0;

TEST(HealthControl, NormalRunAndCloseReportNothing) {
  runRanks(
      3,
      [](Backend& b) {
        Inbox inbox;
        MonitorOptions o = fastOptions();
        o.address = "";  // rank 0 advertises its interfaces' addresses, loopback last
        Agent agent(b, o, inbox.callback(), 10.0);
        for (uint64_t s = 0; s < 30; ++s) step(agent, b, s, 0.001 * (1 + b.rank()));
        std::this_thread::sleep_for(std::chrono::milliseconds(700));  // longer than the heartbeat timeout
        if (b.rank() == 0) {
          const std::string j = agent.coordinatorJson();
          EXPECT_NE(j.find("\"state\":\"live\""), std::string::npos) << j;
          EXPECT_NE(j.find("\"last_seq\":29"), std::string::npos) << j;
          EXPECT_NE(j.find("\"findings\":0"), std::string::npos) << j;
        } else {
          EXPECT_EQ(agent.coordinatorJson(), "null");
        }
        b.barrier()->wait();
        agent.close();
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        EXPECT_EQ(inbox.count(), 0u) << "rank " << b.rank() << ":\n" << inbox.list();
      },
      kCollectiveTimeout);
}

TEST(HealthControl, SingleRankWorks) {
  runRanks(
      1,
      [](Backend& b) {
        Inbox inbox;
        Agent agent(b, fastOptions(), inbox.callback(), 10.0);
        for (uint64_t s = 0; s < 30; ++s) step(agent, b, s, 0.01, {-1});
        // The coordinator reads the reports asynchronously.
        std::string j;
        for (int i = 0; i < 200 && j.find("\"last_seq\":29") == std::string::npos; ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
          j = agent.coordinatorJson();
        }
        EXPECT_NE(j.find("\"last_seq\":29"), std::string::npos) << j;
        agent.close();
        agent.close();  // idempotent
        EXPECT_EQ(inbox.count(), 0u) << inbox.list();
      },
      kCollectiveTimeout);
}

TEST(HealthControl, BadCoordinatorAddressFailsEveryRank) {
  runRanks(
      3,
      [](Backend& b) {
        MonitorOptions o = fastOptions();
        o.address = "127.0.0.1,not-an-address";
        Inbox inbox;
        if (b.rank() == 0) {
          EXPECT_THROW(Agent(b, o, inbox.callback(), 5.0), InvalidArgument);
        } else {
          try {
            Agent agent(b, o, inbox.callback(), 5.0);
            ADD_FAILURE() << "no error";
          } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("rank 0 could not start the coordinator"), std::string::npos)
                << e.what();
            EXPECT_NE(std::string(e.what()).find("not-an-address"), std::string::npos) << e.what();
          }
        }
      },
      kCollectiveTimeout);
}

// Ranks close at different times (rank 0 first): leaving is never a crash.
TEST(HealthControl, StaggeredCloseReportsNothing) {
  runRanks(
      3,
      [](Backend& b) {
        Inbox inbox;
        {
          Agent agent(b, fastOptions(), inbox.callback(), 10.0);
          for (uint64_t s = 0; s < 5; ++s) step(agent, b, s, 0.001);
          std::this_thread::sleep_for(std::chrono::milliseconds(300 * (2 - b.rank())));
        }  // the destructor closes
        EXPECT_EQ(inbox.count(), 0u) << "rank " << b.rank() << ":\n" << inbox.list();
      },
      kCollectiveTimeout);
}

TEST(HealthControl, RankThatNeverArrivesIsNamedOnEveryRank) {
  runRanks(
      3,
      [](Backend& b) {
        Inbox inbox;
        Agent agent(b, fastOptions(), inbox.callback(), 10.0);
        for (uint64_t s = 0; s < 10; ++s) step(agent, b, s, 0.001);
        b.barrier()->wait();
        const double t0 = now();
        if (b.rank() != 2) agent.arrive({10, "allgatherv", 64, 0.001});
        bool fatal = false;
        double at = 0;
        const Anomaly a = inbox.waitFor("hang", 3.0, &fatal, &at);
        EXPECT_EQ(a.kind, "hang") << "rank " << b.rank() << ":\n" << inbox.list();
        EXPECT_TRUE(fatal);
        EXPECT_EQ(a.ranks, std::vector<int>{2});
        EXPECT_EQ(a.seq, 10u);
        EXPECT_NE(a.detail.find("collective #10 (allgatherv) is overdue"), std::string::npos) << a.detail;
        if (!a.kind.empty()) EXPECT_LT(at - t0, 1.5);  // deadline 0.5 s (the floor) plus polling
        b.barrier()->wait();
        agent.close();
        EXPECT_EQ(inbox.count(), 1u) << inbox.list();  // one fatal finding, nothing after it
      },
      kCollectiveTimeout);
}

// A rank that leaves early (an exception takes it out of its `with Monitor` block) while the others
// go on to the next collective: named at once, where it waited for the overdue deadline (or, rank 0,
// for the backend's timeout: its coordinator had gone).
void expectLeaverNamed(int leaver, double othersLateBy) {
  runRanks(
      3,
      [&](Backend& b) {
        Inbox inbox;
        Agent agent(b, fastOptions(), inbox.callback(), 10.0);
        for (uint64_t s = 0; s < 5; ++s) step(agent, b, s, 0.001);
        b.barrier()->wait();
        if (b.rank() == leaver) {
          agent.close();
          b.barrier()->wait();
          EXPECT_EQ(inbox.count(), 0u) << inbox.list();
          return;
        }
        std::this_thread::sleep_for(std::chrono::duration<double>(othersLateBy));
        const double t0 = now();
        agent.arrive({5, "allgatherv", 64, 0.001});
        bool fatal = false;
        double at = 0;
        const Anomaly a = inbox.waitFor("hang", 4.0, &fatal, &at);
        EXPECT_EQ(a.ranks, std::vector<int>{leaver}) << "rank " << b.rank() << ":\n" << inbox.list();
        EXPECT_TRUE(fatal);
        EXPECT_EQ(a.seq, 5u);
        EXPECT_NE(a.detail.find("collective #5 (allgatherv) cannot complete: rank " + std::to_string(leaver) +
                                " closed its monitor (left the job)"),
                  std::string::npos)
            << a.detail;
        if (!a.kind.empty()) EXPECT_LT(at - t0, 1.5);  // arrivals go out in batches; polling
        b.barrier()->wait();
        agent.close();
        EXPECT_EQ(inbox.count(), 1u) << inbox.list();
      },
      kCollectiveTimeout);
}

TEST(HealthControl, RankThatLeftEarlyIsNamedAtOnce) { expectLeaverNamed(2, 0.0); }

TEST(HealthControl, CoordinatorThatLeftEarlyIsNamedByTheRanksWaitingForIt) { expectLeaverNamed(0, 0.0); }

TEST(HealthControl, CoordinatorThatLeftEarlyIsNamedAtTheNextCollective) {
  expectLeaverNamed(0, 2.5);  // after the coordinator's goodbye: the agents know how far rank 0 got
}

TEST(HealthControl, StragglerIsNamedOnEveryRank) {
  runRanks(
      3,
      [](Backend& b) {
        Inbox inbox;
        Agent agent(b, fastOptions(), inbox.callback(), 10.0);
        std::mt19937_64 g(static_cast<uint64_t>(b.rank()) + 1);
        std::lognormal_distribution<double> ln(0, 0.1);
        for (uint64_t s = 0; s < 40; ++s) step(agent, b, s, 0.020 * ln(g) * (b.rank() == 1 ? 1.5 : 1.0));
        bool fatal = true;
        const Anomaly a = inbox.waitFor("straggler", 3.0, &fatal);
        EXPECT_EQ(a.ranks, std::vector<int>{1}) << "rank " << b.rank() << ":\n" << inbox.list();
        EXPECT_FALSE(fatal);
        EXPECT_NE(a.detail.find("rank 1 computes 1."), std::string::npos) << a.detail;
        b.barrier()->wait();
        agent.close();
        EXPECT_EQ(inbox.count(), 1u) << inbox.list();
      },
      kCollectiveTimeout);
}

TEST(HealthControl, SlowLinkIsNamedOnEveryRank) {
  const int n = 4;
  runRanks(
      n,
      [n](Backend& b) {
        Inbox inbox;
        Agent agent(b, fastOptions(), inbox.callback(), 10.0);
        std::mt19937_64 g(static_cast<uint64_t>(b.rank()) + 1);
        std::lognormal_distribution<double> ln(0, 0.3);
        for (uint64_t s = 0; s < 40; ++s) {
          std::vector<double> peers(n, -1);
          for (int src = 0; src < n; ++src)
            if (src != b.rank())
              peers[static_cast<size_t>(src)] = 0.001 * ln(g) + (src == 3 && b.rank() == 1 ? 0.025 : 0);
          step(agent, b, s, 0.0005, peers);
        }
        bool fatal = true;
        const Anomaly a = inbox.waitFor("slow_link", 3.0, &fatal);
        EXPECT_EQ(a.ranks, (std::vector<int>{3, 1})) << "rank " << b.rank() << ":\n" << inbox.list();
        EXPECT_FALSE(fatal);
        EXPECT_NE(a.detail.find("link 3 -> 1 is slow"), std::string::npos) << a.detail;
        if (b.rank() == 0) {
          const std::string j = agent.coordinatorJson();
          EXPECT_NE(j.find("\"link_median\":[[null,"), std::string::npos) << j;
        }
        b.barrier()->wait();
        agent.close();
        EXPECT_EQ(inbox.count(), 1u) << inbox.list();
      },
      kCollectiveTimeout);
}

// ---- hand-made peers: crashes, silences, malformed frames ------------------------------------------

struct Rendezvous {
  uint64_t token = 0;
  uint16_t port = 0;
};

// Takes part in the Agent constructor's two broadcasts as a non-root rank.
Rendezvous learnCoordinator(Backend& b) {
  uint64_t length = 0;
  b.broadcast(&length, sizeof length, 0)->wait(10.0);
  std::string info(length, '\0');
  b.broadcast(info.data(), info.size(), 0)->wait(10.0);
  // "efhm1|token|port|addresses"
  const size_t a = info.find('|'), c = info.find('|', a + 1), d = info.find('|', c + 1);
  Rendezvous r;
  r.token = std::stoull(info.substr(a + 1, c - a - 1), nullptr, 16);
  r.port = static_cast<uint16_t>(std::stoul(info.substr(c + 1, d - c - 1)));
  return r;
}

// Plays rank 0's part of the rendezvous with `token` and `port`.
void announceCoordinator(Backend& b, uint64_t token, uint16_t port) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(token));
  std::string info = std::string("efhm1|") + hex + "|" + std::to_string(port) + "|127.0.0.1";
  uint64_t length = info.size();
  b.broadcast(&length, sizeof length, 0)->wait(10.0);
  b.broadcast(info.data(), info.size(), 0)->wait(10.0);
}

int connectLoopback(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa), 0);
  return fd;
}

void sendAll(int fd, const std::string& bytes) {
  EXPECT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
}

// Reads frames from `fd` for up to `seconds` until one of `type`; false if none (or EOF).
bool readUntil(int fd, wire::Type want, double seconds, std::string* buf) {
  const double until = now() + seconds;
  for (;;) {
    size_t pos = 0;
    wire::Type type{};
    std::string payload;
    while (wire::nextFrame(*buf, pos, type, payload)) {
      if (type == want) {
        buf->erase(0, pos);
        return true;
      }
    }
    buf->erase(0, pos);
    const double left = until - now();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left * 1000) + 1) <= 0) continue;
    char tmp[4096];
    const ssize_t k = ::recv(fd, tmp, sizeof tmp, 0);
    if (k <= 0) return false;
    buf->append(tmp, static_cast<size_t>(k));
  }
}

// A well-behaved rank's view of misbehaving ones: its agent reports exactly one fatal finding of
// `kind` naming `culprits`, whose detail holds `detailPart`.
// `arriveAt`: the agent first reports arriving at that collective (the finding's seq for an
// agent's own finding).
void expectOneFatalFinding(Backend& b, const std::string& kind, const std::string& detailPart,
                           const std::vector<int>& culprits, std::optional<uint64_t> arriveAt = std::nullopt) {
  Inbox inbox;
  Agent agent(b, fastOptions(), inbox.callback(), 10.0);
  if (arriveAt) agent.arrive({*arriveAt, "allgatherv", 64, 0.001});
  b.barrier()->wait();
  bool fatal = false;
  const Anomaly a = inbox.waitFor(kind, 3.0, &fatal);
  EXPECT_EQ(a.ranks, culprits) << "rank " << b.rank() << ":\n" << inbox.list();
  EXPECT_TRUE(fatal);
  EXPECT_NE(a.detail.find(detailPart), std::string::npos) << a.detail;
  if (arriveAt) EXPECT_EQ(a.seq, *arriveAt);
  b.barrier()->wait();
  agent.close();
  EXPECT_EQ(inbox.count(), 1u) << inbox.list();
}

// Ranks `culprits` (the last of `size`) are hand-made agents that connect and are READY, then do
// `misbehave(fd)`, all at once; the others are real agents that must name them with `kind`,
// fatally, in one finding, in ~the heartbeat timeout.
void expectRanksNamed(int size, const std::vector<int>& culprits, const std::string& kind,
                      const std::string& detailPart, const std::function<void(int)>& misbehave) {
  runRanks(
      size,
      [&](Backend& b) {
        if (b.rank() >= culprits.front()) {
          const Rendezvous r = learnCoordinator(b);
          const int fd = connectLoopback(r.port);
          sendAll(fd, wire::encode(wire::Hello{r.token, static_cast<uint32_t>(b.rank()),
                                               static_cast<uint32_t>(size), 1}));
          std::string buf;
          EXPECT_TRUE(readUntil(fd, wire::Type::kReady, 10.0, &buf));
          b.barrier()->wait();
          misbehave(fd);
          b.barrier()->wait();
          ::close(fd);
          return;
        }
        expectOneFatalFinding(b, kind, detailPart, culprits);
      },
      kCollectiveTimeout);
}

// Rank 2 of 3 misbehaves.
void expectRank2Named(const std::string& kind, const std::string& detailPart,
                      const std::function<void(int)>& misbehave) {
  expectRanksNamed(3, {2}, kind, detailPart, misbehave);
}

TEST(HealthControl, CrashedRankIsNamed) {
  expectRank2Named("crash", "rank 2 crashed", [](int fd) { ::shutdown(fd, SHUT_RDWR); });
}

TEST(HealthControl, SilentRankIsNamed) {
  // Connected, but no heartbeat (a SIGSTOPped process).
  expectRank2Named("hang", "rank 2 stopped responding: no heartbeat",
                   [](int) { std::this_thread::sleep_for(std::chrono::milliseconds(1500)); });
}

TEST(HealthControl, TwoSilentRanksAreNamedTogether) {
  // Ranks 2 and 3 connect, then fall silent together (a frozen host with two ranks): one finding
  // names both (it named the first past the timeout only).
  expectRanksNamed(4, {2, 3}, "hang", "rank 3 stopped responding: no heartbeat",
                   [](int) { std::this_thread::sleep_for(std::chrono::milliseconds(1500)); });
}

TEST(HealthControl, TwoCrashedRanksAreNamedTogether) {
  // Ranks 2 and 3 drop their connections at once (a job's processes killed together): one finding
  // names both (it named whichever dropped first).
  expectRanksNamed(4, {2, 3}, "crash", "rank 3 crashed", [](int fd) { ::shutdown(fd, SHUT_RDWR); });
}

TEST(HealthControl, MalformedFramesFromARankAreALostConnection) {
  expectRank2Named("crash", "protocol error", [](int fd) {
    sendAll(fd, std::string("\x45\x46\x48\x4d\x04\x00\xff\xff\xff\xff garbage", 16));
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  });
}

TEST(HealthControl, WrongTokenIsRejectedAndTheRankCanStillJoin) {
  runRanks(
      2,
      [](Backend& b) {
        if (b.rank() == 1) {
          const Rendezvous r = learnCoordinator(b);
          int fd = connectLoopback(r.port);
          sendAll(fd, wire::encode(wire::Hello{r.token ^ 1, 1, 2, 1}));
          std::string buf;
          EXPECT_FALSE(readUntil(fd, wire::Type::kReady, 3.0, &buf));  // closed on us
          ::close(fd);
          fd = connectLoopback(r.port);
          sendAll(fd, wire::encode(wire::Hello{r.token, 1, 2, 1}));
          buf.clear();
          EXPECT_TRUE(readUntil(fd, wire::Type::kReady, 5.0, &buf));
          sendAll(fd, wire::frame(wire::Type::kBye));
          b.barrier()->wait();
          ::close(fd);
          return;
        }
        Inbox inbox;
        Agent agent(b, fastOptions(), inbox.callback(), 10.0);
        b.barrier()->wait();
        agent.close();
        EXPECT_EQ(inbox.count(), 0u) << inbox.list();
      },
      kCollectiveTimeout);
}

TEST(HealthControl, ConnectTimeoutNamesTheMissingRank) {
  runRanks(
      3,
      [](Backend& b) {
        if (b.rank() == 2) {
          learnCoordinator(b);  // takes part in the rendezvous, never connects
          return;
        }
        Inbox inbox;
        try {
          Agent agent(b, fastOptions(), inbox.callback(), 1.0);
          ADD_FAILURE() << "rank " << b.rank() << ": no error";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("rank(s) 2 did not connect"), std::string::npos) << e.what();
        }
      },
      kCollectiveTimeout);
}

// Rank 0 is a hand-made coordinator: READY, then `misbehave(fds)`; ranks 1 and 2 are real agents
// that must report rank 0 with `kind`, fatally.
void expectCoordinatorNamed(const std::string& kind, const std::string& detailPart,
                            const std::function<void(std::vector<int>&)>& misbehave) {
  runRanks(
      3,
      [&](Backend& b) {
        if (b.rank() == 0) {
          const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
          sockaddr_in sa{};
          sa.sin_family = AF_INET;
          sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
          ASSERT_EQ(::bind(lfd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa), 0);
          ASSERT_EQ(::listen(lfd, 8), 0);
          socklen_t len = sizeof sa;
          ::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len);
          const uint64_t token = 0x1234;
          announceCoordinator(b, token, ntohs(sa.sin_port));
          std::vector<int> fds;
          for (int i = 0; i < 2; ++i) {
            fds.push_back(::accept(lfd, nullptr, nullptr));
            std::string buf;
            EXPECT_TRUE(readUntil(fds.back(), wire::Type::kHello, 5.0, &buf));
          }
          for (int fd : fds) sendAll(fd, wire::frame(wire::Type::kReady));
          b.barrier()->wait();
          misbehave(fds);
          b.barrier()->wait();
          for (int fd : fds) ::close(fd);
          ::close(lfd);
          return;
        }
        expectOneFatalFinding(b, kind, detailPart, {0}, 7);  // found at the collective they were in
      },
      kCollectiveTimeout);
}

TEST(HealthControl, AgentsReportACrashedCoordinator) {
  expectCoordinatorNamed("crash", "rank 0 (the coordinator) crashed", [](std::vector<int>& fds) {
    for (int fd : fds) ::shutdown(fd, SHUT_RDWR);
  });
}

TEST(HealthControl, AgentsReportASilentCoordinator) {
  expectCoordinatorNamed("hang", "rank 0 (the coordinator) stopped responding",
                         [](std::vector<int>&) { std::this_thread::sleep_for(std::chrono::milliseconds(1500)); });
}

TEST(HealthControl, AgentsForwardFindingsAndGoQuietAfterTheCoordinatorsGoodbye) {
  runRanks(
      2,
      [](Backend& b) {
        if (b.rank() == 0) {
          const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
          sockaddr_in sa{};
          sa.sin_family = AF_INET;
          sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
          ASSERT_EQ(::bind(lfd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa), 0);
          ASSERT_EQ(::listen(lfd, 8), 0);
          socklen_t len = sizeof sa;
          ::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len);
          announceCoordinator(b, 7, ntohs(sa.sin_port));
          const int fd = ::accept(lfd, nullptr, nullptr);
          std::string buf;
          EXPECT_TRUE(readUntil(fd, wire::Type::kHello, 5.0, &buf));
          sendAll(fd, wire::frame(wire::Type::kReady));
          sendAll(fd, wire::encode(wire::Finding{false, 4, 1.0, "straggler", {1}, "rank 1 computes 2.00x"}));
          b.barrier()->wait();
          sendAll(fd, wire::frame(wire::Type::kBye));
          ::shutdown(fd, SHUT_WR);
          std::this_thread::sleep_for(std::chrono::milliseconds(1000));  // longer than the heartbeat timeout
          b.barrier()->wait();
          ::close(fd);
          ::close(lfd);
          return;
        }
        Inbox inbox;
        Agent agent(b, fastOptions(), inbox.callback(), 10.0);
        bool fatal = true;
        const Anomaly a = inbox.waitFor("straggler", 3.0, &fatal);
        EXPECT_EQ(a.ranks, std::vector<int>{1});
        EXPECT_EQ(a.seq, 4u);
        EXPECT_FALSE(fatal);
        b.barrier()->wait();
        b.barrier()->wait();
        agent.arrive({0, "barrier", 0, -1});  // after the goodbye: ignored
        agent.close();
        EXPECT_EQ(inbox.count(), 1u) << inbox.list();
      },
      kCollectiveTimeout);
}

}  // namespace
}  // namespace efcomm::health
