#pragma once
// The coordinator's decisions (control.cpp), free of sockets, threads and clocks so that they are
// tested with synthetic numbers: which collective is overdue and whom it waits for, which rank
// computes persistently longer than the others (a compute straggler), and which link, sender or
// receiver transfers persistently slower than the rest (C4D: collective traffic is periodic and
// homogeneous, so a persistent deviation is a fault).
//
// Every test is robust (medians and median absolute deviations, never means or maxima) and asks
// for a deviation that is large in three ways at once: relative to the typical value, in seconds,
// and relative to the statistic's own noise; and for persistence (several consecutive
// evaluations) before anything is reported. The thresholds and why they are where they are:
// StragglerParams and LinkParams.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace efcomm::health::detect {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// Median of `v` (the mean of the two middle values for an even count); NaN when empty.
double median(std::vector<double> v);

/// Robust standard deviation: 1.4826 x the median absolute deviation of `v` from `center` (the
/// factor makes it the standard deviation for normal data); NaN when empty.
double madScale(const std::vector<double>& v, double center);

/// The `q`-quantile (0 < q <= 1) of `v` by the nearest-rank method (an element of `v`); NaN when
/// empty.
double quantile(std::vector<double> v, double q);

/// The `capacity` most recent values.
class Ring {
 public:
  explicit Ring(size_t capacity);
  void push(double v);
  size_t size() const { return size_; }
  bool full() const { return size_ == values_.size(); }
  /// The values held, oldest first.
  std::vector<double> values() const;

 private:
  std::vector<double> values_;
  size_t next_ = 0;
  size_t size_ = 0;
};

/// Report-once with persistence and hysteresis: `update` returns true the first time the raise
/// condition has held `raiseAfter` consecutive evaluations; once raised, it rearms (so a fault that
/// stops and starts again is reported again) only after the keep condition, a laxer one (half the
/// deviation), has been false `clearAfter` consecutive evaluations, so that a fault hovering
/// around the threshold is reported once, not every time it dips.
class Latch {
 public:
  Latch(int raiseAfter, int clearAfter) : raiseAfter_(raiseAfter), clearAfter_(clearAfter) {}
  bool update(bool raise, bool keep);
  bool update(bool condition) { return update(condition, condition); }
  bool raised() const { return raised_; }

 private:
  int raiseAfter_, clearAfter_;
  int run_ = 0;  // consecutive evaluations agreeing with the state we may switch to
  bool raised_ = false;
};

/// A deviation found; `seq` is the collective it was found at.
struct Finding {
  std::string kind;  // "hang", "straggler", "slow_link"
  std::vector<int> ranks;
  std::string detail;
  uint64_t seq = 0;
};

/// "0.52 s", "31.0 ms", "850 us": a duration for a finding's sentence.
std::string formatSeconds(double s);
/// "rank 2", "ranks 1, 3".
std::string formatRanks(const std::vector<int>& ranks);

/// Thresholds of the compute-straggler test (seconds where a time).
///
/// The signal is the gap each rank reports with each collective: the time it spent outside
/// collectives before issuing it, on its own clock: its compute. Ranks that compute less wait
/// inside the next collective instead, so the gaps compare the ranks' compute directly, whatever
/// the network does. Per collective, rank r's excess is its gap minus the median gap of the other
/// ranks at the same collective (paired: a step that is slow for everyone cancels out). Over the
/// window, the rank's excess is the median of its per-collective excesses, and it is a straggler
/// when that median excess is at once
/// - more than `ratio` x the others' typical gap (1.2x: a 1.3x straggler is found, while the
///   scheduling noise of an oversubscribed machine, which is not persistent, is not);
/// - more than `absFloor` seconds (sub-millisecond differences are not worth a report, and an
///   oversubscribed machine's timeslices create them);
/// - more than `z` standard errors of that median (1.2533 x robust sigma / sqrt(window)): the
///   rank's own excesses must be consistent, not driven by a few long preemptions;
/// and has been so for `raiseAfter` consecutive collectives. It is cleared (and reported again if
/// it comes back) after `window` collectives in which the excess stays under half of the first
/// two thresholds.
///
/// Measured here (4 and 8 processes on 2 cores, ~20 ms of compute per step, other jobs running):
/// per-rank jitter of log-sd 0.10-0.18 beyond the common variation, and windows where one rank
/// ran up to 1.16x the others for a few collectives; a 1.3x rank measured 1.3x-1.45x. Hence the
/// ratio 0.2 and the persistence of 5.
///
/// A Reducer step issues several collectives of which only the first follows the step's compute;
/// the others follow bookkeeping of microseconds and carry no signal. A collective counts towards
/// the window only when some rank's gap reaches `computeFloor`, so the window is `window` steps,
/// not `window` collectives of which most are noise around zero.
struct StragglerParams {
  double computeFloor = 1e-3;
  double ratio = 0.2;
  double absFloor = 2e-3;
  double z = 4.0;
  int raiseAfter = 5;
};

