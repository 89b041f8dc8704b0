// The planning strategies of plan.hpp: "ecmp" (hashing), "balanced" (C4P-style path assignment)
// and "split" (Ethereal-style minimal splitting). Candidate paths are enumerated implicitly through
// Topology::pathCount/path into reused flat buffers, link loads live in one flat vector, and
// every strategy is O(flows x candidates x path length) per pass.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/rng.hpp"
#include "efcomm/error.hpp"
#include "efcomm/plan.hpp"
#include "plan/plan_internal.hpp"

namespace efcomm::plan {

namespace {

// Relative slack of "reaches the bound" and "at the hot level": far above the rounding of sums of
// a few million doubles, far below any real difference in load.
constexpr double kExact = 1e-12;
constexpr double kHot = 1e-9;

// The candidate paths of one flow (Topology enumerates only paths clear of failed links), loaded
// into flat storage that is reused from flow to flow.
class Candidates {
 public:
  explicit Candidates(const Topology& topo) : topo_(topo) {}

  // Loads flow `index`'s candidates; throws when it has none.
  int load(const Flow& flow, size_t index) {
    flat_.clear();
    off_.assign(1, 0);
    const int n = topo_.pathCount(flow.src, flow.dst);
    EFCOMM_CHECK(n > 0, "plan.plan: flow ", index, " (", flow.src, " -> ", flow.dst,
                 ") has no usable path: the endpoints are unreachable (failed links?)");
    for (int p = 0; p < n; ++p) {
      topo_.path(flow.src, flow.dst, p, scratch_);
      flat_.insert(flat_.end(), scratch_.begin(), scratch_.end());
      off_.push_back(flat_.size());
    }
    return n;
  }

  // Candidate k is path k of the flow.
  int size() const { return static_cast<int>(off_.size()) - 1; }
  const int* begin(int k) const { return flat_.data() + off_[k]; }
  const int* end(int k) const { return flat_.data() + off_[k + 1]; }

 private:
  const Topology& topo_;
  std::vector<int> flat_, scratch_;
  std::vector<size_t> off_;
};

std::vector<double> inverseCapacities(const Topology& topo) {
  std::vector<double> inv;
  inv.reserve(topo.links().size());
  for (const Link& l : topo.links()) inv.push_back(1 / l.capacity);
  return inv;
}

double maxLoad(const std::vector<double>& load, const std::vector<double>& invCap) {
  double worst = 0;
  for (size_t l = 0; l < load.size(); ++l) worst = std::max(worst, load[l] * invCap[l]);
  return worst;
}

void addLoad(std::vector<double>& load, const int* begin, const int* end, double bytes) {
  for (const int* l = begin; l != end; ++l) load[*l] += bytes;
}

// The candidate that minimizes the maximum congestion of its links once `bytes` join them; ties
// go to the lower sum of congestions, then to the lower index (C4P's least-loaded path).
struct Pick {
  int k = -1;
  double max = 0;
};
Pick leastCongested(const Candidates& c, const std::vector<double>& load, const std::vector<double>& invCap,
                    double bytes) {
  Pick best;
  double bestSum = 0;
  for (int k = 0; k < c.size(); ++k) {
    double mx = 0, sum = 0;
    for (const int* l = c.begin(k); l != c.end(k); ++l) {
      const double x = (load[*l] + bytes) * invCap[*l];
      mx = std::max(mx, x);
      sum += x;
    }
    if (best.k < 0 || mx < best.max || (mx == best.max && sum < bestSum)) {
      best = {k, mx};
      bestSum = sum;
    }
  }
  return best;
}

// Flow indices by bytes, largest first; ties keep index order.
std::vector<size_t> largestFirst(const std::vector<Flow>& flows) {
  std::vector<size_t> order(flows.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return flows[a].bytes > flows[b].bytes; });
  return order;
}

Plan singlePath(const Topology& topo, const std::vector<Flow>& flows, const std::vector<int>& choice,
                const char* strategy) {
  std::vector<size_t> offsets(flows.size() + 1);
  std::iota(offsets.begin(), offsets.end(), size_t{0});
  std::vector<PathShare> shares(flows.size());
  for (size_t f = 0; f < flows.size(); ++f) shares[f] = {choice[f], 1.0};
  return Plan(topo, flows, std::move(offsets), std::move(shares), strategy);
}

// ---- ecmp ----------------------------------------------------------------------------------

// Switches hash a connection's 5-tuple onto one of its equal-cost paths; here (src, dst, seed)
// through SplitMix64 picks one candidate. Different seeds stand for different source ports, i.e.
// the spread of outcomes ECMP gives the same collective.
Plan ecmp(const Topology& topo, const std::vector<Flow>& flows, uint64_t seed) {
  const uint64_t key = mix64(seed ^ 0x2545f4914f6cdd1dULL);
  std::vector<int> choice(flows.size());
  for (size_t f = 0; f < flows.size(); ++f) {
    const Flow& flow = flows[f];
    const int n = topo.pathCount(flow.src, flow.dst);
    EFCOMM_CHECK(n > 0, "plan.plan: flow ", f, " (", flow.src, " -> ", flow.dst,
                 ") has no usable path: the endpoints are unreachable (failed links?)");
    const uint64_t h = mix64(key ^ (static_cast<uint64_t>(static_cast<uint32_t>(flow.src)) << 32 |
                                    static_cast<uint32_t>(flow.dst)));
    choice[f] = static_cast<int>(h % static_cast<uint64_t>(n));
  }
  return singlePath(topo, flows, choice, "ecmp");
}

// ---- balanced ------------------------------------------------------------------------------

// C4P, the traffic planner of C4: collective flows are few, large and known in advance, so each
// gets the path that is least loaded when it is placed, largest flows first (LPT order). Greedy
// placement can leave a hot link, so improvement passes follow: every flow crossing a link at the
// maximum congestion M moves to a candidate whose links all stay below M. Where every such
// candidate is too full somewhere, an ejection chain makes room: the flow takes a candidate with
// exactly one too-full link, a flow g on that link is ejected and itself moved below M the same
// way, and so on - Kempe chains, the alternating paths of Konig's edge recoloring, which single
// moves cannot find when every spine is taken at one end or the other. An ejected flow tries
// first the candidates through the switch its ejector left (the two colors of the alternating
// path), so a depth-first search runs straight down the chain. A chain never ejects a flow it is
// already moving, is at most kDepth flows long and spends at most kAttempt ejections; a pass at
// most kPassEjections, the run kEjections (bounds on time where M cannot fall). A chain is kept
// only when it ends with every flow below M. A move takes load off a hot link and makes no new
// one, so the links at M fall with every move and M with every round; the passes end when no
// move helps, when M reaches a lower bound on single-path plans (the cut bound, or a flow alone
// on its widest candidate), or after kMaxPasses.
class Balancer {
 public:
  Balancer(const Topology& topo, const std::vector<Flow>& flows)
      : topo_(topo),
        flows_(flows),
        invCap_(inverseCapacities(topo)),
        load_(invCap_.size(), 0),
        choice_(flows.size()),
        inChain_(flows.size(), 0),
        movedOnto_(invCap_.size()) {
    for (int d = 0; d <= kDepth; ++d) cands_.emplace_back(topo);
    for (const Node& n : topo.nodes()) tier_.push_back(detail::tierOf(n.kind));
  }

