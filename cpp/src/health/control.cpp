// The monitor's control plane (control.hpp): an agent thread per rank and, on rank 0, a
// coordinator thread, talking over TCP (wire.hpp), independent of the data path.
//
// Rendezvous: rank 0 listens on an ephemeral port and broadcasts "efhm1|token|port|addr,addr,..."
// over the bootstrap backend; every agent (rank 0's too) connects, trying the addresses in order,
// and says HELLO with the token; the coordinator answers READY to all once every rank is there.
//
// Liveness: agents and coordinator exchange heartbeats; any frame counts as one. A connection
// that closes without BYE is a crash; a peer silent for heartbeatTimeout is a hang (SIGSTOP, a
// wedged process). The coordinator also merges the ranks' ARRIVE/COMPLETE reports (detect.hpp)
// into overdue collectives, stragglers and slow links, and sends each finding once to every
// agent; after a fatal one it stops looking (the job is going down) but keeps serving.
//
// Threads never block without a timeout: sockets are non-blocking, every wait is a poll with a
// bounded timeout, and each thread is woken through a pipe. Sends use MSG_NOSIGNAL (no SIGPIPE).

#include "health/control.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <optional>
#include <random>
#include <system_error>
#include <thread>

#include "common/json.hpp"
#include "health/detect.hpp"
#include "health/wire.hpp"

namespace efcomm::health {

namespace {

using Clock = std::chrono::steady_clock;

// Coordinator-side and agent-side poll period at most: the granularity of heartbeats, overdue
// checks and silence checks.
constexpr double kMaxPollSeconds = 0.05;
// Arrival and completion reports wait for the agent thread at most this long (or until
// kBatchBytes are queued): one send per batch instead of two per collective, which keeps the
// monitor's cost per collective to an append under a mutex. The coordinator's clocks (the overdue
// deadline, seconds to minutes) do not notice the delay; the detectors use the ranks' own clocks.
constexpr double kFlushSeconds = 0.02;
constexpr size_t kBatchBytes = 16u << 10;
// Bound of each connect attempt to one address.
constexpr double kConnectAttemptSeconds = 2.0;
// Bytes an agent queues for a coordinator that does not read; beyond, frames are dropped (the
// coordinator is then stopped or wedged, which its silence reports).
constexpr size_t kMaxQueued = 64u << 20;
// Bytes the coordinator queues for one agent beyond which it stops queuing heartbeats.
constexpr size_t kMaxQueuedHeartbeats = 1u << 20;
// The goodbye exchange: bound of sending BYE and seeing the other side close.
constexpr double kGoodbyeSeconds = 1.0;
// A lost connection waits this long (at most a heartbeat interval) for others lost with it (a
// job's processes killed together drop theirs within milliseconds), to name them in one finding.
constexpr double kCrashSettleSeconds = 0.05;
// Connections that have not said HELLO, at most (strays are closed).
constexpr size_t kMaxPendingConnections = 64;

double monoNow() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

double epochNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string errnoText(int e) { return std::error_code(e, std::generic_category()).message(); }

// Milliseconds for poll: at least 1 (never a busy loop), at most kMaxPollSeconds.
int pollMs(double seconds) {
  return static_cast<int>(std::ceil(std::clamp(seconds, 1e-3, kMaxPollSeconds) * 1e3));
}

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// Wakes a thread blocked in poll: a non-blocking pipe.
class Waker {
 public:
  Waker() {
    int p[2];
    if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
      throw Error("health control plane: pipe failed: " + errnoText(errno));
    read_ = Fd(p[0]);
    write_ = Fd(p[1]);
  }
  int fd() const { return read_.get(); }
  void wake() const {
    const char b = 1;
    while (::write(write_.get(), &b, 1) < 0 && errno == EINTR) {
    }
  }
  void drain() const {
    char buf[64];
    while (::read(read_.get(), buf, sizeof buf) > 0 || errno == EINTR) {
    }
  }

 private:
  Fd read_, write_;
};

void setNoDelay(int fd) {
  const int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Sends what the socket takes now from the front of `out`; false on a connection error.
bool flushSome(int fd, std::string& out, std::string* why) {
  size_t sent = 0;
  bool ok = true;
  while (sent < out.size()) {
    const ssize_t k = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0) {
      sent += static_cast<size_t>(k);
    } else if (k < 0 && errno == EINTR) {
      continue;
    } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    } else {
      if (why) *why = "send failed: " + errnoText(errno);
      ok = false;
      break;
    }
  }
  out.erase(0, sent);
  return ok;
}

enum class ReadStatus { kOk, kEof, kError };

// Appends what can be read now to `in`.
ReadStatus readSome(int fd, std::string& in, std::string* why) {
  char buf[16384];
  for (;;) {
    const ssize_t k = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (k > 0) {
      in.append(buf, static_cast<size_t>(k));
      if (static_cast<size_t>(k) < sizeof buf) return ReadStatus::kOk;
    } else if (k == 0) {
      return ReadStatus::kEof;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return ReadStatus::kOk;
    } else {
      if (why) *why = errnoText(errno);
      return ReadStatus::kError;
    }
  }
}

// Splits the whole frames off `in`; throws wire::ProtocolError on a bad one.
template <typename F>
void forEachFrame(std::string& in, F&& handle) {
  size_t pos = 0;
  wire::Type type{};
  std::string payload;
  while (wire::nextFrame(in, pos, type, payload)) handle(type, payload);
  in.erase(0, pos);
}

// The IPv4 addresses the coordinator advertises: `option` (comma-separated), or every address of
// the host's interfaces that are up, loopback last (an agent on another host skips it quickly).
std::vector<std::string> advertisedAddresses(const std::string& option) {
  std::vector<std::string> out;
  if (!option.empty()) {
    size_t begin = 0;
    while (begin <= option.size()) {
      const size_t end = std::min(option.find(',', begin), option.size());
      std::string a = option.substr(begin, end - begin);
      a.erase(0, a.find_first_not_of(" \t"));
      a.erase(a.find_last_not_of(" \t") + 1);
      in_addr probe{};
      EFCOMM_CHECK(!a.empty() && ::inet_pton(AF_INET, a.c_str(), &probe) == 1,
                   "health.Monitor: address must be comma-separated IPv4 addresses, got '", option, "'");
      out.push_back(a);
      begin = end + 1;
    }
    return out;
  }
  std::vector<std::string> loopback;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) == 0) {
    for (const ifaddrs* i = list; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP)) continue;
      char text[INET_ADDRSTRLEN];
      const auto* sin = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
      if (!::inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text)) continue;
      auto& dst = (i->ifa_flags & IFF_LOOPBACK) ? loopback : out;
      if (std::find(dst.begin(), dst.end(), text) == dst.end()) dst.emplace_back(text);
    }
    ::freeifaddrs(list);
  }
  out.insert(out.end(), loopback.begin(), loopback.end());
  if (out.empty()) out.emplace_back("127.0.0.1");
  return out;
}

