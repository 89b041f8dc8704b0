// Plan: per flow the candidate paths it takes and the split fractions, the bytes every link
// carries, and a flow-level simulator of the collective's completion time.

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "common/json.hpp"
#include "efcomm/error.hpp"
#include "efcomm/plan.hpp"
#include "plan/plan_internal.hpp"

namespace efcomm::plan {

Plan::Plan(const Topology& topo, std::vector<Flow> flows, std::vector<size_t> offsets, std::vector<PathShare> shares,
           std::string strategy)
    : topo_(topo),
      flows_(std::move(flows)),
      offsets_(std::move(offsets)),
      shares_(std::move(shares)),
      strategy_(std::move(strategy)),
      linkBytes_(topo.links().size(), 0.0) {
  detail::checkFlows(topo_, flows_, "plan.Plan");
  EFCOMM_CHECK(offsets_.size() == flows_.size() + 1 && offsets_.front() == 0 && offsets_.back() == shares_.size(),
               "plan.Plan: offsets must hold flows + 1 = ", flows_.size() + 1, " entries from 0 to shares = ",
               shares_.size(), ", got ", offsets_.size(), " entries");
  const std::vector<Link>& links = topo_.links();
  std::vector<int> path;
  for (size_t f = 0; f < flows_.size(); ++f) {
    const Flow& flow = flows_[f];
    EFCOMM_CHECK(offsets_[f] < offsets_[f + 1], "plan.Plan: flow ", f, " has no path share (offsets must increase)");
    const int count = topo_.pathCount(flow.src, flow.dst);
    double total = 0;
    for (size_t s = offsets_[f]; s < offsets_[f + 1]; ++s) {
      const PathShare& share = shares_[s];
      EFCOMM_CHECK(share.path >= 0 && share.path < count, "plan.Plan: flow ", f, " (", flow.src, " -> ", flow.dst,
                   ") names path ", share.path, " outside its ", count, " candidates");
      EFCOMM_CHECK(std::isfinite(share.fraction) && share.fraction >= 0, "plan.Plan: flow ", f, " has fraction ",
                   share.fraction, ": must be finite and >= 0");
      total += share.fraction;
      topo_.path(flow.src, flow.dst, share.path, path);
      for (const int l : path) {
        EFCOMM_CHECK(!links[l].failed || share.fraction == 0, "plan.Plan: flow ", f, " (", flow.src, " -> ", flow.dst,
                     ") path ", share.path, " crosses failed link ", l);
        linkBytes_[l] += share.fraction * flow.bytes;
      }
    }
    EFCOMM_CHECK(std::abs(total - 1) <= 1e-9, "plan.Plan: the fractions of flow ", f, " sum to ", total,
                 ", not 1");
  }
}

std::vector<PathShare> Plan::sharesOf(size_t flow) const {
  EFCOMM_CHECK(flow < flows_.size(), "plan.Plan.sharesOf: flow ", flow, " is out of range [0, ", flows_.size(), ")");
  return {shares_.begin() + static_cast<std::ptrdiff_t>(offsets_[flow]),
          shares_.begin() + static_cast<std::ptrdiff_t>(offsets_[flow + 1])};
}

double Plan::maxCongestion() const {
  const std::vector<Link>& links = topo_.links();
  double worst = 0;
  for (size_t l = 0; l < linkBytes_.size(); ++l) {
    if (linkBytes_[l] > 0) worst = std::max(worst, linkBytes_[l] / links[l].capacity);
  }
  return worst;
}

std::string Plan::toJson() const {
  std::string out = "{\"strategy\": " + json::quote(strategy_) + ", \"max_congestion\": " +
                    json::number(maxCongestion()) + ", \"subflows\": " + std::to_string(subflows()) +
                    ", \"flows\": [";
  out.reserve(out.size() + flows_.size() * 96);
  std::vector<int> path;
  for (size_t f = 0; f < flows_.size(); ++f) {
    const Flow& flow = flows_[f];
    if (f > 0) out += ", ";
    out += "{\"src\": " + std::to_string(flow.src) + ", \"dst\": " + std::to_string(flow.dst) +
           ", \"bytes\": " + json::number(flow.bytes) + ", \"paths\": [";
    for (size_t s = offsets_[f]; s < offsets_[f + 1]; ++s) {
      topo_.path(flow.src, flow.dst, shares_[s].path, path);
      if (s > offsets_[f]) out += ", ";
      out += "{\"links\": [";
      for (size_t i = 0; i < path.size(); ++i) {
        if (i > 0) out += ", ";
        out += std::to_string(path[i]);
      }
      out += "], \"fraction\": " + json::number(shares_[s].fraction) + "}";
    }
    out += "]}";
  }
  out += "]}";
  return out;
}

// Flow-level max-min fair sharing (Bertsekas & Gallager, "Data Networks", 6.5.2: progressive
// filling). Every sub-flow starts at 0; between two completions the rates are the max-min fair
// allocation: raise the rates of all unfrozen sub-flows together until a link saturates, freeze
// the sub-flows crossing it, repeat. A lazy min-heap of the links' saturation levels makes one
// allocation O(A log L) for A active sub-flow-link pairs on L links; the simulation pays that per
// event (a batch of sub-flows finishing together), O(events x A log L) in all, with finished
// sub-flows and idle links dropped as it goes. Equal flows finish in few events (a balanced plan
// of a million flows in seconds); hashed plans of unequal rates take an event per distinct
// finishing time, so keep those to ~100k sub-flows.
double Plan::completionTime() const {
  const std::vector<Link>& links = topo_.links();
  const size_t numLinks = links.size();
  // Sub-flows in CSR: sub-flow i crosses subLinks[subOff[i] .. subOff[i+1]).
  std::vector<double> remaining;
  std::vector<size_t> subOff{0};
  std::vector<int> subLinks, path;
  for (size_t f = 0; f < flows_.size(); ++f) {
    for (size_t s = offsets_[f]; s < offsets_[f + 1]; ++s) {
      const double bytes = shares_[s].fraction * flows_[f].bytes;
      if (bytes <= 0) continue;
      topo_.path(flows_[f].src, flows_[f].dst, shares_[s].path, path);
      if (path.empty()) continue;  // in-host: done at 0
      remaining.push_back(bytes);
      subLinks.insert(subLinks.end(), path.begin(), path.end());
      subOff.push_back(subLinks.size());
    }
  }
  const size_t subs = remaining.size();
  if (subs == 0) return 0;
  // Per link, the sub-flows crossing it: linkSubs[linkOff[l] .. linkEnd[l]), finished ones
  // swapped out when met.
  std::vector<size_t> linkOff(numLinks + 1, 0);
  for (const int l : subLinks) ++linkOff[l + 1];
  for (size_t l = 0; l < numLinks; ++l) linkOff[l + 1] += linkOff[l];
  std::vector<size_t> linkSubs(subLinks.size());
  std::vector<size_t> linkEnd(linkOff.begin(), linkOff.end() - 1);
  for (size_t i = 0; i < subs; ++i) {
    for (size_t k = subOff[i]; k < subOff[i + 1]; ++k) linkSubs[linkEnd[subLinks[k]]++] = i;
  }

  std::vector<char> active(subs, 1), frozen(subs, 0);
  std::vector<size_t> live(subs);  // active sub-flows
  std::iota(live.begin(), live.end(), size_t{0});
  std::vector<int> activeOn(numLinks, 0), busy;  // active sub-flows per link; links with any
  for (const int l : subLinks) ++activeOn[l];
  for (size_t l = 0; l < numLinks; ++l) {
    if (activeOn[l] > 0) busy.push_back(static_cast<int>(l));
  }
  std::vector<double> rate(subs), frozenRate(numLinks, 0);
  std::vector<int> unfrozen(numLinks, 0);
  std::vector<unsigned> version(numLinks, 0);
  // A link's saturation level; stale when the link's version has moved on.
  struct Item {
    double level;
    int link;
    unsigned version;
    bool operator>(const Item& o) const { return level > o.level || (level == o.level && link > o.link); }
  };
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;

  double now = 0;
  while (!live.empty()) {
    // Max-min fair rates of the active sub-flows.
    for (const size_t i : live) frozen[i] = 0;
    for (const int l : busy) {
      frozenRate[l] = 0;
      unfrozen[l] = activeOn[l];
      heap.push({links[l].capacity / unfrozen[l], l, ++version[l]});
    }
    double level = 0;
    while (!heap.empty()) {
      const Item top = heap.top();
      heap.pop();
      if (top.version != version[top.link] || unfrozen[top.link] == 0) continue;
      level = std::max(level, top.level);
      for (size_t k = linkOff[top.link]; k < linkEnd[top.link];) {
        const size_t i = linkSubs[k];
        if (!active[i]) {
          linkSubs[k] = linkSubs[--linkEnd[top.link]];
          continue;
        }
        ++k;
        if (frozen[i]) continue;
        frozen[i] = 1;
        rate[i] = level;
        for (size_t j = subOff[i]; j < subOff[i + 1]; ++j) {
          const int l = subLinks[j];
          frozenRate[l] += level;
          if (--unfrozen[l] > 0) {
            heap.push({std::max(level, (links[l].capacity - frozenRate[l]) / unfrozen[l]), l, ++version[l]});
          }
        }
      }
    }
    // Advance to the next completion; sub-flows due within a relative 1e-12 finish with it.
    double dt = std::numeric_limits<double>::infinity();
    for (const size_t i : live) dt = std::min(dt, remaining[i] / rate[i]);
    now += dt;
    size_t kept = 0;
    for (const size_t i : live) {
      if (remaining[i] / rate[i] <= dt * (1 + 1e-12)) {
        active[i] = 0;
        for (size_t j = subOff[i]; j < subOff[i + 1]; ++j) --activeOn[subLinks[j]];
      } else {
        remaining[i] -= rate[i] * dt;
        live[kept++] = i;
      }
    }
    live.resize(kept);
    busy.erase(std::remove_if(busy.begin(), busy.end(), [&](int l) { return activeOn[l] == 0; }), busy.end());
  }
  return now;
}

}  // namespace efcomm::plan