  std::vector<int> run(const std::vector<size_t>& order) {
    Candidates& c = cands_[0];
    double floor = detail::cutBound(topo_, flows_);
    for (const size_t f : order) {
      const Flow& flow = flows_[f];
      c.load(flow, f);
      const Pick p = leastCongested(c, load_, invCap_, flow.bytes);
      choice_[f] = p.k;
      addLoad(load_, c.begin(p.k), c.end(p.k), flow.bytes);
      floor = std::max(floor, flow.bytes * narrowestInverse(c));
    }
    std::vector<int> path;
    size_t left = kEjections;  // over all passes
    for (int pass = 0; pass < kMaxPasses; ++pass) {
      const double worst = maxLoad(load_, invCap_);
      if (worst <= floor * (1 + kExact)) break;  // no single-path plan does better
      hot_ = worst * (1 - kHot);
      onLink_.clear();
      for (std::vector<size_t>& m : movedOnto_) m.clear();
      // Ejections: a bound on time where M cannot fall.
      ejections_ = std::min<size_t>(kPassEjections, left);
      const size_t budget = ejections_;
      int moves = 0;
      for (const size_t f : order) {
        const Flow& flow = flows_[f];
        if (flow.bytes <= 0) continue;
        topo_.path(flow.src, flow.dst, choice_[f], path);
        if (std::none_of(path.begin(), path.end(), [&](int l) { return isHot(l, 0); })) continue;
        addLoad(load_, path.data(), path.data() + path.size(), -flow.bytes);
        attempt_ = std::min<size_t>(ejections_, kAttempt);
        if (move(f, 0, -1)) {
          ++moves;
        } else {
          addLoad(load_, path.data(), path.data() + path.size(), flow.bytes);
        }
      }
      left -= budget - ejections_;
      if (moves == 0) break;
    }
    return choice_;
  }

 private:
  static constexpr int kMaxPasses = 32;
  static constexpr int kDepth = 32;
  static constexpr size_t kAttempt = 256;
  static constexpr size_t kPassEjections = 1 << 16;
  static constexpr size_t kEjections = 1 << 18;

  bool isHot(int l, double extra) const { return (load_[l] + extra) * invCap_[l] >= hot_; }

  // 1 / the capacity of the widest candidate's narrowest link (0 for the empty in-host path).
  double narrowestInverse(const Candidates& c) const {
    double best = std::numeric_limits<double>::infinity();
    for (int k = 0; k < c.size(); ++k) {
      double narrowest = 0;
      for (const int* l = c.begin(k); l != c.end(k); ++l) narrowest = std::max(narrowest, invCap_[*l]);
      best = std::min(best, narrowest);
    }
    return c.size() > 0 ? best : 0;
  }

  // Places flow f (off the loads) on a candidate below the hot level, ejecting flows up to
  // kDepth - depth levels; on success the loads and choices hold the new placement. Candidates
  // through `vacated` (the top switch of the path the ejecting flow left) go first: there the
  // ejecting flow made room, and following them is Konig's alternating path, two switches taking
  // turns, straight to its end.
  bool move(size_t f, int depth, int vacated) {
    const Flow& flow = flows_[f];
    Candidates& c = cands_[depth];
    c.load(flow, f);
    const Pick p = leastCongested(c, load_, invCap_, flow.bytes);
    if (p.max < hot_ && p.k != choice_[f]) {
      place(f, c, p.k);
      return true;
    }
    if (depth == kDepth || attempt_ == 0) return false;
    if (onLink_.empty()) indexFlows();
    const int previous = choice_[f];
    const int top = topSwitch(c.begin(previous), c.end(previous));
    inChain_[f] = 1;
    for (int round = vacated < 0 ? 1 : 0; round < 2; ++round) {
      for (int k = 0; k < c.size() && attempt_ > 0; ++k) {
        if (k == previous || (topSwitch(c.begin(k), c.end(k)) == vacated) != (round == 0)) continue;
        if (eject(f, depth, k, top)) {
          inChain_[f] = 0;
          return true;
        }
      }
    }
    inChain_[f] = 0;
    return false;
  }

  // Flow f onto candidate k of cands_[depth], a flow crossing all its too-full links ejected and
  // moved on.
  bool eject(size_t f, int depth, int k, int top) {
    const Flow& flow = flows_[f];
    const Candidates& c = cands_[depth];
    // Exactly one link too full (a flow crossing two of them would rarely make room on both, and
    // trying it costs more chains than it finds).
    int blocking = -1, count = 0;
    for (const int* l = c.begin(k); l != c.end(k); ++l) {
      if (isHot(*l, flow.bytes)) blocking = *l, ++count;
    }
    if (count != 1) return false;
    const int previous = choice_[f];
    addLoad(load_, c.begin(k), c.end(k), flow.bytes);
    choice_[f] = k;
    const size_t indexed = linkOff_[blocking + 1] - linkOff_[blocking];
    const size_t extra = movedOnto_[blocking].size();
    for (size_t i = 0; i < indexed + extra && attempt_ > 0; ++i) {
      const size_t g = i < indexed ? onLink_[linkOff_[blocking] + i] : movedOnto_[blocking][i - indexed];
      const Flow& other = flows_[g];
      if (inChain_[g] || other.bytes <= 0) continue;
      std::vector<int>& at = path_[depth];
      topo_.path(other.src, other.dst, choice_[g], at);
      if (std::find(at.begin(), at.end(), blocking) == at.end()) continue;  // moved since indexed
      addLoad(load_, at.data(), at.data() + at.size(), -other.bytes);
      if (!isHot(blocking, 0)) {
        --attempt_;
        --ejections_;
        if (move(g, depth + 1, top)) {
          noteMoved(f, c, k);
          return true;
        }
      }
      addLoad(load_, at.data(), at.data() + at.size(), other.bytes);
    }
    choice_[f] = previous;
    addLoad(load_, c.begin(k), c.end(k), -flow.bytes);
    return false;
  }