// Connects to `address`:`port` within `seconds`; an empty Fd and `why` on failure.
Fd connectOnce(const std::string& address, uint16_t port, double seconds, std::string& why) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (::inet_pton(AF_INET, address.c_str(), &sa.sin_addr) != 1) {
    why = "bad address";
    return {};
  }
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    why = "socket: " + errnoText(errno);
    return {};
  }
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0 && errno != EINPROGRESS) {
    why = errnoText(errno);
    return {};
  }
  if (rc != 0) {
    const double until = monoNow() + seconds;
    for (;;) {
      pollfd p{fd.get(), POLLOUT, 0};
      const double left = until - monoNow();
      if (left <= 0) {
        why = "timed out";
        return {};
      }
      const int k = ::poll(&p, 1, static_cast<int>(std::ceil(left * 1e3)));
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) {
        why = "poll: " + errnoText(errno);
        return {};
      }
      if (k > 0) break;
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      why = errnoText(err);
      return {};
    }
  }
  setNoDelay(fd.get());
  return fd;
}

std::string joinRanks(const std::vector<int>& ranks) {
  std::string s;
  for (const int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t begin = 0;
  for (;;) {
    const size_t end = s.find(sep, begin);
    out.push_back(s.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
    if (end == std::string::npos) return out;
    begin = end + 1;
  }
}

// ---- the coordinator (rank 0) ----------------------------------------------------------------------

class Coordinator {
 public:
  Coordinator(int size, uint64_t token, const MonitorOptions& options, double connectTimeout)
      : size_(size),
        token_(token),
        options_(options),
        addresses_(advertisedAddresses(options.address)),
        tracker_(size, options.timeoutFloor, options.timeoutFactor, options.window, options.minGbps),
        ranks_(static_cast<size_t>(size)),
        connectDeadline_(monoNow() + connectTimeout) {
    listener_ = Fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listener_) throw Error("health.Monitor: socket failed: " + errnoText(errno));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    sa.sin_port = 0;
    if (::bind(listener_.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0)
      throw Error("health.Monitor: bind failed: " + errnoText(errno));
    if (::listen(listener_.get(), SOMAXCONN) != 0) throw Error("health.Monitor: listen failed: " + errnoText(errno));
    socklen_t len = sizeof sa;
    if (::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&sa), &len) != 0)
      throw Error("health.Monitor: getsockname failed: " + errnoText(errno));
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] { run(); });
  }

  ~Coordinator() { stop(0); }

  uint16_t port() const { return port_; }
  const std::vector<std::string>& addresses() const { return addresses_; }

  // The ranks that have not connected.
  std::vector<int> missing() const {
    std::lock_guard<std::mutex> lk(mu_);
    return ranksIn(State::kAbsent);
  }

  // Lets the ranks still connected say goodbye for up to `graceSeconds`, then closes every
  // connection (with a BYE, so that their agents take it for leaving) and joins the thread.
  void stop(double graceSeconds) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!stopping_) {
        stopping_ = true;
        stopAt_ = monoNow() + graceSeconds;
      }
    }
    waker_.wake();
    std::lock_guard<std::mutex> lk(joinMu_);
    if (thread_.joinable()) thread_.join();
  }

  std::string json() const;

 private:
  enum class State { kAbsent, kLive, kBye, kClosed, kDead };

  static const char* stateName(State s) {
    switch (s) {
      case State::kAbsent: return "absent";
      case State::kLive: return "live";
      case State::kBye: return "leaving";
      case State::kClosed: return "closed";
      case State::kDead: return "dead";
    }
    return "?";
  }

  struct Conn {
    Fd fd;
    std::string in, out;
    int rank = -1;  // -1 until HELLO
    double since = 0;
    bool shut = false;  // our side shut down (goodbye phase)
    bool done = false;  // to be closed
  };

  struct RankInfo {
    State state = State::kAbsent;
    double lastHeard = 0;
    uint64_t pid = 0;
  };

  std::vector<int> ranksIn(State state) const {
    std::vector<int> m;
    for (int r = 0; r < size_; ++r)
      if (ranks_[static_cast<size_t>(r)].state == state) m.push_back(r);
    return m;
  }

  void run();
  void accept(double now);
  void handle(Conn& c, wire::Type type, const std::string& payload, double now);
  void lost(Conn& c, const std::string& reason, double now);
  void checkFaults(double now);
  void report(const detect::Finding& f, bool fatal);
  void sendAll(const std::string& frame) {
    for (auto& c : conns_)
      if (c->rank >= 0 && !c->done && !c->shut) c->out += frame;
  }
  void flush(Conn& c, double now) {
    std::string why;
    if (!c.out.empty() && !flushSome(c.fd.get(), c.out, &why)) lost(c, why, now);
  }
  void goodbye();
  double crashSettle() const { return std::min(options_.heartbeatInterval, kCrashSettleSeconds); }

  const int size_;
  const uint64_t token_;
  const MonitorOptions options_;
  const std::vector<std::string> addresses_;
  Fd listener_;
  uint16_t port_ = 0;
  Waker waker_;

  mutable std::mutex mu_;  // guards what json() and missing() read, and the stop request
  detect::Tracker tracker_;
  std::vector<RankInfo> ranks_;
  bool ready_ = false;
  bool fatal_ = false;  // a fatal finding was sent: detection stops
  size_t findings_ = 0;
  bool stopping_ = false;
  double stopAt_ = 0;
  struct LostRank {
    int rank;
    std::string why;  // the connection's end and the rank's last collective
  };
  std::vector<LostRank> crashes_;  // lost without a goodbye, not reported yet (checkFaults)
  double firstCrash_ = 0;

  const double connectDeadline_;
  std::vector<std::unique_ptr<Conn>> conns_;  // the coordinator thread's own
  double nextBeat_ = 0;

  std::mutex joinMu_;
  std::thread thread_;
};

