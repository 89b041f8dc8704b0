// The health monitor (efcomm/health.hpp): a Backend decorator that records every collective in a
// fixed-size ring (the flight recorder), reports arrivals and completions to the control plane
// (control.hpp), and aborts the wrapped backend when the control plane says a collective cannot
// complete.
//
// Cost per collective: two clock reads, one ring slot written under a mutex, and two small
// messages to the coordinator; nothing proportional to the payload.

#include "efcomm/health.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

#include "comm/backend.hpp"
#include "common/json.hpp"
#include "efcomm/build_info.hpp"
#include "health/control.hpp"

namespace efcomm::health {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// How long a failed collective waits for the control plane's verdict on it.
constexpr double kVerdictGraceSeconds = 0.5;

// Seconds since the Unix epoch: the dumps' time base, comparable across the ranks of one host
// exactly and across hosts as well as their clocks agree.
double epochNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

enum class Status { kPending, kOk, kFailed };

const char* statusName(Status s) {
  switch (s) {
    case Status::kPending: return "pending";
    case Status::kOk: return "ok";
    case Status::kFailed: return "failed";
  }
  return "?";
}

// One collective in the flight recorder. Times are epoch seconds; NaN = unknown / not yet.
struct Record {
  uint64_t seq = std::numeric_limits<uint64_t>::max();  // max: slot never used
  const char* op = "";
  std::string key, algorithm;
  uint64_t bytes = 0;
  double enqueue = kNaN, start = kNaN, end = kNaN, gap = kNaN;
  Status status = Status::kPending;
  std::string error;
  std::vector<double> peers;  // per peer seconds after start; empty: not measured
};

std::string jsonOrNull(const std::string& s) { return s.empty() ? "null" : json::quote(s); }

std::string rankArray(const std::vector<int>& ranks) {
  std::string out = "[";
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? "," : "") + std::to_string(ranks[i]);
  return out + "]";
}

std::string hostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "";
  return buf;
}

}  // namespace

// ---- the monitor's state -----------------------------------------------------------------------

class MonitorImpl {
 public:
  MonitorImpl(std::shared_ptr<Backend> inner, MonitorOptions options)
      : inner_(std::move(inner)), options_(std::move(options)), ring_(options_.capacity) {}

  Backend& inner() { return *inner_; }
  const MonitorOptions& options() const { return options_; }

  void start(double connectTimeout) {
    auto agent = std::make_shared<Agent>(
        *inner_, options_, [this](const Anomaly& a, bool fatal) { onFinding(a, fatal); }, connectTimeout);
    std::lock_guard<std::mutex> lk(mu_);
    job_ = agent->job();
    agent_ = std::move(agent);
  }

  // A collective is being issued: its record, numbered like on every other rank.
  uint64_t arrive(const char* op, uint64_t bytes) {
    const double now = epochNow();
    Arrival a;
    std::shared_ptr<Agent> agent;
    {
      std::lock_guard<std::mutex> lk(mu_);
      agent = agent_;
      a.seq = nextSeq_++;
      // Time outside collectives since the last one finished: the rank's compute. None when
      // another collective is still in flight (an async step), none before the first.
      a.gapSeconds = inFlight_ > 0 || std::isnan(lastEnd_) ? -1.0 : now - lastEnd_;
      ++inFlight_;
      Record& r = slot(a.seq);
      if (r.seq != std::numeric_limits<uint64_t>::max()) ++dropped_;
      r = Record{};
      r.seq = a.seq;
      r.op = op;
      r.key = key_;
      r.algorithm = algorithm_;
      r.bytes = bytes;
      r.enqueue = now;
      r.gap = a.gapSeconds < 0 ? kNaN : a.gapSeconds;
    }
    a.op = op;
    a.bytes = bytes;
    if (agent) agent->arrive(a);
    return a.seq;
  }