  // The switch of the highest tier on a path (a spine or core; -1 for the in-host path).
  int topSwitch(const int* begin, const int* end) const {
    int top = -1;
    for (const int* l = begin; l != end; ++l) {
      const int n = topo_.links()[*l].to;
      if (top < 0 || tier_[n] > tier_[top]) top = n;
    }
    return top;
  }

  void place(size_t f, const Candidates& c, int k) {
    choice_[f] = k;
    addLoad(load_, c.begin(k), c.end(k), flows_[f].bytes);
    noteMoved(f, c, k);
  }

  // Flows moved onto a link after the index was built are listed beside it.
  void noteMoved(size_t f, const Candidates& c, int k) {
    if (onLink_.empty()) return;  // the index, when built, sees the move
    for (const int* l = c.begin(k); l != c.end(k); ++l) movedOnto_[*l].push_back(f);
  }

  // The flows on every link (CSR), as placed when first needed in a pass.
  void indexFlows() {
    linkOff_.assign(invCap_.size() + 1, 0);
    std::vector<int> path;
    for (size_t f = 0; f < flows_.size(); ++f) {
      topo_.path(flows_[f].src, flows_[f].dst, choice_[f], path);
      for (const int l : path) ++linkOff_[l + 1];
    }
    for (size_t l = 0; l < invCap_.size(); ++l) linkOff_[l + 1] += linkOff_[l];
    onLink_.resize(linkOff_.back());
    std::vector<size_t> fill(linkOff_.begin(), linkOff_.end() - 1);
    for (size_t f = 0; f < flows_.size(); ++f) {
      topo_.path(flows_[f].src, flows_[f].dst, choice_[f], path);
      for (const int l : path) onLink_[fill[l]++] = f;
    }
  }

  const Topology& topo_;
  const std::vector<Flow>& flows_;
  const std::vector<double> invCap_;
  std::vector<double> load_;
  std::vector<int> choice_;
  std::vector<char> inChain_;  // flows of the chain being built
  std::vector<int> tier_;      // per node
  std::vector<Candidates> cands_;  // one per depth
  std::vector<int> path_[kDepth + 1];
  std::vector<size_t> linkOff_, onLink_;
  std::vector<std::vector<size_t>> movedOnto_;  // per link, flows moved onto it since indexing
  double hot_ = 0;
  size_t ejections_ = 0;  // left in this pass
  size_t attempt_ = 0;    // left to the chain being built
};

std::vector<int> balancedChoice(const Topology& topo, const std::vector<Flow>& flows,
                                const std::vector<size_t>& order) {
  return Balancer(topo, flows).run(order);
}

Plan balanced(const Topology& topo, const std::vector<Flow>& flows) {
  return singlePath(topo, flows, balancedChoice(topo, flows, largestFirst(flows)), "balanced");
}

// ---- split: exact construction on uniform leaf-spine fabrics --------------------------------

// A leaf-spine fabric (any number of planes) without failures whose endpoint links share one
// capacity and whose leaf-spine links another: there the cut bound is the splittable optimum and
// "Challenging the Need for Packet Spraying" (Ethereal) reaches it with minimal splitting.
struct UniformLeafSpine {
  int planes = 0, spines = 0;  // spines per plane
  std::vector<int> slotOf;     // spine node -> plane x spines + its index in the plane, else -1
  double upCap = 0;
};

bool uniformLeafSpine(const Topology& topo, const detail::LeafClasses& classes, UniformLeafSpine& out) {
  if (!classes.consistent || classes.count() == 0) return false;
  if (std::any_of(classes.ofEndpoint.begin(), classes.ofEndpoint.end(), [](int c) { return c < 0; })) return false;
  const std::vector<Node>& nodes = topo.nodes();
  std::vector<std::vector<int>> byPlane;
  for (size_t n = 0; n < nodes.size(); ++n) {
    const NodeKind k = nodes[n].kind;
    if (k == NodeKind::kAgg || k == NodeKind::kCore) return false;
    if (k != NodeKind::kSpine) continue;
    if (nodes[n].plane < 0) return false;
    if (static_cast<size_t>(nodes[n].plane) >= byPlane.size()) byPlane.resize(nodes[n].plane + 1);
    byPlane[nodes[n].plane].push_back(static_cast<int>(n));
  }
  if (byPlane.empty() || byPlane[0].empty()) return false;
  out.planes = static_cast<int>(byPlane.size());
  out.spines = static_cast<int>(byPlane[0].size());
  out.slotOf.assign(nodes.size(), -1);
  for (int p = 0; p < out.planes; ++p) {
    if (static_cast<int>(byPlane[p].size()) != out.spines) return false;
    for (int s = 0; s < out.spines; ++s) out.slotOf[byPlane[p][s]] = p * out.spines + s;
  }
  double hostCap = -1, upCap = -1;
  // The full mesh too: only endpoint-leaf and leaf-spine cables (of one plane), and every leaf
  // cabled to every spine of its plane both ways; a custom fabric that lacks one (or adds a
  // leaf-leaf or NIC-NIC cable) is no uniform leaf-spine, and its cut bound is no optimum.
  std::set<std::pair<int, int>> upDown;  // (leaf, spine) cabled up, (spine, leaf) down
  for (const Link& l : topo.links()) {
    if (l.failed) return false;
    const NodeKind a = nodes[l.from].kind, b = nodes[l.to].kind;
    const bool host = a == NodeKind::kEndpoint || b == NodeKind::kEndpoint;
    const bool hostLeaf = host && (a == NodeKind::kLeaf || b == NodeKind::kLeaf);
    const bool leafSpine = ((a == NodeKind::kLeaf && b == NodeKind::kSpine) ||
                            (a == NodeKind::kSpine && b == NodeKind::kLeaf)) &&
                           nodes[l.from].plane == nodes[l.to].plane;
    if (!hostLeaf && !leafSpine) return false;
    if (leafSpine) upDown.insert({l.from, l.to});
    double& cap = host ? hostCap : upCap;
    if (cap < 0) cap = l.capacity;
    if (cap != l.capacity) return false;
  }
  size_t leaves = 0;
  for (const Node& n : nodes) leaves += n.kind == NodeKind::kLeaf;
  if (upDown.size() != 2 * leaves * static_cast<size_t>(out.spines)) return false;
  out.upCap = upCap;
  return upCap > 0;
}

// The inter-leaf traffic as a bipartite graph (source leaf -> destination leaf, edge weight: the
// pair's bytes) decomposed into weighted perfect matchings laid end to end on a line [0, D), D the
// largest weighted degree: at any point of the line every leaf sends and receives at most one
// pair's traffic. This is the weighted form of Konig's edge-coloring theorem (for equal flows in
// units of one flow, the matchings are D colors), computed as a Birkhoff-von Neumann
// decomposition: pad the graph to D-regular with dummy weight, then peel perfect matchings (Hall:
// a regular bipartite graph has one), each as thick as its thinnest edge. A peel empties an edge,
// so there are at most as many matchings as edges; each is repaired from the last by augmenting
// paths (Kuhn) for the leaves whose edge ran out. The cost depends on leaf pairs, not flows.
class MatchingLine {
 public:
  struct Edge {
    int u, v;
    double real, total;  // weight of real traffic, and with dummy weight
  };
  struct Range {
    double start, length;
  };