void Coordinator::run() {
  std::vector<pollfd> fds;
  bool gaveUp = false;
  for (;;) {
    const double now = monoNow();
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) {
        bool anyLive = false;
        for (const RankInfo& r : ranks_) anyLive = anyLive || r.state == State::kLive;
        if (!anyLive || now >= stopAt_) break;
      }
      if (!ready_ && now >= connectDeadline_) {
        gaveUp = true;
        break;
      }
      if (now >= nextBeat_) {
        nextBeat_ = now + options_.heartbeatInterval;
        const std::string beat = wire::encodeHeartbeat(ready_ ? std::vector<int>{} : ranksIn(State::kAbsent));
        for (auto& c : conns_)
          if (c->rank >= 0 && !c->done && c->out.size() < kMaxQueuedHeartbeats) c->out += beat;
      }
    }
    fds.clear();
    fds.push_back({waker_.fd(), POLLIN, 0});
    fds.push_back({listener_.get(), POLLIN, 0});
    for (auto& c : conns_)
      fds.push_back({c->fd.get(), static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
    // Never sleep past the next heartbeat, nor past a lost connection's settling time.
    const double wake = crashes_.empty() ? nextBeat_ : std::min(nextBeat_, firstCrash_ + crashSettle());
    const int k = ::poll(fds.data(), fds.size(), pollMs(std::min(options_.heartbeatInterval, wake - now)));
    if (k < 0 && errno != EINTR) break;  // cannot happen with valid descriptors; leave rather than spin
    const double t = monoNow();
    if (k > 0) {
      if (fds[0].revents) waker_.drain();
      if (fds[1].revents) accept(t);
      for (size_t i = 0; i + 2 < fds.size() && i < conns_.size(); ++i) {
        Conn& c = *conns_[i];
        const short ev = fds[i + 2].revents;
        if (c.done || !ev) continue;
        if (ev & (POLLIN | POLLHUP | POLLERR)) {
          std::string why;
          const ReadStatus st = readSome(c.fd.get(), c.in, &why);
          std::lock_guard<std::mutex> lk(mu_);
          try {
            forEachFrame(c.in, [&](wire::Type type, const std::string& payload) {
              if (!c.done) handle(c, type, payload, t);
            });
          } catch (const wire::ProtocolError& e) {
            lost(c, std::string("protocol error: ") + e.what(), t);
          }
          if (!c.done && st == ReadStatus::kEof) lost(c, "connection closed", t);
          if (!c.done && st == ReadStatus::kError) lost(c, why, t);
        }
      }
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& c : conns_) {
        if (!c->done) flush(*c, t);
        // A connection that never said HELLO in time is a stray.
        if (!c->done && c->rank < 0 && t - c->since > std::max(options_.heartbeatTimeout, 10.0)) c->done = true;
      }
      checkFaults(t);
      for (auto& c : conns_)
        if (!c->done) flush(*c, t);
    }
    conns_.erase(std::remove_if(conns_.begin(), conns_.end(), [](const auto& c) { return c->done; }), conns_.end());
  }
  if (gaveUp) {
    // Tell every agent who is missing before leaving: their constructors report it.
    std::lock_guard<std::mutex> lk(mu_);
    sendAll(wire::encodeHeartbeat(ranksIn(State::kAbsent)));
  }
  goodbye();
}

void Coordinator::accept(double now) {
  for (;;) {
    const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      return;  // EAGAIN, or a connection that went away before we took it
    }
    Fd owned(fd);
    bool stopping;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping = ready_ || stopping_;
    }
    size_t pending = 0;
    for (const auto& c : conns_) pending += c->rank < 0 ? 1 : 0;
    if (stopping || pending >= kMaxPendingConnections) continue;  // closed: nobody joins late
    setNoDelay(fd);
    auto c = std::make_unique<Conn>();
    c->fd = std::move(owned);
    c->since = now;
    conns_.push_back(std::move(c));
  }
}

