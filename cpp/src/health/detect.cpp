// The coordinator's statistics and decisions (detect.hpp). Thresholds: detect.hpp.

#include "health/detect.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace efcomm::health::detect {

namespace {

// Transfer matrices up to this many ranks use the leave-row-and-column-out reference per cell
// (O(n^4) per evaluation); larger ones compare against the median of all cells, where one slow
// row or column is a small enough minority not to move it.
constexpr int kExactReferenceRanks = 8;

// Collectives kept while some rank has not completed them; beyond this the oldest are dropped
// (only a job that is already failing gets there: the overdue test fires long before).
constexpr size_t kMaxPending = 4096;

// The spans (first arrival to last completion) behind the overdue deadline's p99.
constexpr size_t kSpans = 256;

// Standard error of a sample median = this x sigma / sqrt(n), for normal data (sqrt(pi / 2)).
constexpr double kMedianSe = 1.2533;

std::string format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

}  // namespace

double median(std::vector<double> v) {
  if (v.empty()) return kNaN;
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  const double hi = v[mid];
  if (v.size() % 2 == 1) return hi;
  const double lo = *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid));
  return lo + (hi - lo) / 2;
}

double madScale(const std::vector<double>& v, double center) {
  std::vector<double> dev;
  dev.reserve(v.size());
  for (const double x : v) dev.push_back(std::fabs(x - center));
  return 1.4826 * median(std::move(dev));
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return kNaN;
  const double rank = std::ceil(q * static_cast<double>(v.size()));
  const size_t k = static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(v.size()))) - 1;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// ---- Ring, Latch --------------------------------------------------------------------------------

Ring::Ring(size_t capacity) : values_(std::max<size_t>(capacity, 1)) {}

void Ring::push(double v) {
  values_[next_] = v;
  next_ = (next_ + 1) % values_.size();
  size_ = std::min(size_ + 1, values_.size());
}

std::vector<double> Ring::values() const {
  std::vector<double> out;
  out.reserve(size_);
  const size_t first = (next_ + values_.size() - size_) % values_.size();
  for (size_t i = 0; i < size_; ++i) out.push_back(values_[(first + i) % values_.size()]);
  return out;
}

bool Latch::update(bool raise, bool keep) {
  if (!raised_) {
    run_ = raise ? run_ + 1 : 0;
    if (run_ < raiseAfter_) return false;
    raised_ = true;
    run_ = 0;
    return true;
  }
  run_ = keep ? 0 : run_ + 1;
  if (run_ >= clearAfter_) {
    raised_ = false;
    run_ = 0;
  }
  return false;
}

std::string formatSeconds(double s) {
  if (!std::isfinite(s)) return "?";
  if (std::fabs(s) >= 1) return format("%.2f s", s);
  if (std::fabs(s) >= 1e-3) return format("%.1f ms", s * 1e3);
  return format("%.0f us", s * 1e6);
}

std::string formatRanks(const std::vector<int>& ranks) {
  std::string out = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? ", " : "") + std::to_string(ranks[i]);
  return out;
}

// ---- compute stragglers ---------------------------------------------------------------------------

StragglerDetector::StragglerDetector(int ranks, int window, StragglerParams params)
    : n_(ranks), window_(std::max(window, 1)), p_(params) {
  for (int r = 0; r < n_; ++r) {
    rows_.emplace_back(static_cast<size_t>(window_));
    latches_.emplace_back(p_.raiseAfter, window_);
  }
}

std::vector<Finding> StragglerDetector::add(uint64_t seq, const std::vector<double>& gaps) {
  if (n_ < 2 || gaps.size() != static_cast<size_t>(n_)) return {};
  double longest = 0;
  for (const double g : gaps) {
    if (!(g >= 0) || !std::isfinite(g)) return {};
    longest = std::max(longest, g);
  }
  if (longest < p_.computeFloor) return {};  // a follow-up collective: no compute before it
  for (int r = 0; r < n_; ++r) rows_[static_cast<size_t>(r)].push(gaps[static_cast<size_t>(r)]);
  if (!rows_.front().full()) return {};

  std::vector<std::vector<double>> g;  // [rank][collective]
  g.reserve(static_cast<size_t>(n_));
  for (const Ring& row : rows_) g.push_back(row.values());
  const size_t w = g.front().size();
  std::vector<Finding> out;
  std::vector<double> others, excess(w), level(w);
  for (int r = 0; r < n_; ++r) {
    for (size_t s = 0; s < w; ++s) {
      others.clear();
      for (int j = 0; j < n_; ++j)
        if (j != r) others.push_back(g[static_cast<size_t>(j)][s]);
      level[s] = median(others);
      excess[s] = g[static_cast<size_t>(r)][s] - level[s];
    }
    const double d = median(excess);
    const double ref = median(level);
    const double se = kMedianSe * madScale(excess, d) / std::sqrt(static_cast<double>(w));
    const bool slow = d > p_.ratio * ref && d > p_.absFloor && d > p_.z * se;
    const bool still = d > 0.5 * p_.ratio * ref && d > 0.5 * p_.absFloor;
    if (!latches_[static_cast<size_t>(r)].update(slow, still)) continue;
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.2fx", ref > 0 ? (ref + d) / ref : 0.0);
    out.push_back({"straggler",
                   {r},
                   "rank " + std::to_string(r) + " computes " + ratio +
                       " the other ranks' median between collectives over the last " + std::to_string(w) +
                       " collectives (" + formatSeconds(ref + d) + " vs " + formatSeconds(ref) + " per collective)",
                   seq});
  }
  return out;
}