/// The compute-straggler test over the last `window` collectives that carry compute.
class StragglerDetector {
 public:
  StragglerDetector(int ranks, int window, StragglerParams params = {});
  /// One collective every rank arrived at: `gaps[r]` is rank r's gap (negative: unknown, e.g. the
  /// first collective or one issued while another was in flight). A collective with an unknown
  /// gap is skipped: the ranks' gaps are only comparable when all are known. Returns the findings
  /// this collective raised (at most one per rank; kind "straggler").
  std::vector<Finding> add(uint64_t seq, const std::vector<double>& gaps);
  /// Whether `rank` is currently flagged as a straggler.
  bool flagged(int rank) const { return latches_.at(static_cast<size_t>(rank)).raised(); }
  /// Per rank, the median gap over the window (NaN before any).
  std::vector<double> gapMedians() const;
  /// Collectives in the window (up to `window`).
  size_t collectives() const { return rows_.empty() ? 0 : rows_.front().size(); }

 private:
  int n_;
  int window_;
  StragglerParams p_;
  std::vector<Ring> rows_;  // per rank: its gaps at the collectives of the window
  std::vector<Latch> latches_;
};

/// Thresholds of the slow-link test (seconds where a time).
///
/// The signal is the per-peer transfer time each rank reports with each completed collective
/// (WorkTiming::peerSeconds): cell (src, dst) of the matrix holds what rank dst measured for
/// rank src's data. Per cell, the median over its last `window` samples (at least half a window
/// of samples before it counts). A cell is slow when its median exceeds the reference, the median
/// of the cells that share neither its row nor its column (so that a slow row or column does not
/// raise its own reference; with 2 ranks that is the opposite direction), by
/// - a factor `ratio` (3x: transfer times of healthy links differ by less than that, while a
///   throttled or delayed link is an order of magnitude slower);
/// - `absFloor` seconds (5 ms: an oversubscribed machine's timeslices move medians by a few ms);
/// - `z` robust standard deviations of the reference cells;
/// and persistently (`raiseAfter` consecutive evaluations, one per completed collective); cleared
/// after `window` evaluations without the same at half the excess (ratio 1 + (ratio - 1) / 2,
/// absFloor / 2, z / 2).
/// Then: a row whose cells are all slow (at least 2) is the sender (its NIC or host): "slow_link"
/// naming [src]; a column likewise the receiver [dst]; a slow cell outside such rows and columns
/// is the link: "slow_link" naming [src, dst].
struct LinkParams {
  double ratio = 3.0;
  double absFloor = 5e-3;
  double z = 5.0;
  int raiseAfter = 3;
};

/// The slow-link test over the per-pair transfer-time matrix.
class LinkDetector {
 public:
  LinkDetector(int ranks, int window, LinkParams params = {});
  /// Rank `dst` completed a collective; `peerSeconds[src]` is when src's data was there (negative:
  /// none or not measured). Ignored unless it has one entry per rank.
  void add(int dst, const std::vector<double>& peerSeconds);
  /// Tests the matrix (call once per completed collective); returns the newly raised findings.
  /// Rows of ranks with `quietSenders[r]` true are not reported as slow senders (a compute
  /// straggler looks like a slow sender to a backend that times transfers from its own issue).
  std::vector<Finding> evaluate(uint64_t seq, const std::vector<bool>& quietSenders = {});
  /// Per cell [src][dst], the median transfer time over the window (NaN: too few samples, and on
  /// the diagonal).
  std::vector<std::vector<double>> medians() const;