void Coordinator::handle(Conn& c, wire::Type type, const std::string& payload, double now) {
  if (c.rank < 0) {
    // Before HELLO only HELLO, and only with this job's token, a rank in range and not taken.
    if (type != wire::Type::kHello) throw wire::ProtocolError("expected HELLO");
    const wire::Hello h = wire::decodeHello(payload);
    RankInfo* info = h.rank < static_cast<uint32_t>(size_) ? &ranks_[h.rank] : nullptr;
    if (h.token != token_ || h.size != static_cast<uint32_t>(size_) || !info || info->state != State::kAbsent) {
      c.done = true;
      return;
    }
    c.rank = static_cast<int>(h.rank);
    info->state = State::kLive;
    info->lastHeard = now;
    info->pid = h.pid;
    if (ranksIn(State::kLive).size() == static_cast<size_t>(size_)) {
      ready_ = true;
      sendAll(wire::frame(wire::Type::kReady));
    }
    return;
  }
  RankInfo& info = ranks_[static_cast<size_t>(c.rank)];
  info.lastHeard = now;
  std::vector<detect::Finding> found;
  switch (type) {
    case wire::Type::kHeartbeat: wire::decodeHeartbeat(payload, size_); break;
    case wire::Type::kArrive: {
      const wire::Arrive a = wire::decodeArrive(payload);
      found = tracker_.arrive(c.rank, a.seq, a.op, a.gap, now, a.bytes);
      break;
    }
    case wire::Type::kComplete: {
      const wire::Complete m = wire::decodeComplete(payload, size_);
      found = tracker_.complete(c.rank, m.seq, m.ok, m.peerSeconds, now);
      break;
    }
    case wire::Type::kBye:
      wire::decodeEmpty(payload);
      info.state = State::kBye;
      tracker_.left(c.rank);
      break;
    default: throw wire::ProtocolError("unexpected frame from an agent");
  }
  for (const detect::Finding& f : found) report(f, false);
}

void Coordinator::lost(Conn& c, const std::string& reason, double now) {
  c.done = true;
  if (c.rank < 0) return;
  RankInfo& info = ranks_[static_cast<size_t>(c.rank)];
  if (info.state == State::kBye) {
    info.state = State::kClosed;
    return;
  }
  if (info.state != State::kLive) return;
  info.state = State::kDead;
  if (!ready_ || fatal_ || stopping_) return;
  // Reported by checkFaults crashSettle() later, with the ranks lost meanwhile.
  if (crashes_.empty()) firstCrash_ = now;
  crashes_.push_back({c.rank, reason + "); it " + tracker_.lastReached(c.rank, now)});
}

void Coordinator::checkFaults(double now) {
  // Also while stopping: rank 0 has left, and a rank already waiting for it learns so at once.
  if (!ready_ || fatal_) return;
  // Ranks whose connections drop together (a process group killed) in one finding: the first
  // drop waits crashSettle() for the others.
  if (!crashes_.empty()) {
    if (now - firstCrash_ < crashSettle()) return;
    const int64_t last = tracker_.lastSeq(crashes_.front().rank);
    std::sort(crashes_.begin(), crashes_.end(), [](const LostRank& a, const LostRank& b) { return a.rank < b.rank; });
    std::vector<int> ranks;
    std::string detail;
    for (const LostRank& l : crashes_) {
      ranks.push_back(l.rank);
      detail += (detail.empty() ? "" : "; ") + std::string("rank ") + std::to_string(l.rank) +
                " crashed: its control connection was lost without a goodbye (" + l.why;
    }
    crashes_.clear();
    report({"crash", ranks,
            detail + " (arrivals are reported in batches each heartbeat interval: it may have gone further)",
            last < 0 ? 0 : static_cast<uint64_t>(last)},
           true);
    return;
  }
  // Every silent rank in one finding (a frozen host stops all of its ranks at once): once one
  // rank is past the heartbeat timeout, those silent for all but the last two heartbeats too
  // (their last heartbeats may have left a moment later).
  bool any = false;
  for (const RankInfo& info : ranks_)
    any = any || (info.state == State::kLive && now - info.lastHeard > options_.heartbeatTimeout);
  if (!any) {
    if (auto f = tracker_.overdue(now)) report(*f, true);
    return;
  }
  const double nearly = std::max(options_.heartbeatTimeout - 2 * options_.heartbeatInterval,
                                 options_.heartbeatTimeout / 2);
  std::vector<int> silent;
  std::string detail;
  uint64_t seq = 0;
  for (int r = 0; r < size_; ++r) {
    const RankInfo& info = ranks_[static_cast<size_t>(r)];
    if (info.state != State::kLive || now - info.lastHeard <= nearly) continue;
    if (silent.empty()) seq = tracker_.lastSeq(r) < 0 ? 0 : static_cast<uint64_t>(tracker_.lastSeq(r));
    silent.push_back(r);
    detail += (detail.empty() ? "" : "; ") + std::string("rank ") + std::to_string(r) +
              " stopped responding: no heartbeat for " + detect::formatSeconds(now - info.lastHeard) + "; it " +
              tracker_.lastReached(r, now);
  }
  report({"hang", silent, detail, seq}, true);
}