std::vector<double> StragglerDetector::gapMedians() const {
  std::vector<double> out;
  for (const Ring& row : rows_) out.push_back(median(row.values()));
  return out;
}

// ---- slow links ------------------------------------------------------------------------------------

LinkDetector::LinkDetector(int ranks, int window, LinkParams params)
    : n_(ranks), window_(std::max(window, 1)), p_(params) {
  cells_.assign(static_cast<size_t>(n_) * static_cast<size_t>(n_), Ring(static_cast<size_t>(window_)));
}

void LinkDetector::add(int dst, const std::vector<double>& peerSeconds) {
  if (dst < 0 || dst >= n_ || peerSeconds.size() != static_cast<size_t>(n_)) return;
  for (int src = 0; src < n_; ++src) {
    const double v = peerSeconds[static_cast<size_t>(src)];
    if (src != dst && v >= 0 && std::isfinite(v))
      cells_[static_cast<size_t>(src) * static_cast<size_t>(n_) + static_cast<size_t>(dst)].push(v);
  }
}

std::vector<std::vector<double>> LinkDetector::medians() const {
  const size_t minSamples = static_cast<size_t>(std::max(3, window_ / 2));
  std::vector<std::vector<double>> m(static_cast<size_t>(n_), std::vector<double>(static_cast<size_t>(n_), kNaN));
  for (int s = 0; s < n_; ++s)
    for (int d = 0; d < n_; ++d) {
      const Ring& c = cells_[static_cast<size_t>(s) * static_cast<size_t>(n_) + static_cast<size_t>(d)];
      if (s != d && c.size() >= minSamples) m[static_cast<size_t>(s)][static_cast<size_t>(d)] = median(c.values());
    }
  return m;
}

std::vector<std::vector<int>> LinkDetector::slowKeys(const std::vector<std::vector<double>>& m, double scale,
                                                     const std::vector<bool>& quietSenders) const {
  const double ratio = 1 + (p_.ratio - 1) * scale, absFloor = p_.absFloor * scale, z = p_.z * scale;
  const auto at = [&](int s, int d) { return m[static_cast<size_t>(s)][static_cast<size_t>(d)]; };
  // The reference cells of (s, d): the known cells sharing neither its row nor its column (s, d =
  // -1: no row, column excluded).
  const auto reference = [&](int s, int d) {
    std::vector<double> ref;
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < n_; ++j)
        if (i != j && i != s && j != d && !std::isnan(at(i, j))) ref.push_back(at(i, j));
    return ref;
  };
  const bool exact = n_ <= kExactReferenceRanks;
  const std::vector<double> all = exact ? std::vector<double>{} : reference(-1, -1);
  const double allMedian = median(all), allScale = madScale(all, allMedian);

  const auto idx = [&](int s, int d) {
    return static_cast<size_t>(s) * static_cast<size_t>(n_) + static_cast<size_t>(d);
  };
  std::vector<char> slow(static_cast<size_t>(n_) * static_cast<size_t>(n_), 0);
  for (int s = 0; s < n_; ++s)
    for (int d = 0; d < n_; ++d) {
      const double v = at(s, d);
      if (std::isnan(v)) continue;
      double ref = allMedian, spread = allScale;
      if (exact) {
        const std::vector<double> cells = reference(s, d);
        if (cells.empty()) continue;
        ref = median(cells);
        spread = madScale(cells, ref);
      }
      slow[idx(s, d)] = v > ratio * ref && v - ref > absFloor && v - ref > z * spread;
    }

  // A row (column) is slow when all its known cells are, and it has at least two.
  std::vector<char> rowSlow(static_cast<size_t>(n_), 0), colSlow(static_cast<size_t>(n_), 0);
  for (int r = 0; r < n_; ++r) {
    int rowKnown = 0, rowBad = 0, colKnown = 0, colBad = 0;
    for (int k = 0; k < n_; ++k) {
      if (!std::isnan(at(r, k))) {
        ++rowKnown;
        rowBad += slow[idx(r, k)];
      }
      if (!std::isnan(at(k, r))) {
        ++colKnown;
        colBad += slow[idx(k, r)];
      }
    }
    rowSlow[static_cast<size_t>(r)] = rowKnown >= 2 && rowBad == rowKnown;
    colSlow[static_cast<size_t>(r)] = colKnown >= 2 && colBad == colKnown;
  }
  std::vector<std::vector<int>> keys;
  for (int r = 0; r < n_; ++r) {
    const bool quiet = static_cast<size_t>(r) < quietSenders.size() && quietSenders[static_cast<size_t>(r)];
    if (rowSlow[static_cast<size_t>(r)] && !quiet) keys.push_back({r, -1});
    if (colSlow[static_cast<size_t>(r)]) keys.push_back({-1, r});
  }
  for (int s = 0; s < n_; ++s)
    for (int d = 0; d < n_; ++d)
      if (slow[idx(s, d)] && !rowSlow[static_cast<size_t>(s)] && !colSlow[static_cast<size_t>(d)])
        keys.push_back({s, d});
  return keys;
}