  // Returns false if floating point broke the decomposition (never for integer weights).
  bool build(int n, std::vector<Edge> edges) {
    n_ = n;
    edges_ = std::move(edges);
    std::vector<double> outDeg(n, 0), inDeg(n, 0);
    for (const Edge& e : edges_) {
      outDeg[e.u] += e.real;
      inDeg[e.v] += e.real;
    }
    degree_ = std::max(*std::max_element(outDeg.begin(), outDeg.end()), *std::max_element(inDeg.begin(), inDeg.end()));
    if (degree_ <= 0) return true;
    tol_ = degree_ * 1e-12;
    padToRegular(outDeg, inDeg);
    return peel();
  }

  double degree() const { return degree_; }
  // Edge e's ranges of the line, ascending.
  const Range* begin(size_t e) const { return ranges_.data() + rangeOff_[e]; }
  const Range* end(size_t e) const { return ranges_.data() + rangeOff_[e + 1]; }

 private:
  static uint64_t key(int u, int v) { return static_cast<uint64_t>(u) << 32 | static_cast<uint32_t>(v); }

  // Both sides miss n x D - (total weight); pair the deficits in order (a dummy on an existing
  // edge thickens it).
  void padToRegular(std::vector<double>& outDeg, std::vector<double>& inDeg) {
    std::unordered_map<uint64_t, size_t> index;
    for (size_t e = 0; e < edges_.size(); ++e) index[key(edges_[e].u, edges_[e].v)] = e;
    int u = 0, v = 0;
    while (true) {
      while (u < n_ && degree_ - outDeg[u] <= tol_) ++u;
      while (v < n_ && degree_ - inDeg[v] <= tol_) ++v;
      if (u == n_ || v == n_) break;
      const double m = std::min(degree_ - outDeg[u], degree_ - inDeg[v]);
      const auto [it, added] = index.emplace(key(u, v), edges_.size());
      if (added) edges_.push_back({u, v, 0, 0});
      edges_[it->second].total += m;
      outDeg[u] += m;
      inDeg[v] += m;
    }
  }

  bool augment(int u) {
    for (size_t k = adjOff_[u]; k < adjOff_[u + 1]; ++k) {
      const int e = adj_[k];
      const int v = edges_[e].v;
      if (weight_[e] <= 0 || seen_[v] == stamp_) continue;
      seen_[v] = stamp_;
      if (matchR_[v] < 0 || augment(edges_[matchR_[v]].u)) {
        matchL_[u] = e;
        matchR_[v] = e;
        return true;
      }
    }
    return false;
  }

  bool rematch(const std::vector<int>& free) {
    for (const int u : free) {
      ++stamp_;
      if (!augment(u)) return false;
    }
    return true;
  }

  bool peel() {
    adjOff_.assign(n_ + 1, 0);
    for (const Edge& e : edges_) ++adjOff_[e.u + 1];
    for (int u = 0; u < n_; ++u) adjOff_[u + 1] += adjOff_[u];
    adj_.resize(edges_.size());
    std::vector<size_t> fill(adjOff_.begin(), adjOff_.end() - 1);
    for (size_t e = 0; e < edges_.size(); ++e) adj_[fill[edges_[e].u]++] = static_cast<int>(e);
    weight_.resize(edges_.size());
    for (size_t e = 0; e < edges_.size(); ++e) weight_[e] = edges_[e].total;
    matchL_.assign(n_, -1);
    matchR_.assign(n_, -1);
    seen_.assign(n_, 0);
    std::vector<int> free(n_);
    std::iota(free.begin(), free.end(), 0);
    if (!rematch(free)) return false;

    // Matching i: edges members[i x n .. (i + 1) x n), thickness thick[i].
    std::vector<int> members;
    std::vector<double> thick;
    for (double done = 0; degree_ - done > tol_;) {
      double w = std::numeric_limits<double>::infinity();
      for (int u = 0; u < n_; ++u) w = std::min(w, weight_[matchL_[u]]);
      members.insert(members.end(), matchL_.begin(), matchL_.end());
      thick.push_back(w);
      done += w;
      free.clear();
      for (int u = 0; u < n_; ++u) {
        const int e = matchL_[u];
        if ((weight_[e] -= w) > tol_) continue;
        weight_[e] = 0;
        matchL_[u] = -1;
        matchR_[edges_[e].v] = -1;
        free.push_back(u);
      }
      // Rounding of non-integer weights can starve a leaf a hair before the end: that is the end.
      if (degree_ - done > tol_ && !rematch(free)) {
        if (degree_ - done > degree_ * 1e-9) return false;
        break;
      }
    }

    // Matchings rich in dummy weight go last: real traffic then fills the line from the start and
    // a loose capacity leaves the tail (mostly dummy) unused.
    const size_t count = thick.size();
    std::vector<int> dummies(count, 0);
    for (size_t i = 0; i < count; ++i) {
      for (int u = 0; u < n_; ++u) {
        const Edge& e = edges_[members[i * n_ + u]];
        dummies[i] += e.total > e.real;
      }
    }
    std::vector<size_t> order(count);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return dummies[a] < dummies[b]; });
    rangeOff_.assign(edges_.size() + 1, 0);
    for (size_t i = 0; i < count; ++i) {
      for (int u = 0; u < n_; ++u) ++rangeOff_[members[i * n_ + u] + 1];
    }
    for (size_t e = 0; e < edges_.size(); ++e) rangeOff_[e + 1] += rangeOff_[e];
    ranges_.resize(rangeOff_.back());
    std::vector<size_t> at(rangeOff_.begin(), rangeOff_.end() - 1);
    double start = 0;
    for (const size_t i : order) {
      for (int u = 0; u < n_; ++u) ranges_[at[members[i * n_ + u]]++] = {start, thick[i]};
      start += thick[i];
    }
    return true;
  }

  int n_ = 0;
  std::vector<Edge> edges_;
  double degree_ = 0, tol_ = 0;
  std::vector<size_t> adjOff_;
  std::vector<int> adj_, matchL_, matchR_;
  std::vector<double> weight_;
  std::vector<unsigned> seen_;
  unsigned stamp_ = 0;
  std::vector<size_t> rangeOff_;
  std::vector<Range> ranges_;
};