void Coordinator::report(const detect::Finding& f, bool fatal) {
  if (fatal_) return;
  fatal_ = fatal;
  ++findings_;
  wire::Finding m;
  m.fatal = fatal;
  m.seq = f.seq;
  m.time = epochNow();
  m.kind = f.kind;
  m.ranks = f.ranks;
  m.detail = f.detail;
  sendAll(wire::encode(m));
}

// Sends BYE on every connection, shuts our side, and waits (bounded) for each agent to close
// theirs, so that nothing we sent is lost to a reset.
void Coordinator::goodbye() {
  std::string bye;
  {
    std::lock_guard<std::mutex> lk(mu_);
    bye = wire::encodeCoordinatorBye(static_cast<uint64_t>(tracker_.lastSeq(0) + 1));
  }
  for (auto& c : conns_)
    if (!c->done) c->out += bye;
  const double until = monoNow() + kGoodbyeSeconds;
  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    for (auto& c : conns_) {
      if (c->done) continue;
      if (c->out.empty() && !c->shut) {
        ::shutdown(c->fd.get(), SHUT_WR);
        c->shut = true;
      }
      fds.push_back({c->fd.get(), static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
    }
    const double left = until - monoNow();
    if (fds.empty() || left <= 0) break;
    const int k = ::poll(fds.data(), fds.size(), pollMs(left));
    if (k < 0 && errno != EINTR) break;
    size_t i = 0;
    for (auto& c : conns_) {
      if (c->done) continue;
      const short ev = fds[i++].revents;
      if (ev & POLLOUT) {
        std::string why;
        if (!flushSome(c->fd.get(), c->out, &why)) c->done = true;
      }
      if (ev & (POLLIN | POLLHUP | POLLERR)) {
        std::string ignored;
        if (readSome(c->fd.get(), ignored, nullptr) != ReadStatus::kOk) c->done = true;
      }
    }
  }
  conns_.clear();
}

std::string Coordinator::json() const {
  std::lock_guard<std::mutex> lk(mu_);
  const double now = monoNow();
  const std::vector<double> gaps = tracker_.stragglers().gapMedians();
  std::string s = "{\"deadline\":" + json::number(tracker_.deadline()) +
                  ",\"spans_p99\":" + json::number(tracker_.spansP99()) +
                  ",\"timeout_floor\":" + json::number(options_.timeoutFloor) +
                  ",\"timeout_factor\":" + json::number(options_.timeoutFactor) +
                  ",\"port\":" + std::to_string(port_) + ",\"addresses\":[";
  for (size_t i = 0; i < addresses_.size(); ++i) s += (i ? "," : "") + json::quote(addresses_[i]);
  s += "],\"ranks\":[";
  for (int r = 0; r < size_; ++r) {
    const RankInfo& info = ranks_[static_cast<size_t>(r)];
    const int64_t last = tracker_.lastSeq(r);
    s += (r ? ",{" : "{") + std::string("\"rank\":") + std::to_string(r) +
         ",\"state\":" + json::quote(stateName(info.state)) + ",\"pid\":" + std::to_string(info.pid) +
         ",\"last_heard_ago\":" +
         (info.state == State::kAbsent ? std::string("null") : json::number(now - info.lastHeard)) +
         ",\"last_seq\":" + (last < 0 ? std::string("null") : std::to_string(last)) +
         ",\"gap_median\":" + json::number(gaps[static_cast<size_t>(r)]) +
         ",\"straggler\":" + (tracker_.stragglers().flagged(r) ? "true" : "false") + "}";
  }
  s += "],\"link_median\":[";
  const auto m = tracker_.links().medians();
  for (size_t i = 0; i < m.size(); ++i) {
    s += i ? ",[" : "[";
    for (size_t j = 0; j < m[i].size(); ++j) s += (j ? "," : "") + json::number(m[i][j]);
    s += "]";
  }
  s += "],\"window_collectives\":" + std::to_string(tracker_.stragglers().collectives()) +
       ",\"pending\":" + std::to_string(tracker_.pending()) + ",\"findings\":" + std::to_string(findings_) +
       ",\"fatal\":" + (fatal_ ? "true" : "false") + "}";
  return s;
}

}  // namespace

// ---- the agent (every rank) -------------------------------------------------------------------------

struct Agent::Impl {
  Impl(int rank, int size, const MonitorOptions& options, FindingCallback onFinding)
      : rank_(rank), size_(size), options_(options), onFinding_(std::move(onFinding)) {}

  // Without a goodbye: only reached without close() when the constructor failed.
  ~Impl() {
    stopThread();
    sock_.reset();
    if (coordinator_) coordinator_->stop(0);
  }

  void start(Backend& bootstrap, double connectTimeout);
  // Queues a frame and sends what is queued; `batch`: only queue it, unless kBatchBytes are
  // queued (the agent thread sends within kFlushSeconds).
  void post(const std::string& frame, bool batch = false);
  void close();

  void run();
  void stopThread() {
    stop_ = true;
    waker_.wake();
    if (thread_.joinable()) thread_.join();
  }
  void onFrame(wire::Type type, const std::string& payload);
  void connectionLost(const std::string& reason);
  // After the coordinator's goodbye: a collective this rank arrived at that rank 0 never reached
  // cannot complete; reports it (once).
  void checkRank0Left();
  // The collective this rank last arrived at (0: none), the seq of its own findings.
  uint64_t lastSeq();
  void deliver(const Anomaly& a, bool fatal, bool own);

  const int rank_, size_;
  const MonitorOptions options_;
  const FindingCallback onFinding_;
  std::unique_ptr<Coordinator> coordinator_;
  Fd sock_;
  Waker waker_;
  std::thread thread_;
  std::atomic<bool> stop_{false};