std::vector<Finding> LinkDetector::evaluate(uint64_t seq, const std::vector<bool>& quietSenders) {
  const auto m = medians();
  const auto at = [&](int s, int d) { return m[static_cast<size_t>(s)][static_cast<size_t>(d)]; };
  const std::vector<std::vector<int>> raise = slowKeys(m, 1.0, quietSenders);
  if (raise.empty() && latches_.empty()) return {};
  const std::vector<std::vector<int>> keep = slowKeys(m, 0.5, quietSenders);
  for (const auto& key : raise) latches_.try_emplace(key, p_.raiseAfter, window_);
  const auto has = [](const std::vector<std::vector<int>>& keys, const std::vector<int>& key) {
    return std::find(keys.begin(), keys.end(), key) != keys.end();
  };

  std::vector<Finding> out;
  for (auto& [key, latch] : latches_) {
    if (!latch.update(has(raise, key), has(keep, key))) continue;
    const int s = key[0], d = key[1];
    // The value reported and the reference it is compared with, for the sentence.
    std::vector<double> mine, rest;
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < n_; ++j) {
        const double v = at(i, j);
        if (i == j || std::isnan(v)) continue;
        const bool in = (s < 0 || i == s) && (d < 0 || j == d);
        const bool shares = (s >= 0 && i == s) || (d >= 0 && j == d);
        if (in) mine.push_back(v);
        else if (!shares) rest.push_back(v);
      }
    const std::string vs = formatSeconds(median(mine)) + " median transfer vs " + formatSeconds(median(rest)) +
                           " for the other links";
    if (d < 0) {
      out.push_back({"slow_link",
                     {s},
                     "rank " + std::to_string(s) + " sends slowly to every peer (its NIC or host): " + vs,
                     seq});
    } else if (s < 0) {
      out.push_back({"slow_link",
                     {d},
                     "rank " + std::to_string(d) + " receives slowly from every peer (its NIC or host): " + vs,
                     seq});
    } else {
      out.push_back({"slow_link",
                     {s, d},
                     "link " + std::to_string(s) + " -> " + std::to_string(d) + " is slow: " + vs,
                     seq});
    }
  }
  return out;
}

// ---- Tracker --------------------------------------------------------------------------------------

Tracker::Tracker(int ranks, double timeoutFloor, double timeoutFactor, int window, double minGbps,
                 StragglerParams straggler,
                 LinkParams link)
    : n_(ranks),
      floor_(timeoutFloor),
      factor_(timeoutFactor),
      minBytesPerSecond_(minGbps * 1e9 / 8),
      spans_(kSpans),
      stragglers_(ranks, window, straggler),
      links_(ranks, window, link),
      lastSeq_(static_cast<size_t>(ranks), -1),
      lastOp_(static_cast<size_t>(ranks)),
      lastArrive_(static_cast<size_t>(ranks), kNaN),
      left_(static_cast<size_t>(ranks), 0) {}

std::vector<Finding> Tracker::arrive(int rank, uint64_t seq, const std::string& op, double gap, double now,
                                     uint64_t bytes) {
  const size_t r = static_cast<size_t>(rank);
  if (lastSeq_[r] < 0 || seq > static_cast<uint64_t>(lastSeq_[r])) {
    lastSeq_[r] = static_cast<int64_t>(seq);
    lastOp_[r] = op;
    lastArrive_[r] = now;
  }
  auto [it, fresh] = pending_.try_emplace(seq);
  PendingCollective& p = it->second;
  if (fresh) {
    p.op = op;
    p.firstArrive = now;
    p.arrived.assign(static_cast<size_t>(n_), 0);
    p.completed.assign(static_cast<size_t>(n_), 0);
    p.gaps.assign(static_cast<size_t>(n_), -1);
    while (pending_.size() > kMaxPending) pending_.erase(pending_.begin());
  }
  if (p.arrived[r]) return {};
  p.arrived[r] = 1;
  p.maxBytes = std::max(p.maxBytes, bytes);
  p.gaps[r] = gap;
  p.lastArrive = now;
  if (++p.nArrived < n_) return {};
  return stragglers_.add(seq, p.gaps);
}