// Ethereal's construction, for any flow sizes and placement, and several planes. The line of
// MatchingLine is cut into consecutive intervals, one per spine, of length l = the most a leaf
// link may carry at the bound (in the line's units), at least D / spines: a leaf's traffic in an
// interval is at most l, so every uplink and downlink stays within the bound, and a flow is split
// only where its stretch of the line crosses an interval boundary. For equal flows the line is
// counted in flows and l is ceil(D / spines) whole flows where the bound leaves room for that, so
// nothing is split when the spines divide D (or the bound is loose). The endpoint links carry
// what they must. With several planes an endpoint has one link per plane: first the intervals go to the
// spines of alternating planes with whole pieces, exact whenever the endpoints' links stay
// balanced; otherwise every flow is split evenly over the planes (its endpoints' links then carry
// exactly 1/planes of their bytes) and the line is cut over each plane's spines. Flows inside a
// leaf take their leaf in every plane evenly; flows inside a host take the empty path.
// Returns false when the fabric is not of this kind or the path enumeration is not as expected.
bool exactSplit(const Topology& topo, const std::vector<Flow>& flows, double target, Plan& out) {
  const detail::LeafClasses classes = detail::leafClasses(topo);
  UniformLeafSpine shape;
  if (!uniformLeafSpine(topo, classes, shape)) return false;
  const int planes = shape.planes, allSlots = shape.planes * shape.spines;
  const std::vector<Link>& links = topo.links();
  const size_t n = flows.size();

  // Leaf pair of every inter-leaf flow; -1: whole on candidate 0, -2: even over the planes.
  std::unordered_map<uint64_t, int> pairIndex;
  std::vector<int> pairOf(n);
  std::vector<MatchingLine::Edge> edges;
  std::vector<int> pairSlots;  // pair x allSlots + slot -> candidate index
  std::vector<int> path;
  double size = 0;
  bool equal = true;
  for (size_t f = 0; f < n; ++f) {
    const Flow& flow = flows[f];
    const int count = topo.pathCount(flow.src, flow.dst);
    if (count == 0) return false;
    const int cs = classes.ofEndpoint[flow.src], cd = classes.ofEndpoint[flow.dst];
    if (flow.bytes <= 0 || topo.hostOf(flow.src) == topo.hostOf(flow.dst)) {
      pairOf[f] = -1;
      continue;
    }
    if (cs == cd) {
      if (count != planes) return false;
      pairOf[f] = planes > 1 ? -2 : -1;
      continue;
    }
    if (size == 0) size = flow.bytes;
    equal = equal && flow.bytes == size;
    const uint64_t key = static_cast<uint64_t>(cs) << 32 | static_cast<uint32_t>(cd);
    const auto [it, added] = pairIndex.emplace(key, static_cast<int>(edges.size()));
    pairOf[f] = it->second;
    if (!added) continue;
    edges.push_back({cs, cd, 0, 0});
    // Candidate of each (plane, spine): by the header's contract, the same for every flow of
    // this leaf pair.
    if (count != allSlots) return false;
    pairSlots.resize(pairSlots.size() + allSlots, -1);
    int* slots = pairSlots.data() + pairSlots.size() - allSlots;
    for (int p = 0; p < count; ++p) {
      topo.path(flow.src, flow.dst, p, path);
      if (path.size() != 4) return false;
      const int slot = shape.slotOf[links[path[1]].to];
      if (slot < 0 || slots[slot] >= 0) return false;
      slots[slot] = p;
    }
  }
  // The line's unit: one flow when all are equal (integer weights: the decomposition is exact).
  const double unit = equal && size > 0 ? size : 1;
  std::vector<double> weight(n, 0);
  for (size_t f = 0; f < n; ++f) {
    if (pairOf[f] < 0) continue;
    weight[f] = equal ? 1 : flows[f].bytes;
    edges[pairOf[f]].real += weight[f];
  }
  for (MatchingLine::Edge& e : edges) e.total = e.real;
  const size_t pairs = edges.size();
  MatchingLine line;
  if (!edges.empty() && !line.build(classes.count(), std::move(edges))) return false;
  const double degree = line.degree();

  // One attempt: the line over `slots` intervals, interval i on physical slot slotAt(i, group)
  // for each of `groups` plane groups, each carrying 1/groups of the flow.
  auto attempt = [&](int slots, int groups, auto slotAt, Plan& result) {
    const double share = 1.0 / groups;
    const double room = degree > 0 ? target * shape.upCap / (unit * share) : 1;  // per interval
    // Equal flows: whole flows, as evenly over the spines as they go, where the room allows.
    const double even = std::ceil(degree / slots - 1e-9);
    const double length = equal && even <= std::floor(room * (1 + 1e-11)) ? even : std::max(room, degree / slots);
    std::vector<size_t> rangeAt(pairs, 0);
    std::vector<double> usedInRange(pairs, 0);
    std::vector<std::pair<int, double>> pieces;  // (interval, weight) of one flow
    std::vector<size_t> offsets{0};
    std::vector<PathShare> shares;
    shares.reserve(n);
    auto cut = [&](double from, double to) {
      for (int i = std::min(slots - 1, static_cast<int>(from / length)); from < to; ++i) {
        const double stop = i >= slots - 1 ? to : std::min(to, (i + 1) * length);
        if (stop <= from) continue;
        auto it = std::find_if(pieces.begin(), pieces.end(), [&](const auto& p) { return p.first == i; });
        if (it == pieces.end()) {
          pieces.push_back({i, stop - from});
        } else {
          it->second += stop - from;
        }
        from = stop;
      }
    };
    for (size_t f = 0; f < n; ++f) {
      const int e = pairOf[f];
      if (e == -1) {
        shares.push_back({0, 1.0});
      } else if (e == -2) {
        for (int p = 0; p < planes; ++p) shares.push_back({p, 1.0 / planes});
      } else {
        // The flow's stretch of its pair's ranges, in flow order.
        pieces.clear();
        double need = weight[f];
        const MatchingLine::Range* ranges = line.begin(e);
        const size_t count = static_cast<size_t>(line.end(e) - ranges);
        while (need > 0 && rangeAt[e] < count) {
          const MatchingLine::Range& r = ranges[rangeAt[e]];
          const double take = std::min(need, r.length - usedInRange[e]);
          cut(r.start + usedInRange[e], r.start + usedInRange[e] + take);
          need -= take;
          usedInRange[e] += take;
          if (usedInRange[e] >= r.length) {
            ++rangeAt[e];
            usedInRange[e] = 0;
          }
        }
        if (pieces.empty()) return false;
        // Fractions of what was covered (all of the flow, but for rounding of non-integer weights).
        double covered = 0;
        for (const auto& p : pieces) covered += p.second;
        const int* cand = pairSlots.data() + static_cast<size_t>(e) * allSlots;
        for (const auto& p : pieces) {
          for (int g = 0; g < groups; ++g) shares.push_back({cand[slotAt(p.first, g)], p.second / covered * share});
        }
      }
      offsets.push_back(shares.size());
    }
    result = Plan(topo, flows, std::move(offsets), std::move(shares), "split");
    return result.maxCongestion() <= target * (1 + kExact);
  };
  const int spines = shape.spines;
  auto alternating = [&](int i, int) { return (i % planes) * spines + i / planes; };
  auto perPlane = [&](int i, int g) { return g * spines + i; };
  if (attempt(allSlots, 1, alternating, out)) return true;
  return planes > 1 && attempt(spines, planes, perPlane, out);
}