  std::mutex sendMu_;  // guards out_ and sendable_; sends on sock_
  std::string out_;
  bool sendable_ = true;

  std::mutex mu_;  // guards the rendezvous state and findings bookkeeping
  std::condition_variable cv_;
  bool ready_ = false;
  std::string failure_;       // set when the rendezvous failed
  std::vector<int> missing_;  // the coordinator's latest list of ranks not connected
  bool fatalSeen_ = false;
  bool closing_ = false;
  bool closed_ = false;
  std::optional<Arrival> lastArrival_;  // this rank's latest
  std::string job_;  // the rendezvous token (hex), set by start()
  int64_t rank0Reached_ = -1;  // from the coordinator's goodbye: collectives rank 0 arrived at
  bool rank0LeftReported_ = false;

  // The agent thread's own.
  std::string in_;
  bool gone_ = false;  // the connection is over (lost, or the coordinator said goodbye)
  bool silenceReported_ = false;
  double lastHeard_ = 0;
};

void Agent::Impl::start(Backend& bootstrap, double connectTimeout) {
  const double deadline = monoNow() + connectTimeout;
  std::string info;
  std::exception_ptr setupError;
  if (rank_ == 0) {
    try {
      std::random_device rd;
      const uint64_t token = (static_cast<uint64_t>(rd()) << 32) ^ rd();
      coordinator_ = std::make_unique<Coordinator>(size_, token, options_, connectTimeout);
      info = "efhm1|" + hex64(token) + "|" + std::to_string(coordinator_->port()) + "|";
      for (size_t i = 0; i < coordinator_->addresses().size(); ++i)
        info += (i ? "," : "") + coordinator_->addresses()[i];
    } catch (const std::exception& e) {
      // Everyone must still take part in the broadcasts, and learn why there is no coordinator.
      setupError = std::current_exception();
      info = std::string("error|") + e.what();
    }
  }
  uint64_t length = info.size();
  try {
    bootstrap.broadcast(&length, sizeof length, 0)->wait(connectTimeout);
    EFCOMM_CHECK_T(Error, length > 0 && length < (1u << 20), "health.Monitor: bad rendezvous message length ",
                   length);
    info.resize(length);
    bootstrap.broadcast(info.data(), info.size(), 0)->wait(connectTimeout);
  } catch (const CollectiveTimeout& e) {  // the rendezvous: a rank that never created its Monitor
    throw CollectiveTimeout(detail::concat("health.Monitor: rank(s) ", joinRanks(e.culprits()),
                                           " did not create their Monitor within connect_timeout (",
                                           connectTimeout, " s; every rank creates one): ", e.what()),
                            e.culprits());
  }
  if (setupError) std::rethrow_exception(setupError);
  const std::vector<std::string> fields = split(info, '|');
  EFCOMM_CHECK_T(Error, fields.front() != "error", "health.Monitor: rank 0 could not start the coordinator: ",
                 info.substr(6));
  EFCOMM_CHECK_T(Error, fields.size() == 4 && fields[0] == "efhm1" && fields[1].size() == 16,
                 "health.Monitor: bad rendezvous message from rank 0: '", info, "'");
  const uint64_t token = std::stoull(fields[1], nullptr, 16);
  job_ = fields[1];
  const unsigned long port = std::stoul(fields[2]);
  EFCOMM_CHECK_T(Error, port > 0 && port < 65536, "health.Monitor: bad coordinator port ", fields[2]);
  const std::vector<std::string> addresses = split(fields[3], ',');

  // Connect, trying the addresses in order, until one answers or time runs out.
  std::string errors;  // the last round's, kept when time runs out before a round tries anything
  while (!sock_) {
    std::string round;
    for (const std::string& a : addresses) {
      const double left = deadline - monoNow();
      if (left <= 0) break;
      std::string why;
      sock_ = connectOnce(a, static_cast<uint16_t>(port), std::min(left, kConnectAttemptSeconds), why);
      if (sock_) break;
      round += (round.empty() ? "" : "; ") + a + ":" + fields[2] + ": " + why;
    }
    if (!round.empty()) errors = round;
    if (sock_) break;
    EFCOMM_CHECK_T(Error, monoNow() < deadline, "health.Monitor: rank ", rank_,
                   " could not reach the coordinator on rank 0 within ", connectTimeout, " s (", errors, ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  wire::Hello hello;
  hello.token = token;
  hello.rank = static_cast<uint32_t>(rank_);
  hello.size = static_cast<uint32_t>(size_);
  hello.pid = static_cast<uint64_t>(::getpid());
  lastHeard_ = monoNow();
  post(wire::encode(hello));
  thread_ = std::thread([this] { run(); });

  // The coordinator gives up at the deadline and says who is missing; the other ranks wait a
  // little longer to hear it.
  const double verdict = rank_ == 0 ? 0.0 : 1.0;
  std::unique_lock<std::mutex> lk(mu_);
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                                        std::max(0.0, deadline + verdict - monoNow())));
  cv_.wait_until(lk, until, [&] { return ready_ || !failure_.empty(); });
  if (ready_) return;
  std::vector<int> missing = coordinator_ ? coordinator_->missing() : missing_;
  std::string why = failure_.empty() ? "timed out" : failure_;
  lk.unlock();
  const std::string absent =
      missing.empty() ? std::string() : "; rank(s) " + joinRanks(missing) + " did not connect to the coordinator";
  throw Error(detail::concat("health.Monitor: the control plane did not come up within ", connectTimeout, " s on rank ",
                             rank_, ": ", why, absent));
}