std::vector<Finding> Tracker::complete(int rank, uint64_t seq, bool ok, const std::vector<double>& peerSeconds,
                                       double now) {
  const size_t r = static_cast<size_t>(rank);
  const auto it = pending_.find(seq);
  if (it == pending_.end() || it->second.completed[r]) return {};
  PendingCollective& p = it->second;
  p.completed[r] = 1;
  if (!ok) p.failed = true;
  if (ok) links_.add(rank, peerSeconds);
  if (++p.nCompleted < n_) return {};
  std::vector<Finding> out;
  if (!p.failed) {
    spans_.push(now - p.firstArrive);
    std::vector<bool> quiet(static_cast<size_t>(n_));
    for (int k = 0; k < n_; ++k) quiet[static_cast<size_t>(k)] = stragglers_.flagged(k);
    out = links_.evaluate(seq, quiet);
  }
  pending_.erase(it);
  return out;
}

void Tracker::left(int rank) { left_.at(static_cast<size_t>(rank)) = 1; }

double Tracker::spansP99() const { return quantile(spans_.values(), 0.99); }

double Tracker::allowance(const PendingCollective& p) const {
  return static_cast<double>(p.maxBytes) * n_ / minBytesPerSecond_;
}

double Tracker::deadline() const {
  const double p99 = spansP99();
  return std::isnan(p99) ? floor_ : std::max(floor_, factor_ * p99);
}

std::string Tracker::lastReached(int rank, double now) const {
  const size_t r = static_cast<size_t>(rank);
  if (lastSeq_[r] < 0) return "had not been heard arriving at any collective";
  return "was last heard arriving at collective #" + std::to_string(lastSeq_[r]) + " (" + lastOp_[r] + ") " +
         formatSeconds(now - lastArrive_[r]) + " ago";
}

std::optional<Finding> Tracker::overdue(double now) const {
  const double limit = deadline();
  for (const auto& [seq, p] : pending_) {
    const bool arriving = p.nArrived < n_;
    const double since = arriving ? p.firstArrive : p.lastArrive;
    std::vector<int> culprits, gone;  // gone: those that closed their monitor, which never arrive
    for (int r = 0; r < n_; ++r) {
      if ((arriving ? p.arrived : p.completed)[static_cast<size_t>(r)]) continue;
      culprits.push_back(r);
      if (arriving && left_[static_cast<size_t>(r)]) gone.push_back(r);
    }
    if (!gone.empty()) {  // at once, naming those only: the others may still come
      std::string detail = "collective #" + std::to_string(seq) + " (" + p.op + ") cannot complete: ";
      for (const int r : gone)
        detail += std::string(r == gone.front() ? "" : "; ") + "rank " + std::to_string(r) +
                  " closed its monitor (left the job) and " + lastReached(r, now);
      return Finding{"hang", gone, detail, seq};
    }
    // Ranks that never arrive are waited for the deadline; a transfer also for its bytes.
    const double extra = arriving ? 0.0 : allowance(p);
    if (culprits.empty() || now - since <= limit + extra) continue;
    std::string detail = "collective #" + std::to_string(seq) + " (" + p.op + ") is overdue: ";
    if (arriving) {
      detail += formatRanks(culprits) + (culprits.size() == 1 ? " has" : " have") + " not arrived " +
                formatSeconds(now - since) + " after the first rank did";
    } else {
      detail += "every rank arrived, but " + formatRanks(culprits) + (culprits.size() == 1 ? " has" : " have") +
                " not finished it " + formatSeconds(now - since) + " after the last arrival";
    }
    const double p99 = spansP99();
    detail += " (deadline " + formatSeconds(limit + extra) + " = max(floor " + formatSeconds(floor_) + ", " +
              format("%g", factor_) + " x recent p99 " + (std::isnan(p99) ? std::string("n/a") : formatSeconds(p99)) +
              ")" +
              (extra > 0 ? " + " + formatSeconds(extra) + " for its bytes at " +
                               format("%g", minBytesPerSecond_ * 8 / 1e9) + " Gbit/s"
                         : std::string()) +
              ")";
    if (arriving) {
      for (const int r : culprits) detail += "; rank " + std::to_string(r) + " " + lastReached(r, now);
    }
    return Finding{"hang", culprits, detail, seq};
  }
  return std::nullopt;
}

}  // namespace efcomm::health::detect