  // Collective `seq` finished on this rank; `error` empty when it succeeded.
  void complete(uint64_t seq, const std::string& error, const WorkTiming& timing) {
    const double now = epochNow();
    Completion c;
    c.seq = seq;
    c.ok = error.empty();
    c.timing = timing;
    std::shared_ptr<Agent> agent;
    {
      std::lock_guard<std::mutex> lk(mu_);
      agent = agent_;
      --inFlight_;
      lastEnd_ = now;
      Record& r = slot(seq);
      if (r.seq == seq) {
        r.end = now;
        r.status = error.empty() ? Status::kOk : Status::kFailed;
        r.error = error;
        if (timing.readySeconds >= 0) r.start = r.enqueue + timing.readySeconds;
        r.peers = timing.peerSeconds;
        c.seconds = now - r.enqueue;
      }
    }
    if (agent) agent->complete(c);
  }

  void label(const std::string& key, const std::string& algorithm) {
    std::lock_guard<std::mutex> lk(mu_);
    key_ = key;
    algorithm_ = algorithm;
  }

  // A finding of this rank's own (the Reducer's non-finite check, a mismatch).
  void report(const std::string& kind, const std::vector<int>& ranks, const std::string& detail) {
    uint64_t seq = 0;
    {
      std::lock_guard<std::mutex> lk(mu_);
      seq = nextSeq_ == 0 ? 0 : nextSeq_ - 1;
    }
    addAnomaly({kind, ranks, detail, seq, epochNow()});
  }

  std::vector<Anomaly> anomalies() const {
    std::lock_guard<std::mutex> lk(mu_);
    return anomalies_;
  }

  // `coordinator`: the coordinator's view as JSON; null: asked of the agent (rank 0's, while it
  // runs).
  std::string dumpJson(const std::string& reason, const std::string* coordinator = nullptr) const;

  // Dumps are serialized (a failed collective, the agent's verdict, SIGUSR1 and close may dump at
  // once) and each writes a file of its own before the rename: two writers of one temporary file
  // could leave an empty dump in place when the process then dies.
  void dump(const std::string& path, const std::string& reason, const std::string* coordinator = nullptr) const {
    const std::string text = dumpJson(reason, coordinator);
    std::lock_guard<std::mutex> lk(dumpMu_);
    const std::string tmp = path + ".tmp" + std::to_string(getpid()) + "-" + std::to_string(++dumps_);
    bool written = false;
    int why = 0;  // errno of the step that failed, read before anything else can change it
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      if (f) {
        f << text;
        written = static_cast<bool>(f.flush());
      }
      if (!written) why = errno;
    }
    // Renamed into place: doctor never reads half a dump, even when a rank dies while writing. A
    // failure leaves no temporary file behind.
    const int renamed = written ? std::rename(tmp.c_str(), path.c_str()) : -1;
    if (written && renamed != 0) why = errno;
    if (renamed != 0) {
      std::remove(tmp.c_str());
      throw Error(detail::concat("Monitor.dump: cannot write ", written ? path : tmp, ": ", std::strerror(why),
                                 " (a path to a file in an existing, writable directory)"));
    }
  }

  // The automatic dump into dumpDir (after a failed collective, on SIGUSR1, at close); errors are
  // swallowed: a dump must never turn into the failure being reported.
  void autoDump(const std::string& reason, const std::string* coordinator = nullptr) const {
    if (options_.dumpDir.empty()) return;
    try {
      dump(options_.dumpDir + "/efcomm-flight-rank" + std::to_string(inner_->rank()) + ".json", reason,
           coordinator);
    } catch (...) {  // NOLINT(bugprone-empty-catch): see above
    }
  }

  bool closed() const {
    std::lock_guard<std::mutex> lk(mu_);
    return closed_;
  }

  // The first call closes and dumps; later ones (the destructor after close()) do nothing.
  void close() {
    std::shared_ptr<Agent> agent;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (closed_) return;
      closed_ = true;
      agent = std::move(agent_);
    }
    // Rank 0's close dump keeps the coordinator's last view, taken before the agent stops it.
    const std::string coordinator = agent ? agent->coordinatorJson() : "null";
    if (agent) agent->close();
    autoDump("close", &coordinator);
  }

 private:
  Record& slot(uint64_t seq) { return ring_[seq % ring_.size()]; }

  void addAnomaly(const Anomaly& a) {
    std::lock_guard<std::mutex> lk(mu_);
    for (const Anomaly& b : anomalies_)
      if (b.kind == a.kind && b.ranks == a.ranks && b.seq == a.seq) return;
    anomalies_.push_back(a);
  }

  void onFinding(const Anomaly& a, bool fatal) {
    addAnomaly(a);
    if (!fatal) return;
    CollectiveTimeout error("efcomm health: " + a.detail, a.ranks);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (fatal_) return;
      fatal_ = error;
    }
    fatalCv_.notify_all();
    inner_->abort(error);
    autoDump("timeout");
  }

 public:
  // The control plane's verdict, waiting up to `seconds` for one: a backend that fails on its
  // own when a peer dies (an MPI error) usually does so before the verdict arrives, and the
  // verdict names the culprit where the backend's error cannot.
  std::optional<CollectiveTimeout> awaitFatal(double seconds) {
    std::unique_lock<std::mutex> lk(mu_);
    fatalCv_.wait_for(lk, std::chrono::duration<double>(seconds), [&] { return fatal_.has_value(); });
    return fatal_;
  }

 private:

  std::shared_ptr<Backend> inner_;
  const MonitorOptions options_;

  mutable std::mutex mu_;
  mutable std::mutex dumpMu_;    // one dump at a time (see dump)
  mutable uint64_t dumps_ = 0;   // under dumpMu_: numbers the temporary files
  std::shared_ptr<Agent> agent_;
  std::string job_;  // the agent's job token (kept after close)
  bool closed_ = false;
  std::vector<Record> ring_;
  uint64_t nextSeq_ = 0;
  uint64_t dropped_ = 0;
  int inFlight_ = 0;
  double lastEnd_ = kNaN;
  std::string key_, algorithm_;
  std::vector<Anomaly> anomalies_;
  std::optional<CollectiveTimeout> fatal_;
  std::condition_variable fatalCv_;
};