void Agent::Impl::post(const std::string& frame, bool batch) {
  std::lock_guard<std::mutex> lk(sendMu_);
  if (!sendable_ || out_.size() + frame.size() > kMaxQueued) return;
  out_ += frame;
  if (batch && out_.size() < kBatchBytes) return;
  std::string why;
  // A failed send is the agent thread's to report: it sees the connection end on its next read.
  if (!flushSome(sock_.get(), out_, &why)) {
    sendable_ = false;
    out_.clear();
  }
  if (!out_.empty() || !sendable_) waker_.wake();
}

void Agent::Impl::run() {
  double nextBeat = 0;
  for (;;) {
    if (stop_) return;
    double now = monoNow();
    if (!gone_ && now >= nextBeat) {
      post(wire::frame(wire::Type::kHeartbeat));
      nextBeat = now + options_.heartbeatInterval;
    }
    bool wantWrite;
    {
      std::lock_guard<std::mutex> lk(sendMu_);
      wantWrite = !out_.empty() && sendable_;
    }
    pollfd fds[2] = {{waker_.fd(), POLLIN, 0},
                     {sock_.get(), static_cast<short>(POLLIN | (wantWrite ? POLLOUT : 0)), 0}};
    const int k = ::poll(fds, gone_ ? 1 : 2,
                         pollMs(gone_ ? kMaxPollSeconds
                                      : std::min({options_.heartbeatInterval, nextBeat - now, kFlushSeconds})));
    if (k < 0 && errno != EINTR) return;
    if (k > 0 && fds[0].revents) waker_.drain();
    if (gone_) checkRank0Left();  // arrive() wakes us
    if (k > 0 && !gone_ && fds[1].revents) {
      if (fds[1].revents & POLLOUT) {
        std::lock_guard<std::mutex> lk(sendMu_);
        if (sendable_ && !flushSome(sock_.get(), out_, nullptr)) {
          sendable_ = false;
          out_.clear();
        }
      }
      if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
        std::string why;
        const size_t before = in_.size();
        const ReadStatus st = readSome(sock_.get(), in_, &why);
        if (in_.size() > before) lastHeard_ = monoNow();
        try {
          forEachFrame(in_, [&](wire::Type type, const std::string& payload) {
            if (!gone_) onFrame(type, payload);
          });
          if (!gone_ && st == ReadStatus::kEof) connectionLost("the connection was closed");
          if (!gone_ && st == ReadStatus::kError) connectionLost(why);
        } catch (const wire::ProtocolError& e) {
          connectionLost(std::string("protocol error: ") + e.what());
        }
      }
    }
    // A send that failed without the read side noticing yet (sendable_ cleared by post()).
    {
      std::unique_lock<std::mutex> lk(sendMu_);
      const bool broken = !sendable_ && !gone_;
      lk.unlock();
      if (broken) {
        bool leaving;
        {
          std::lock_guard<std::mutex> g(mu_);
          leaving = closing_;
        }
        if (!leaving) connectionLost("a send failed");
      }
    }
    now = monoNow();
    if (!gone_ && !silenceReported_ && now - lastHeard_ > options_.heartbeatTimeout) {
      bool ready;
      {
        std::lock_guard<std::mutex> lk(mu_);
        ready = ready_;
      }
      if (ready) {
        silenceReported_ = true;
        deliver({"hang", {0},
                 "rank 0 (the coordinator) stopped responding: no heartbeat for " +
                     detect::formatSeconds(now - lastHeard_),
                 lastSeq(), epochNow()},
                true, true);
      }
    }
  }
}

void Agent::Impl::onFrame(wire::Type type, const std::string& payload) {
  switch (type) {
    case wire::Type::kReady: {
      wire::decodeEmpty(payload);
      std::lock_guard<std::mutex> lk(mu_);
      ready_ = true;
      cv_.notify_all();
      return;
    }
    case wire::Type::kHeartbeat: {
      std::vector<int> missing = wire::decodeHeartbeat(payload, size_);
      std::lock_guard<std::mutex> lk(mu_);
      if (!ready_) missing_ = std::move(missing);
      return;
    }
    case wire::Type::kFinding: {
      const wire::Finding f = wire::decodeFinding(payload, size_);
      deliver({f.kind, f.ranks, f.detail, f.seq, std::isfinite(f.time) ? f.time : epochNow()}, f.fatal, false);
      return;
    }
    case wire::Type::kBye: {
      // The coordinator is leaving on purpose (rank 0 closed its monitor): nothing to report,
      // unless this rank is at, or comes to, a collective rank 0 never reached.
      const int64_t reached = wire::decodeCoordinatorBye(payload);
      {
        std::lock_guard<std::mutex> lk(mu_);
        rank0Reached_ = reached;
      }
      checkRank0Left();
      gone_ = true;
      {
        std::lock_guard<std::mutex> lk(sendMu_);
        sendable_ = false;
        out_.clear();
        ::shutdown(sock_.get(), SHUT_WR);
      }
      std::lock_guard<std::mutex> lk(mu_);
      if (!ready_) {
        failure_ = "the coordinator on rank 0 gave up waiting";
        cv_.notify_all();
      }
      return;
    }
    default: throw wire::ProtocolError("unexpected frame from the coordinator");
  }
}