 private:
  int n_;
  int window_;
  LinkParams p_;
  // The finding keys whose condition holds at `scale` (1: the report thresholds; 0.5: the laxer
  // ones that keep a raised finding): {src, -1} a slow sender, {-1, dst} a slow receiver, {src,
  // dst} a slow link.
  std::vector<std::vector<int>> slowKeys(const std::vector<std::vector<double>>& m, double scale,
                                         const std::vector<bool>& quietSenders) const;

  std::vector<Ring> cells_;  // [src * n + dst]
  std::map<std::vector<int>, Latch> latches_;  // by finding: {src, -1} row, {-1, dst} column, {src, dst} cell
};

/// A collective seen through the ranks' reports, until every rank has completed it.
struct PendingCollective {
  std::string op;
  uint64_t maxBytes = 0;  // the largest contribution of a rank arrived
  double firstArrive = 0, lastArrive = 0;  // coordinator clock
  std::vector<char> arrived, completed;
  std::vector<double> gaps;
  int nArrived = 0, nCompleted = 0;
  bool failed = false;
};

/// The coordinator's merged view of the ranks' reports (times in seconds on the coordinator's
/// steady clock): the pending collectives, each rank's progress, the recent collective spans that
/// set the overdue deadline, and the straggler and link detectors. Not thread-safe.
class Tracker {
 public:
  /// `timeoutFloor`, `timeoutFactor`, `window`, `minGbps` as in MonitorOptions.
  Tracker(int ranks, double timeoutFloor, double timeoutFactor, int window, double minGbps = 0.1,
          StragglerParams straggler = {}, LinkParams link = {});

  /// Rank `rank` issued collective `seq` at `now`, contributing `bytes`. Returns straggler
  /// findings raised by it.
  std::vector<Finding> arrive(int rank, uint64_t seq, const std::string& op, double gap, double now,
                              uint64_t bytes = 0);
  /// Rank `rank` finished collective `seq` at `now` (`ok` false: it failed there). Returns the
  /// slow-link findings raised by it.
  std::vector<Finding> complete(int rank, uint64_t seq, bool ok, const std::vector<double>& peerSeconds, double now);
  /// Rank `rank` closed its monitor (it will not arrive anywhere any more).
  void left(int rank);

  /// The oldest collective that is overdue at `now`, as a fatal "hang" naming the ranks it waits
  /// for: those that never arrived, once `deadline()` has passed since the first arrival (at once
  /// when one of them has closed its monitor: it will not come); or, when all arrived, those that
  /// have not finished it, once `deadline()` plus `allowance()` has passed since the last arrival.
  std::optional<Finding> overdue(double now) const;
  /// max(timeoutFloor, timeoutFactor x spansP99()).
  double deadline() const;
  /// Seconds a collective's transfer is allowed on top of deadline(): size x its largest
  /// contribution at minGbps.
  double allowance(const PendingCollective& p) const;
  /// p99 of the recent spans (first arrival to last completion of successful collectives; NaN
  /// before any).
  double spansP99() const;

  /// "was last heard arriving at collective #17 (allgatherv) 0.31 s ago" / "had not been heard
  /// arriving at any collective": what the coordinator heard, which lags the rank by up to a
  /// heartbeat interval (agents send arrivals in batches).
  std::string lastReached(int rank, double now) const;
  /// The last collective `rank` arrived at (-1: none), and when.
  int64_t lastSeq(int rank) const { return lastSeq_.at(static_cast<size_t>(rank)); }
  const StragglerDetector& stragglers() const { return stragglers_; }
  const LinkDetector& links() const { return links_; }
  size_t pending() const { return pending_.size(); }

 private:
  int n_;
  double floor_, factor_, minBytesPerSecond_;
  std::map<uint64_t, PendingCollective> pending_;
  Ring spans_;
  StragglerDetector stragglers_;
  LinkDetector links_;
  std::vector<int64_t> lastSeq_;
  std::vector<std::string> lastOp_;
  std::vector<double> lastArrive_;
  std::vector<char> left_;
};

}  // namespace efcomm::health::detect