std::string MonitorImpl::dumpJson(const std::string& reason, const std::string* coordinatorView) const {
  std::shared_ptr<Agent> agent;
  {
    std::lock_guard<std::mutex> lk(mu_);
    agent = agent_;
  }
  const std::string coordinator = coordinatorView ? *coordinatorView : agent ? agent->coordinatorJson() : "null";
  std::lock_guard<std::mutex> lk(mu_);
  const MonitorOptions& o = options_;
  std::string s;
  s.reserve(256 + 256 * std::min<size_t>(nextSeq_, ring_.size()));
  s += "{\"format\":\"efcomm-flight-record\",\"version\":1";
  s += ",\"rank\":" + std::to_string(inner_->rank()) + ",\"size\":" + std::to_string(inner_->size());
  s += ",\"job\":" + json::quote(job_);
  s += ",\"host\":" + json::quote(hostName()) + ",\"pid\":" + std::to_string(getpid());
  s += ",\"efcomm\":" + json::quote(buildInfo().version) + ",\"reason\":" + json::quote(reason);
  s += ",\"written\":" + json::number(epochNow());
  s += ",\"options\":{\"timeout_floor\":" + json::number(o.timeoutFloor) +
       ",\"timeout_factor\":" + json::number(o.timeoutFactor) + ",\"min_gbps\":" + json::number(o.minGbps) +
       ",\"heartbeat_interval\":" + json::number(o.heartbeatInterval) +
       ",\"heartbeat_timeout\":" + json::number(o.heartbeatTimeout) +
       ",\"connect_timeout\":" + json::number(o.connectTimeout) + ",\"capacity\":" + std::to_string(o.capacity) +
       ",\"window\":" + std::to_string(o.window) + "}";
  s += ",\"dropped\":" + std::to_string(dropped_) + ",\"records\":[";
  const uint64_t first = nextSeq_ > ring_.size() ? nextSeq_ - ring_.size() : 0;
  for (uint64_t q = first; q < nextSeq_; ++q) {
    const Record& r = ring_[q % ring_.size()];
    if (r.seq != q) continue;
    if (q != first) s += ",";
    s += "{\"seq\":" + std::to_string(r.seq) + ",\"op\":" + json::quote(r.op) + ",\"key\":" + jsonOrNull(r.key) +
         ",\"algorithm\":" + jsonOrNull(r.algorithm) + ",\"bytes\":" + std::to_string(r.bytes) +
         ",\"enqueue\":" + json::number(r.enqueue) + ",\"start\":" + json::number(r.start) +
         ",\"end\":" + json::number(r.end) + ",\"status\":" + json::quote(statusName(r.status)) +
         ",\"error\":" + jsonOrNull(r.error) + ",\"gap\":" + json::number(r.gap) + ",\"peer_seconds\":";
    if (r.peers.empty()) {
      s += "null";
    } else {
      s += "[";
      for (size_t p = 0; p < r.peers.size(); ++p) s += (p ? "," : "") + json::number(r.peers[p] < 0 ? kNaN : r.peers[p]);
      s += "]";
    }
    s += "}";
  }
  s += "],\"anomalies\":[";
  for (size_t i = 0; i < anomalies_.size(); ++i) {
    const Anomaly& a = anomalies_[i];
    s += (i ? ",{" : "{") + std::string("\"kind\":") + json::quote(a.kind) + ",\"ranks\":" + rankArray(a.ranks) +
         ",\"seq\":" + std::to_string(a.seq) + ",\"detail\":" + json::quote(a.detail) +
         ",\"time\":" + json::number(a.time) + "}";
  }
  s += "],\"coordinator\":" + coordinator + "}\n";
  return s;
}