// ---- split: any fabric ---------------------------------------------------------------------

// Water-filling to a target congestion T: flows in order (fewest candidates first, then largest)
// fill the candidate with the most room below T (room: the least of T x capacity - load over its
// links) and spill into the next one when it fills. A piece ends only where a link fills to T, so
// a run splits at most one flow per link: at most flows + links sub-flows, the size of a basic
// solution of the splittable LP (Ethereal's minimal splitting). Pieces under kMinPiece of a flow
// are not worth a sub-flow; when nothing has room, the rest takes the least congested candidate.
struct Filled {
  std::vector<size_t> offsets;
  std::vector<PathShare> shares;
  double worst = 0;
  std::vector<size_t> spilled;  // flows that found no room below T
};

Filled fillTo(const Topology& topo, const std::vector<Flow>& flows, const std::vector<size_t>& order, double target) {
  constexpr double kMinPiece = 1e-6;
  Candidates cands(topo);
  const std::vector<double> invCap = inverseCapacities(topo);
  const std::vector<Link>& links = topo.links();
  std::vector<double> load(links.size(), 0);
  // Pieces in processing order, re-sorted into flow order at the end.
  std::vector<size_t> start(flows.size());
  std::vector<std::pair<int, double>> pieces;  // (candidate id, bytes)
  std::vector<size_t> spilled;
  for (const size_t f : order) {
    const Flow& flow = flows[f];
    start[f] = pieces.size();
    cands.load(flow, f);
    double rest = flow.bytes;
    if (rest <= 0) {
      pieces.push_back({0, 0});
      continue;
    }
    auto place = [&](int k, double bytes) {
      addLoad(load, cands.begin(k), cands.end(k), bytes);
      for (size_t i = start[f]; i < pieces.size(); ++i) {
        if (pieces[i].first == k) {
          pieces[i].second += bytes;
          return;
        }
      }
      pieces.push_back({k, bytes});
    };
    while (rest > 0) {
      int best = -1;
      double room = 0;
      for (int k = 0; k < cands.size(); ++k) {
        double r = std::numeric_limits<double>::infinity();
        for (const int* l = cands.begin(k); l != cands.end(k); ++l) {
          r = std::min(r, target * links[*l].capacity - load[*l]);
        }
        if (r > room) {
          room = r;
          best = k;
        }
      }
      if (room >= rest * (1 - kExact)) {
        place(best, rest);
        break;
      }
      if (room <= kMinPiece * flow.bytes) {
        place(leastCongested(cands, load, invCap, rest).k, rest);
        spilled.push_back(f);
        break;
      }
      place(best, room);
      rest -= room;
    }
  }
  Filled out;
  out.offsets.reserve(flows.size() + 1);
  out.offsets.push_back(0);
  // Pieces of flow f run from start[f] to the start of the flow processed after it.
  std::vector<size_t> stop(flows.size());
  for (size_t i = 0; i < order.size(); ++i) stop[order[i]] = i + 1 < order.size() ? start[order[i + 1]] : pieces.size();
  for (size_t f = 0; f < flows.size(); ++f) {
    const double bytes = flows[f].bytes;
    double sum = 0;
    for (size_t i = start[f]; i < stop[f]; ++i) {
      const bool last = i + 1 == stop[f];
      const double fraction = bytes > 0 ? (last ? 1 - sum : pieces[i].second / bytes) : 1.0;
      sum += fraction;
      out.shares.push_back({pieces[i].first, fraction});
    }
    out.offsets.push_back(out.shares.size());
  }
  out.worst = maxLoad(load, invCap);
  out.spilled = std::move(spilled);
  return out;
}

// Every flow's candidates, flat: flow f's are [candOff[f], candOff[f + 1]), candidate c's links
// are candLinks[linkOff[c], linkOff[c + 1]).
struct FlatCandidates {
  std::vector<size_t> candOff{0}, linkOff{0};
  std::vector<int> candLinks;
  double perPhase = 0;  // link visits of one pass over every flow's candidates

  FlatCandidates(const Topology& topo, const std::vector<Flow>& flows) {
    Candidates cands(topo);
    for (size_t f = 0; f < flows.size(); ++f) {
      cands.load(flows[f], f);
      for (int k = 0; k < cands.size(); ++k) {
        candLinks.insert(candLinks.end(), cands.begin(k), cands.end(k));
        linkOff.push_back(candLinks.size());
      }
      candOff.push_back(linkOff.size() - 1);
      if (flows[f].bytes > 0) perPhase += static_cast<double>(cands.end(cands.size() - 1) - cands.begin(0));
    }
  }
};

