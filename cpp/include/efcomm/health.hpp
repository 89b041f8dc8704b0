#pragma once
/// @file health.hpp
/// Fault detection for collectives (docs/reliability.md): a per-rank flight recorder of every
/// collective, a watchdog that names the ranks a stuck collective waits for, and straggler and
/// slow-link localization (C4D: collective traffic is periodic and homogeneous, so a persistent
/// deviation is a fault).
///
/// A `Monitor` wraps a `Backend`: every collective issued through `Monitor::backend()` (a Reducer
/// built on it included) is recorded and watched. The watching runs on a control plane of its own,
/// independent of the data path: an agent thread per rank talks over TCP to a coordinator thread
/// on rank 0, so ranks blocked inside a collective still report, a crashed rank is noticed when its
/// connection drops, and a stopped one when its heartbeats stop. When a collective cannot complete,
/// every live rank's pending and later collectives fail with `CollectiveTimeout` whose `culprits()`
/// are the ranks at fault.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "efcomm/comm.hpp"

namespace efcomm::health {

/// The largest `MonitorOptions::capacity` and `window` (memory: the slow-link statistics keep
/// ranks^2 x window times).
constexpr size_t kMaxCapacity = size_t{1} << 22;
constexpr int kMaxWindow = 1000;

/// Settings of a `Monitor`. Times in seconds.
struct MonitorOptions {
  /// A collective some ranks have reached is overdue after max(timeoutFloor, timeoutFactor x the
  /// p99 of its recent durations); then the ranks that have not reached it are the culprits.
  double timeoutFloor = 5.0;
  double timeoutFactor = 4.0;
  /// ...plus the collective's bytes at this rate in Gbit/s (size x its largest contribution:
  /// what the busiest rank may have to receive): a large transfer over a slow network is not a
  /// hang, though no recent collective was as large (the first of the job included).
  double minGbps = 0.1;
  /// Every agent and the coordinator send a heartbeat this often...
  double heartbeatInterval = 0.2;
  /// ...and a rank (or the coordinator) silent this long is declared stopped (a hang).
  double heartbeatTimeout = 2.0;
  /// Collectives kept by the flight recorder (a ring: the oldest are dropped); at most
  /// kMaxCapacity.
  size_t capacity = 4096;
  /// Collectives the straggler and slow-link statistics look back over; in [3, kMaxWindow].
  int window = 20;
  /// Where dumps go on a failed collective and on SIGUSR1 (`efcomm-flight-rank<R>.json`); empty:
  /// no automatic dumps (`Monitor::dumpJson` still works).
  std::string dumpDir;
  /// Addresses rank 0's coordinator advertises (comma-separated IPv4); empty: every address of
  /// the host's interfaces, loopback last.
  std::string address;
  /// Seconds `Monitor`'s constructor waits for every rank to connect to the coordinator (ranks
  /// that start far apart, a slow scheduler: raise it; a test of a missing rank: lower it).
  double connectTimeout = 60.0;
};

/// A deviation the monitor found. `kind`: "hang", "crash", "straggler", "slow_link", "nonfinite",
/// "mismatch".
struct Anomaly {
  std::string kind;
  /// The ranks at fault; for "slow_link" the link's two ends (sender, receiver).
  std::vector<int> ranks;
  std::string detail;
  /// Sequence number of the collective it was found at (the monitor's own numbering).
  uint64_t seq = 0;
  /// When it was found: seconds since the Unix epoch.
  double time = 0;
};

class MonitorImpl;

/// Records and watches every collective of one rank. Construction and `close` are collective (all
/// ranks of `inner` call them); the other methods are local and thread-safe.
class Monitor {
 public:
  /// Wraps `inner`; blocks until every rank's agent has connected to the coordinator (bounded by
  /// `MonitorOptions::connectTimeout`). Throws `InvalidArgument` for bad options, `Error` when the control
  /// plane cannot be set up.
  Monitor(std::shared_ptr<Backend> inner, MonitorOptions options = {});
  ~Monitor();
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  /// The watched backend: issue every collective through it.
  std::shared_ptr<Backend> backend() const;
  /// Anomalies found so far, oldest first (on every rank: the coordinator's findings are sent to
  /// all).
  std::vector<Anomaly> anomalies() const;
  /// This rank's flight record as JSON (format "efcomm-flight-record" version 1, docs/reliability.md).
  std::string dumpJson(const std::string& reason = "demand") const;
  /// Writes dumpJson to `path`.
  void dump(const std::string& path, const std::string& reason = "demand") const;
  /// Says goodbye to the coordinator (so leaving is not a crash) and stops the threads.
  void close();

 private:
  std::shared_ptr<MonitorImpl> impl_;
  std::shared_ptr<Backend> backend_;
};

}  // namespace efcomm::health