// ---- SIGUSR1: dump every monitor of the process -----------------------------------------------

namespace {

// The handler only writes a byte to a pipe (async-signal-safe); a thread of its own does the
// dumping, so a dump happens even while every application thread is blocked in a collective.
// A handler installed before (MPICH installs one in MPI_Init; Python's for signal.signal) is
// called after ours, so both keep working; an ignored SIGUSR1 stays ignored.
struct SignalDumper {
  std::mutex mu;
  std::vector<std::weak_ptr<MonitorImpl>> monitors;
  int pipe[2] = {-1, -1};
  bool installed = false;
  struct sigaction previous {};

  static SignalDumper& get() {
    static SignalDumper* d = new SignalDumper;  // never destroyed: the thread may outlive main's statics
    return *d;
  }

  static void onSignal(int sig, siginfo_t* info, void* context) {
    const int saved = errno;
    SignalDumper& d = get();
    const char b = 1;
    (void)!write(d.pipe[1], &b, 1);
    errno = saved;
    if (d.previous.sa_flags & SA_SIGINFO) {
      if (d.previous.sa_sigaction) d.previous.sa_sigaction(sig, info, context);
    } else if (d.previous.sa_handler != SIG_DFL && d.previous.sa_handler != SIG_IGN) {
      d.previous.sa_handler(sig);
    }
  }

  // Registers m; installs the handler the first time, unless SIGUSR1 is ignored.
  void add(const std::shared_ptr<MonitorImpl>& m) {
    std::lock_guard<std::mutex> lk(mu);
    monitors.erase(std::remove_if(monitors.begin(), monitors.end(), [](const auto& w) { return w.expired(); }),
                   monitors.end());
    monitors.push_back(m);
    if (installed) return;
    if (sigaction(SIGUSR1, nullptr, &previous) != 0 ||
        (!(previous.sa_flags & SA_SIGINFO) && previous.sa_handler == SIG_IGN))
      return;
    if (::pipe(pipe) != 0) return;
    (void)fcntl(pipe[1], F_SETFL, O_NONBLOCK);
    (void)fcntl(pipe[0], F_SETFD, FD_CLOEXEC);
    (void)fcntl(pipe[1], F_SETFD, FD_CLOEXEC);
    std::thread([this] { run(); }).detach();
    struct sigaction sa {};
    sa.sa_sigaction = &SignalDumper::onSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    installed = sigaction(SIGUSR1, &sa, nullptr) == 0;
  }

  void run() {
    char b = 0;
    for (;;) {
      const ssize_t got = read(pipe[0], &b, 1);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return;
      std::vector<std::shared_ptr<MonitorImpl>> live;
      {
        std::lock_guard<std::mutex> lk(mu);
        for (const auto& w : monitors)
          if (auto m = w.lock()) live.push_back(std::move(m));
      }
      for (const auto& m : live)
        if (!m->closed()) m->autoDump("signal");  // a closed one's last dump is its close dump
    }
  }
};

// The backend handed to the application: every collective goes through the monitor's record.
class WatchedWork final : public Work {
 public:
  WatchedWork(std::shared_ptr<MonitorImpl> monitor, std::shared_ptr<Work> inner, uint64_t seq)
      : monitor_(std::move(monitor)), inner_(std::move(inner)), seq_(seq) {}

