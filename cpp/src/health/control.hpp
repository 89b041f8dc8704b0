#pragma once
// The monitor's control plane (efcomm/health.hpp): an agent per rank and, on rank 0, a coordinator,
// talking over TCP, independent of the data path. The monitor (monitor.cpp) tells its agent when
// this rank arrives at and finishes each collective; the coordinator merges all ranks' reports,
// decides when a collective cannot complete (a crashed or stopped rank, an overdue collective)
// and who is slow (a compute straggler, a slow link), and tells every agent, which hands each
// finding to the monitor's callback.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/health.hpp"

namespace efcomm::health {

/// What a rank reports when it arrives at collective `seq` (the monitor's numbering, the same on
/// every rank for the same collective).
struct Arrival {
  uint64_t seq = 0;
  std::string op;        // "allgatherv", "alltoallv", "broadcast", "allreduceSum", "barrier"
  uint64_t bytes = 0;    // this rank's contribution
  /// Seconds this rank spent outside collectives since it finished the previous one (its own
  /// clock; negative for the first collective): compute time, the compute-straggler signal.
  double gapSeconds = -1;
};

/// What a rank reports when collective `seq` finished on it (successfully or not).
struct Completion {
  uint64_t seq = 0;
  bool ok = true;
  double seconds = 0;       // issue to completion on this rank
  WorkTiming timing;        // per-peer transfer times where the backend measures them
};

/// Called (on the agent's thread) for every finding the coordinator sends, and for the agent's
/// own (the coordinator lost). `fatal`: collectives cannot complete any more; the monitor aborts
/// its backend with CollectiveTimeout(anomaly.detail, anomaly.ranks). Each finding is delivered
/// once; after a fatal one the agent reports nothing of its own. The callback must not close or
/// destroy the Agent (it runs on the agent's thread); it may call coordinatorJson().
using FindingCallback = std::function<void(const Anomaly& anomaly, bool fatal)>;

class Agent {
 public:
  /// Collective over `bootstrap` (every rank calls it, before any other collective of the
  /// monitor): rank 0 starts the coordinator and broadcasts its addresses and a random job token
  /// over `bootstrap`; every rank's agent connects, and the call returns once all ranks are
  /// connected (bounded by `connectTimeoutSeconds`; Error naming the ranks that did not connect).
  Agent(Backend& bootstrap, const MonitorOptions& options, FindingCallback onFinding,
        double connectTimeoutSeconds);
  /// close() if not closed yet.
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  /// Reports, without blocking on the network, that this rank issued / finished a collective.
  /// Called from the thread that issues collectives. Cheap: one small message each.
  void arrive(const Arrival& arrival);
  void complete(const Completion& completion);

  /// Says goodbye (so the coordinator does not take leaving for a crash) and joins the threads;
  /// rank 0 waits (briefly, bounded) for the others' goodbyes before stopping the coordinator.
  void close();

  /// Rank 0: the coordinator's view as a JSON object (per-rank gap statistics, the per-pair
  /// transfer-time matrix of the window, recent collective durations, the current overdue
  /// deadline); "null" on other ranks.
  std::string coordinatorJson() const;

  /// The job's identity: rank 0's random token of the rendezvous, as 16 hex digits, the same on
  /// every rank of one Monitor (dumps of two runs in one directory tell themselves apart by it).
  const std::string& job() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace efcomm::health