// Garg and Konemann's multiplicative-weights algorithm for maximum concurrent flow ("Faster and
// simpler algorithms for multicommodity flow", 2007; Fleischer's phase order): every link has a
// length, initially delta / capacity; phase after phase each flow routes its demand (bytes / hi,
// hi the congestion of a known plan, so that the optimum is near 1) on its currently shortest
// candidate, and every link it crosses grows by (1 + eps x routed / capacity), until the
// capacity-weighted length reaches 1. The flows' routed amounts per candidate, normalized, are
// within (1 + O(eps)) of the splittable optimum. The lengths are the dual: with `dual`, before
// every phase the lower bound they certify (weak duality: a plan of congestion t has
// sum_f bytes_f dist(f) <= sum_l load_l length_l <= t sum_l capacity_l length_l, dist(f) the
// length of f's shortest candidate) is computed and the best kept, in seconds. Returns false when
// the instance would take more than about `budget` link visits.
bool gargKonemann(const Topology& topo, const std::vector<Flow>& flows, const FlatCandidates& fc, double hi,
                  double budget, std::vector<double>& routed, double* dual) {
  const std::vector<Link>& links = topo.links();
  const std::vector<size_t>& candOff = fc.candOff;
  const std::vector<size_t>& linkOff = fc.linkOff;
  const std::vector<int>& candLinks = fc.candLinks;
  size_t used = 0;
  std::vector<char> onPath(links.size(), 0);
  for (const int l : candLinks) used += onPath[l] ? 0 : (onPath[l] = 1);
  if (used == 0) return false;
  const double m = static_cast<double>(used);
  // The phases number about ln(m) / eps^2 (demands scaled so the optimum is near 1): the
  // smallest eps the budget affords (a phase costs two passes with the dual), not coarser than 0.1.
  const double eps = std::max(0.01, std::sqrt(std::log(m) * fc.perPhase * (dual ? 2 : 1) / budget));
  if (eps > 0.1) return false;
  const double delta = std::pow(m / (1 - eps), -1 / eps);
  std::vector<double> length(links.size(), 0);
  double total = 0;  // sum of capacity x length
  for (size_t l = 0; l < links.size(); ++l) {
    if (!onPath[l]) continue;
    length[l] = delta / links[l].capacity;
    total += delta;
  }
  // f's shortest candidate under the current lengths: its index and its narrowest link.
  auto shortest = [&](size_t f, double& len, double& narrowest) {
    size_t best = candOff[f];
    len = std::numeric_limits<double>::infinity();
    narrowest = 0;
    for (size_t c = candOff[f]; c < candOff[f + 1]; ++c) {
      double sum = 0, cap = std::numeric_limits<double>::infinity();
      for (size_t i = linkOff[c]; i < linkOff[c + 1]; ++i) {
        sum += length[candLinks[i]];
        cap = std::min(cap, links[candLinks[i]].capacity);
      }
      if (sum < len) {
        len = sum;
        best = c;
        narrowest = cap;
      }
    }
    return best;
  };
  routed.assign(linkOff.size() - 1, 0);
  if (dual) *dual = 0;
  while (total < 1) {
    if (dual) {
      double paths = 0, len = 0, narrowest = 0;
      for (size_t f = 0; f < flows.size(); ++f) {
        if (flows[f].bytes <= 0) continue;
        shortest(f, len, narrowest);
        paths += flows[f].bytes * len;
      }
      *dual = std::max(*dual, paths / total);
    }
    for (size_t f = 0; f < flows.size() && total < 1; ++f) {
      // Demands in units of the best congestion known: the optimum routes them with room to spare.
      double demand = flows[f].bytes / hi;
      while (demand > 0 && total < 1) {
        double len = 0, narrowest = 0;
        const size_t best = shortest(f, len, narrowest);
        if (linkOff[best] == linkOff[best + 1]) break;  // in-host: no link
        const double u = std::min(demand, narrowest);
        routed[best] += u;
        demand -= u;
        for (size_t i = linkOff[best]; i < linkOff[best + 1]; ++i) {
          const int l = candLinks[i];
          total += eps * u * length[l];
          length[l] *= 1 + eps * u / links[l].capacity;
        }
      }
    }
  }
  return true;
}

// The fractional optimum (gargKonemann), within (1 + O(eps)) of the splittable optimum, where
// greedy filling can strand capacity (two flows each needing the room the other took). Then
// pieces are merged where the others have room. Returns false when the instance would take more
// than about `budget` link visits.
bool concurrentFlow(const Topology& topo, const std::vector<Flow>& flows, double hi, double budget, Filled& out) {
  const std::vector<Link>& links = topo.links();
  const FlatCandidates fc(topo, flows);
  const std::vector<size_t>& candOff = fc.candOff;
  const std::vector<size_t>& linkOff = fc.linkOff;
  const std::vector<int>& candLinks = fc.candLinks;
  auto add = [&](std::vector<double>& load, size_t c, double bytes) {
    addLoad(load, candLinks.data() + linkOff[c], candLinks.data() + linkOff[c + 1], bytes);
  };
  std::vector<double> routed;
  if (!gargKonemann(topo, flows, fc, hi, budget, routed, nullptr)) return false;

  // Routed amounts become bytes (flows the phases never reached, none in practice, take their
  // first candidate).
  std::vector<double> load(links.size(), 0);
  for (size_t f = 0; f < flows.size(); ++f) {
    double sum = 0;
    for (size_t c = candOff[f]; c < candOff[f + 1]; ++c) sum += routed[c];
    for (size_t c = candOff[f]; c < candOff[f + 1]; ++c) {
      routed[c] = sum > 0 ? routed[c] / sum * flows[f].bytes : (c == candOff[f] ? flows[f].bytes : 0);
      add(load, c, routed[c]);
    }
  }
  const std::vector<double> invCap = inverseCapacities(topo);
  // Few pieces: a flow's smallest piece moves onto its other pieces where their links have room
  // below the congestion reached (+0.01%), smallest first, while that works.
  const double limit = maxLoad(load, invCap) * 1.0001;
  std::vector<size_t> pieces;
  for (size_t f = 0; f < flows.size(); ++f) {
    pieces.clear();
    for (size_t c = candOff[f]; c < candOff[f + 1]; ++c) {
      if (routed[c] > 0) pieces.push_back(c);
    }
    std::sort(pieces.begin(), pieces.end(), [&](size_t a, size_t b) { return routed[a] < routed[b]; });
    for (size_t i = 0; i + 1 < pieces.size(); ++i) {
      const size_t p = pieces[i];
      const double bytes = routed[p];
      add(load, p, -bytes);
      double need = bytes;
      std::vector<std::pair<size_t, double>> moved;
      for (size_t j = pieces.size(); j-- > i + 1 && need > 0;) {
        const size_t q = pieces[j];
        double room = std::numeric_limits<double>::infinity();
        for (size_t k = linkOff[q]; k < linkOff[q + 1]; ++k) {
          room = std::min(room, limit * links[candLinks[k]].capacity - load[candLinks[k]]);
        }
        const double take = std::min(need, room);
        if (take <= 0) continue;
        add(load, q, take);
        moved.push_back({q, take});
        need -= take;
      }
      if (need <= bytes * 1e-12) {
        for (const auto& [q, take] : moved) routed[q] += take;
        routed[p] = 0;
        continue;
      }
      for (const auto& [q, take] : moved) add(load, q, -take);
      add(load, p, bytes);
    }
  }
  out.offsets.assign(1, 0);
  out.shares.clear();
  for (size_t f = 0; f < flows.size(); ++f) {
    double sum = 0;
    for (size_t c = candOff[f]; c < candOff[f + 1]; ++c) sum += routed[c];
    for (size_t c = candOff[f]; c < candOff[f + 1]; ++c) {
      if (routed[c] > 0 || (sum <= 0 && c == candOff[f])) {
        out.shares.push_back({static_cast<int>(c - candOff[f]), sum > 0 ? routed[c] / sum : 1.0});
      }
    }
    out.offsets.push_back(out.shares.size());
  }
  out.worst = maxLoad(load, invCap);
  return true;
}