  ~WatchedWork() override {
    // The inner Work's destructor waits for the collective; record how it ended.
    try {
      wait(std::nullopt);
    } catch (...) {  // NOLINT(bugprone-empty-catch): reported by wait(), if it is called
    }
  }

  void wait(std::optional<double> timeoutSeconds) override {
    try {
      inner_->wait(timeoutSeconds);
    } catch (const MismatchError& e) {
      finish(e.what(), "mismatch", false, e.ranks());
      throw;
    } catch (const CollectiveTimeout& e) {
      // Another rank's abort (the MPI backend's notice, the in-process group's shared abort) can
      // fail the collective a moment before this rank's own agent hears the verdict: wait for it
      // briefly, so that anomalies() holds it; a timeout of the backend's own is recorded as a hang.
      if (!done_ && !monitor_->awaitFatal(kVerdictGraceSeconds)) monitor_->report("hang", e.culprits(), e.what());
      finish(e.what(), nullptr, true);
      throw;
    } catch (const InvalidArgument& e) {
      finish(e.what(), nullptr);
      throw;
    } catch (const std::exception& e) {
      if (named_) std::rethrow_exception(named_);
      if (done_) throw;
      auto verdict = monitor_->awaitFatal(monitor_->options().heartbeatTimeout);
      if (!verdict) {
        finish(e.what(), nullptr);
        throw;
      }
      CollectiveTimeout named(std::string(verdict->what()) + " (the backend reported: " + e.what() + ")",
                              verdict->culprits());
      named_ = std::make_exception_ptr(named);
      finish(named.what(), nullptr, true);
      throw named;
    }
    finish("", nullptr);
  }

  bool completed() const override { return inner_->completed(); }
  WorkTiming timing() const override { return inner_->timing(); }

 private:
  // Records the end once, however many times wait is called.
  void finish(const std::string& error, const char* anomaly, bool timedOut = false, const std::vector<int>& ranks = {}) {
    if (done_.exchange(true)) return;
    monitor_->complete(seq_, error, inner_->timing());
    if (anomaly) monitor_->report(anomaly, ranks, error);
    if (timedOut) monitor_->autoDump("timeout");
  }

  std::shared_ptr<MonitorImpl> monitor_;
  std::shared_ptr<Work> inner_;
  uint64_t seq_;
  std::atomic<bool> done_{false};
  std::exception_ptr named_;  // a backend error the control plane's verdict explained
};

class WatchedBackend final : public Backend {
 public:
  explicit WatchedBackend(std::shared_ptr<MonitorImpl> m) : m_(std::move(m)) {}

  int rank() const override { return m_->inner().rank(); }
  int size() const override { return m_->inner().size(); }

  std::shared_ptr<Work> allgatherv(const void* send, size_t bytes, ByteBlocks& recv,
                                   std::optional<double> timeout) override {
    return issue("allgatherv", bytes, [&] { return m_->inner().allgatherv(send, bytes, recv, timeout); });
  }
  std::shared_ptr<Work> alltoallv(const void* send, const std::vector<size_t>& counts, ByteBlocks& recv,
                                  std::optional<double> timeout) override {
    uint64_t total = 0;
    for (size_t c : counts) total += c;
    return issue("alltoallv", total, [&] { return m_->inner().alltoallv(send, counts, recv, timeout); });
  }
  std::shared_ptr<Work> broadcast(void* buf, size_t bytes, int root, std::optional<double> timeout) override {
    return issue("broadcast", bytes, [&] { return m_->inner().broadcast(buf, bytes, root, timeout); });
  }
  std::shared_ptr<Work> allreduceSum(void* buf, size_t count, DType dtype, std::optional<double> timeout) override {
    return issue("allreduceSum", count * itemSize(dtype),
                 [&] { return m_->inner().allreduceSum(buf, count, dtype, timeout); });
  }
  std::shared_ptr<Work> barrier(std::optional<double> timeout) override {
    return issue("barrier", 0, [&] { return m_->inner().barrier(timeout); });
  }
  void abort(const CollectiveTimeout& error) override { m_->inner().abort(error); }
  // The inner backend gets the label too: what it does with it (the torch backend sizes its blocks
  // by it) must not depend on whether this rank is watched.
  void label(const std::string& key, const std::string& algorithm) override {
    m_->label(key, algorithm);
    m_->inner().label(key, algorithm);
  }
  void report(const std::string& kind, const std::vector<int>& ranks, const std::string& detail) override {
    m_->report(kind, ranks, detail);
  }