void Agent::Impl::connectionLost(const std::string& reason) {
  gone_ = true;
  {
    std::lock_guard<std::mutex> lk(sendMu_);
    sendable_ = false;
    out_.clear();
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!ready_) {
      failure_ = "lost the connection to the coordinator on rank 0 (" + reason + ")";
      cv_.notify_all();
      return;
    }
  }
  deliver({"crash", {0}, "rank 0 (the coordinator) crashed: the control connection to it was lost (" + reason + ")",
           lastSeq(), epochNow()},
          true, true);
}

uint64_t Agent::Impl::lastSeq() {
  std::lock_guard<std::mutex> lk(mu_);
  return lastArrival_ ? lastArrival_->seq : 0;
}

void Agent::Impl::checkRank0Left() {
  Arrival a;
  int64_t reached;
  {
    std::lock_guard<std::mutex> lk(mu_);
    reached = rank0Reached_;
    if (rank0LeftReported_ || reached < 0 || !ready_ || !lastArrival_ ||
        lastArrival_->seq < static_cast<uint64_t>(reached))
      return;
    rank0LeftReported_ = true;
    a = *lastArrival_;
  }
  deliver({"hang", {0},
           "collective #" + std::to_string(a.seq) + " (" + a.op +
               ") cannot complete: rank 0 closed its monitor (left the job) " +
               (reached == 0 ? std::string("before arriving at any collective")
                             : "after arriving at collective #" + std::to_string(reached - 1)),
           a.seq, epochNow()},
          true, true);
}

// Hands a finding to the callback, on the agent thread, holding no lock (the callback may call
// back into the agent, e.g. coordinatorJson for a dump). The agent's own findings (the
// coordinator lost) only count while nothing fatal was heard: after that the job is going down
// and the coordinator's end is a consequence, not a new fault. Nothing is reported while closing.
void Agent::Impl::deliver(const Anomaly& a, bool fatal, bool own) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (closing_ || (own && fatalSeen_)) return;
    if (fatal) fatalSeen_ = true;
  }
  try {
    onFinding_(a, fatal);
  } catch (...) {  // NOLINT(bugprone-empty-catch): a callback error has nowhere to go from this thread
  }
}

void Agent::Impl::close() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (closed_) return;
    closed_ = true;
    closing_ = true;
  }
  stopThread();
  // Goodbye on the caller's thread: flush what is queued and BYE, shut our side, and wait
  // (bounded) for the coordinator to close its side, so that the BYE is read before any reset.
  // Not under sendMu_: arrive/complete racing with close return at once instead of waiting.
  std::string out;
  {
    std::lock_guard<std::mutex> lk(sendMu_);
    if (sendable_ && !gone_) out = std::move(out_) + wire::frame(wire::Type::kBye);
    sendable_ = false;
    out_.clear();
  }
  if (!out.empty()) {
    const double until = monoNow() + kGoodbyeSeconds;
    bool shut = false;
    std::string ignored;
    for (;;) {
      if (!flushSome(sock_.get(), out, nullptr)) break;
      if (out.empty() && !shut) {
        ::shutdown(sock_.get(), SHUT_WR);
        shut = true;
      }
      const double left = until - monoNow();
      if (left <= 0) break;
      pollfd p{sock_.get(), static_cast<short>(POLLIN | (out.empty() ? 0 : POLLOUT)), 0};
      const int k = ::poll(&p, 1, pollMs(left));
      if (k < 0 && errno != EINTR) break;
      if (k > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
        ignored.clear();
        if (readSome(sock_.get(), ignored, nullptr) != ReadStatus::kOk) break;
      }
    }
  }
  sock_.reset();
  // Rank 0: give the other ranks time to say goodbye before the coordinator goes.
  if (coordinator_) coordinator_->stop(std::max(options_.heartbeatTimeout, 2.0));
}

// ---- Agent ----------------------------------------------------------------------------------------

Agent::Agent(Backend& bootstrap, const MonitorOptions& options, FindingCallback onFinding,
             double connectTimeoutSeconds)
    : impl_(std::make_unique<Impl>(bootstrap.rank(), bootstrap.size(), options, std::move(onFinding))) {
  impl_->start(bootstrap, connectTimeoutSeconds);
}

Agent::~Agent() {
  try {
    impl_->close();
  } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
  }
}

void Agent::arrive(const Arrival& arrival) {
  wire::Arrive m;
  m.seq = arrival.seq;
  m.op = arrival.op.substr(0, wire::kMaxOpName);
  m.bytes = arrival.bytes;
  m.gap = arrival.gapSeconds;
  bool coordinatorGone;
  {
    std::lock_guard<std::mutex> lk(impl_->mu_);
    impl_->lastArrival_ = arrival;
    coordinatorGone = impl_->rank0Reached_ >= 0;
  }
  if (coordinatorGone) impl_->waker_.wake();  // its thread checks whether rank 0 ever came here
  impl_->post(wire::encode(m), true);
}

void Agent::complete(const Completion& completion) {
  wire::Complete m;
  m.seq = completion.seq;
  m.ok = completion.ok;
  m.seconds = completion.seconds;
  m.readySeconds = completion.timing.readySeconds;
  if (completion.timing.peerSeconds.size() == static_cast<size_t>(impl_->size_))
    m.peerSeconds = completion.timing.peerSeconds;
  impl_->post(wire::encode(m), true);
}

void Agent::close() { impl_->close(); }

std::string Agent::coordinatorJson() const { return impl_->coordinator_ ? impl_->coordinator_->json() : "null"; }

const std::string& Agent::job() const { return impl_->job_; }

}  // namespace efcomm::health