// The splittable optimum where no construction is known (failed or degraded links, Clos, custom
// fabrics): water-fill to a target T, bisected between the cut bound (where the search stops at
// once if the fill reaches it) and balanced's congestion; if that ends above the bound, the
// multiplicative-weights solution where the instance is small enough for it. Never worse than
// balanced.
Plan splitAny(const Topology& topo, const std::vector<Flow>& flows, double target) {
  const std::vector<size_t> bySize = largestFirst(flows);
  const std::vector<int> choice = balancedChoice(topo, flows, bySize);
  Plan best = singlePath(topo, flows, choice, "split");
  double hi = best.maxCongestion();
  if (hi <= target * (1 + kExact)) return best;

  std::vector<int> counts(flows.size());
  size_t work = 0;
  for (size_t f = 0; f < flows.size(); ++f) {
    counts[f] = topo.pathCount(flows[f].src, flows[f].dst);
    work += static_cast<size_t>(counts[f]);
  }
  std::vector<size_t> order = bySize;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return counts[a] < counts[b]; });
  // Each fill costs about `work` path evaluations: fewer bisection steps on huge instances.
  constexpr int kRounds = 4;
  const int steps = static_cast<int>(std::clamp<size_t>(size_t{50'000'000} / std::max<size_t>(work, 1), 2, 16));
  double lo = target, bestWorst = hi;  // a plan exists at hi; the fill failed at lo (or lo is the bound)
  Filled chosen;
  std::vector<char> first(flows.size());
  for (int step = 0; step < steps && hi > lo * (1 + 1e-4); ++step) {
    const double t = step == 0 ? lo : 0.5 * (lo + hi);
    // A flow that found no room goes first in the next round (negotiated order, as in
    // PathFinder's rip-up and reroute): the greedy strands capacity, not the fabric.
    std::vector<size_t> tried = order;
    bool reached = false;
    for (int round = 0; round < kRounds && !reached; ++round) {
      Filled fill = fillTo(topo, flows, tried, t);
      reached = fill.worst <= t * (1 + kExact);
      for (const size_t f : fill.spilled) first[f] = 1;
      if (fill.worst < bestWorst) {
        bestWorst = hi = fill.worst;
        chosen = std::move(fill);
      }
      std::stable_partition(tried.begin(), tried.end(), [&](size_t f) { return first[f] != 0; });
      std::fill(first.begin(), first.end(), 0);
    }
    if (!reached) lo = t;
  }
  // Short of the bound: the fill may have stranded capacity (or the bound is not tight); the
  // multiplicative-weights optimum decides.
  Filled fractional;
  if (bestWorst > target * (1 + kExact) && concurrentFlow(topo, flows, bestWorst, 2e8, fractional) &&
      fractional.worst < bestWorst) {
    bestWorst = fractional.worst;
    chosen = std::move(fractional);
  }
  if (chosen.offsets.empty()) return best;
  return Plan(topo, flows, std::move(chosen.offsets), std::move(chosen.shares), "split");
}

Plan split(const Topology& topo, const std::vector<Flow>& flows) {
  const double target = detail::cutBound(topo, flows);
  Plan exact;
  if (exactSplit(topo, flows, target, exact)) return exact;
  return splitAny(topo, flows, target);
}

// Link visits the dual of `bound` may take (about 0.1-0.3 s).
constexpr double kBoundBudget = 5e7;

}  // namespace

double bound(const Topology& topo, const std::vector<Flow>& flows) {
  const double cut = detail::cutBound(topo, flows);  // checks the flows
  // On a uniform leaf-spine fabric the cut bound is the splittable optimum. Elsewhere (failed or
  // degraded links, Clos, custom fabrics) it can be far below; the multiplicative weights' link
  // lengths certify a lower bound within (1 + O(eps)) of the optimum where the instance is small
  // enough, measured against a balanced plan (an upper bound: if it meets the cut, the cut is it).
  UniformLeafSpine uniform;
  if (cut <= 0 || uniformLeafSpine(topo, detail::leafClasses(topo), uniform)) return cut;
  double candidates = 0;
  for (const Flow& f : flows) {  // an unreachable flow: no plan exists, the cut bound stands
    if (f.bytes <= 0 || topo.hostOf(f.src) == topo.hostOf(f.dst)) continue;
    const int n = topo.pathCount(f.src, f.dst);
    if (n == 0) return cut;
    candidates += n;
  }
  // Too large for the budget (gargKonemann would refuse, see its eps; paths have ~4 links): the
  // cut bound, without building the candidates and a balanced plan first.
  if (std::log(static_cast<double>(topo.links().size())) * candidates * 4 * 2 > 0.01 * kBoundBudget) return cut;
  const double hi = singlePath(topo, flows, balancedChoice(topo, flows, largestFirst(flows)), "balanced")
                        .maxCongestion();
  if (hi <= cut * (1 + kExact)) return cut;
  std::vector<double> routed;
  double dual = 0;
  if (!gargKonemann(topo, flows, FlatCandidates(topo, flows), hi, kBoundBudget, routed, &dual)) return cut;
  return std::max(cut, dual * (1 - kExact));  // the dual's sums carry rounding: never above the optimum
}

Plan plan(const Topology& topo, const std::vector<Flow>& flows, const std::string& strategy, uint64_t seed) {
  detail::checkFlows(topo, flows, "plan.plan");
  if (strategy == "ecmp") return ecmp(topo, flows, seed);
  if (strategy == "balanced") return balanced(topo, flows);
  if (strategy == "split") return split(topo, flows);
  EFCOMM_CHECK(false, "plan.plan: unknown strategy '", strategy, "': use \"ecmp\", \"balanced\" or \"split\"");
  return {};
}

}  // namespace efcomm::plan