 private:
  template <typename F>
  std::shared_ptr<Work> issue(const char* op, uint64_t bytes, F&& start) {
    // A closed monitor records nothing more, also where it still sits inside another's chain
    // (two monitors closed in the order they were made).
    if (m_->closed()) return start();
    const uint64_t seq = m_->arrive(op, bytes);
    std::shared_ptr<Work> w;
    try {
      w = start();
    } catch (const std::exception& e) {  // rejected arguments: nothing was sent
      m_->complete(seq, e.what(), {});
      throw;
    }
    return std::make_shared<WatchedWork>(m_, std::move(w), seq);
  }

  std::shared_ptr<MonitorImpl> m_;
};

}  // namespace

// ---- Monitor -----------------------------------------------------------------------------------

Monitor::Monitor(std::shared_ptr<Backend> inner, MonitorOptions options) {
  EFCOMM_CHECK(inner != nullptr, "health.Monitor: no backend");
  EFCOMM_CHECK(options.timeoutFloor > 0 && std::isfinite(options.timeoutFloor),
               "health.Monitor: timeout_floor must be > 0 seconds, got ", options.timeoutFloor);
  EFCOMM_CHECK(options.timeoutFactor >= 1 && std::isfinite(options.timeoutFactor),
               "health.Monitor: timeout_factor must be >= 1, got ", options.timeoutFactor);
  EFCOMM_CHECK(options.minGbps > 0 && std::isfinite(options.minGbps),
               "health.Monitor: min_gbps must be > 0 Gbit/s, got ", options.minGbps);
  EFCOMM_CHECK(options.heartbeatInterval > 0 && options.heartbeatTimeout > 2 * options.heartbeatInterval &&
                   std::isfinite(options.heartbeatTimeout),
               "health.Monitor: need heartbeat_interval > 0 and heartbeat_timeout > 2 x heartbeat_interval, got ",
               options.heartbeatInterval, " and ", options.heartbeatTimeout);
  // Upper bounds: the ring holds `capacity` records, the link statistics n^2 x `window` times.
  EFCOMM_CHECK(options.capacity >= 1 && options.capacity <= kMaxCapacity, "health.Monitor: capacity must be in [1, ",
               kMaxCapacity, "] collectives, got ", options.capacity);
  EFCOMM_CHECK(options.window >= 3 && options.window <= kMaxWindow, "health.Monitor: window must be in [3, ",
               kMaxWindow, "] collectives, got ", options.window);
  EFCOMM_CHECK(options.connectTimeout > 0 && std::isfinite(options.connectTimeout),
               "health.Monitor: connect_timeout must be > 0 seconds, got ", options.connectTimeout);
  impl_ = std::make_shared<MonitorImpl>(std::move(inner), std::move(options));
  impl_->start(impl_->options().connectTimeout);
  if (!impl_->options().dumpDir.empty()) SignalDumper::get().add(impl_);
  backend_ = std::make_shared<WatchedBackend>(impl_);
}

Monitor::~Monitor() {
  try {
    impl_->close();
  } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
  }
}

std::shared_ptr<Backend> Monitor::backend() const { return backend_; }
std::vector<Anomaly> Monitor::anomalies() const { return impl_->anomalies(); }
std::string Monitor::dumpJson(const std::string& reason) const { return impl_->dumpJson(reason); }
void Monitor::dump(const std::string& path, const std::string& reason) const { impl_->dump(path, reason); }
void Monitor::close() { impl_->close(); }

}  // namespace efcomm::health
