// Planning strategies, the cut bound and the flow-level simulator (efcomm/plan.hpp): split meets
// the bound exactly on randomized leaf-spine instances with equal flows (any placement, several
// planes, D not divisible by the spines), balanced stays near it, no plan crosses a failed link,
// the simulator's hand-computed cases, and the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "common/rng.hpp"
#include "efcomm/error.hpp"
#include "efcomm/plan.hpp"
#include "test_util.hpp"
#include "plan/plan_internal.hpp"

namespace efcomm::plan {
namespace {

Topology leafSpine(int leaves, int spines, int hostsPerLeaf, int nics = 1, double hostGbps = 400,
                   double uplinkGbps = 400, bool rail = false, int planes = 1) {
  LeafSpineSpec s = test::leafSpineSpec(leaves, spines, hostsPerLeaf, nics, rail, planes);
  s.hostGbps = hostGbps;
  s.uplinkGbps = uplinkGbps;
  return Topology::leafSpine(s);
}

// The first `n` entries of a seeded permutation of the endpoints.
std::vector<int> placement(const Topology& topo, int n, uint64_t seed) {
  std::vector<int> p(static_cast<size_t>(topo.endpoints()));
  std::iota(p.begin(), p.end(), 0);
  SplitMix64 rng(seed);
  for (size_t i = p.size(); i > 1; --i) std::swap(p[i - 1], p[rng.below(i)]);
  p.resize(static_cast<size_t>(n));
  return p;
}

// Endpoint `rank`'s link number `which` (one per plane) towards its leaf.
int uplink(const Topology& topo, int rank, int which = 0) {
  const int node = topo.endpointNode(rank);
  for (size_t l = 0; l < topo.links().size(); ++l) {
    if (topo.links()[l].from == node && which-- == 0) return static_cast<int>(l);
  }
  return -1;
}

// A lower bound on any single-path plan on a uniform leaf-spine fabric: some uplink (downlink) of
// a leaf carries at least ceil(flows / uplinks) of its inter-leaf flows, and some link of an
// endpoint at least ceil(flows / planes) of its flows (pigeonhole), each at least the smallest.
double singlePathBound(const Topology& topo, const std::vector<Flow>& flows, int planes, int spines) {
  const detail::LeafClasses classes = detail::leafClasses(topo);
  std::vector<int> leafOut(classes.count()), leafIn(classes.count()), epOut(topo.endpoints()), epIn(topo.endpoints());
  double size = std::numeric_limits<double>::infinity();
  for (const Flow& f : flows) {
    if (f.bytes <= 0 || topo.hostOf(f.src) == topo.hostOf(f.dst)) continue;
    size = std::min(size, f.bytes);
    ++epOut[f.src];
    ++epIn[f.dst];
    if (classes.ofEndpoint[f.src] != classes.ofEndpoint[f.dst]) {
      ++leafOut[classes.ofEndpoint[f.src]];
      ++leafIn[classes.ofEndpoint[f.dst]];
    }
  }
  double hostCap = 0, upCap = 0;
  for (const Link& l : topo.links()) {
    const std::vector<Node>& nodes = topo.nodes();
    const bool host = nodes[l.from].kind == NodeKind::kEndpoint || nodes[l.to].kind == NodeKind::kEndpoint;
    (host ? hostCap : upCap) = l.capacity;
  }
  auto ceilDiv = [](int a, int b) { return (a + b - 1) / b; };
  double worst = 0;
  for (int c = 0; c < classes.count(); ++c) {
    worst = std::max(worst, ceilDiv(std::max(leafOut[c], leafIn[c]), planes * spines) * size / upCap);
  }
  for (int e = 0; e < topo.endpoints(); ++e) {
    worst = std::max(worst, ceilDiv(std::max(epOut[e], epIn[e]), planes) * size / hostCap);
  }
  return worst;
}

// A lower bound on any single-path plan: each flow whole on its widest usable path.
double wholeFlowBound(const Topology& topo, const std::vector<Flow>& flows) {
  double worst = 0;
  std::vector<int> path;
  for (const Flow& f : flows) {
    double widest = 0;
    for (int p = 0; p < topo.pathCount(f.src, f.dst); ++p) {
      topo.path(f.src, f.dst, p, path);
      double narrowest = std::numeric_limits<double>::infinity();
      for (const int l : path) narrowest = std::min(narrowest, topo.links()[l].capacity);
      widest = std::max(widest, narrowest);
    }
    worst = std::max(worst, f.bytes / widest);
  }
  return worst;
}

bool usesFailedLink(const Plan& p, const Topology& topo) {
  for (size_t l = 0; l < topo.links().size(); ++l) {
    if (topo.links()[l].failed && p.linkBytes()[l] != 0) return true;
  }
  return false;
}

const char* const kEqualPatterns[] = {"ring_allreduce", "alltoall", "allgather", "hierarchical_allreduce",
                                      "reduce_scatter", "tree_allreduce"};

// Random leaf-spine instances (equal flows but for hierarchical allreduce on a partial placement,
// whose rings differ in length): split is exact, balanced and ecmp are plans above the bound,
// balanced within 1.5x of the best of the bound and two lower bounds on single paths.
TEST(PlanStrategies, SplitMeetsTheBoundOnRandomLeafSpine) {
  SplitMix64 rng(7);
  const double rates[] = {100, 200, 400};
  int notDivisible = 0;
  double worstBalanced = 0;
  for (int trial = 0; trial < 240; ++trial) {
    const int planes = trial % 4 == 3 ? 2 : 1;
    const int nics = static_cast<int>(rng.below(2)) + 1;
    const bool rail = nics > 1 && rng.below(2) == 1;
    const int leaves = rail ? nics * (1 + static_cast<int>(rng.below(8))) : 2 + static_cast<int>(rng.below(15));
    const int spines = static_cast<int>(rng.below(8)) + 1;
    const int hostsPerLeaf = static_cast<int>(rng.below(8)) + 1;
    const Topology topo = leafSpine(leaves, spines, hostsPerLeaf, nics,
                                    rates[rng.below(3)], rates[rng.below(3)], rail, planes);
    const char* pattern = kEqualPatterns[trial % 6];
    const bool dense = trial % 6 == 1 || trial % 6 == 2 || trial % 6 == 4;
    const int most = std::min(topo.endpoints(), dense ? 48 : 256);
    const int n = std::max(2, static_cast<int>(rng.below(static_cast<uint64_t>(most))) + 1);
    const std::vector<Flow> flows = collectiveFlows(topo, pattern, 1e6, placement(topo, n, rng.next()));
    SCOPED_TRACE(testing::Message() << "trial " << trial << ": " << pattern << " on " << n << " of " << topo.endpoints()
                                    << " endpoints, leaves " << leaves << " spines " << spines << " hosts/leaf "
                                    << hostsPerLeaf << " nics " << nics << " rail " << rail << " planes " << planes);
    const double b = bound(topo, flows);
    const Plan s = plan(topo, flows, "split");
    if (b == 0) {  // all traffic inside hosts
      EXPECT_EQ(s.maxCongestion(), 0);
      continue;
    }
    EXPECT_NEAR(s.maxCongestion() / b, 1.0, 1e-12);
    const Plan bal = plan(topo, flows, "balanced");
    const Plan e = plan(topo, flows, "ecmp", static_cast<uint64_t>(trial));
    EXPECT_EQ(bal.subflows(), flows.size());
    EXPECT_EQ(e.subflows(), flows.size());
    EXPECT_GE(e.maxCongestion(), b * (1 - 1e-12));
    EXPECT_GE(bal.maxCongestion(), b * (1 - 1e-12));
    // The rest for equal flows (the pigeonhole bound counts flows).
    const detail::LeafClasses classes = detail::leafClasses(topo);
    std::vector<int> out(classes.count()), in(classes.count());
    bool equal = true;
    double size = 0;
    for (const Flow& f : flows) {
      const int cs = classes.ofEndpoint[f.src], cd = classes.ofEndpoint[f.dst];
      if (topo.hostOf(f.src) == topo.hostOf(f.dst)) continue;
      if (size == 0) size = f.bytes;
      equal = equal && f.bytes == size;
      if (cs != cd) ++out[cs], ++in[cd];
    }
    if (!equal) continue;
    const double single =
        std::max({b, singlePathBound(topo, flows, planes, spines), wholeFlowBound(topo, flows)});
    EXPECT_LE(bal.maxCongestion(), 1.5 * single);
    worstBalanced = std::max(worstBalanced, bal.maxCongestion() / single);
    // Single plane: the inter-leaf flows need no split when the spines divide D.
    const int d = std::max(*std::max_element(out.begin(), out.end()), *std::max_element(in.begin(), in.end()));
    if (planes == 1 && d % spines == 0) {
      EXPECT_EQ(s.subflows(), flows.size());
    } else {
      ++notDivisible;
    }
  }
  EXPECT_GT(notDivisible, 40);
  std::printf("balanced / (best lower bound on single paths): worst %.3f\n", worstBalanced);
}

// All-to-all where the leaves' uplinks bind (D = 4 x 12 = 48 flows per leaf over 1200 Gbit/s,
// an endpoint's 15 flows over 400): 4 spines divide D (no split), 5 and 7 do not (a few flows
// are split, still exactly at the bound).
TEST(PlanStrategies, SplitSubflowsOnAllToAll) {
  for (const int spines : {4, 5, 7}) {
    const Topology topo = leafSpine(4, spines, 4, 1, 400, 1200.0 / spines);
    const std::vector<Flow> flows = collectiveFlows(topo, "alltoall", 1e6);
    const Plan s = plan(topo, flows, "split");
    EXPECT_NEAR(s.maxCongestion() / bound(topo, flows), 1.0, 1e-12) << spines;
    if (spines == 4) {
      EXPECT_EQ(s.subflows(), flows.size());
    } else {
      EXPECT_GT(s.subflows(), flows.size());
      EXPECT_LT(s.subflows(), 2 * flows.size());
    }
  }
}

// A ring across two leaves and 2 spines with 3 flows crossing each way: whole flows cannot do
// better than 2 on one uplink, the bound is 1.5 (oversubscribed uplinks), split halves one flow.
TEST(PlanStrategies, SplitHandMade) {
  const Topology topo = leafSpine(2, 2, 3, 1, 400, 100);
  // Endpoints 0-2 on leaf 0, 3-5 on leaf 1.
  const std::vector<Flow> flows = {{0, 3, 1e6}, {1, 4, 1e6}, {2, 5, 1e6}, {3, 0, 1e6}, {4, 1, 1e6}, {5, 2, 1e6}};
  const double b = bound(topo, flows);
  const Plan s = plan(topo, flows, "split");
  EXPECT_NEAR(s.maxCongestion() / b, 1.0, 1e-12);
  EXPECT_EQ(s.subflows(), 8u);  // two leftover flows (one per direction) in halves
  const Plan bal = plan(topo, flows, "balanced");
  EXPECT_NEAR(bal.maxCongestion() / b, 4.0 / 3.0, 1e-12);
  double fractions = 0;
  for (size_t f = 0; f < flows.size(); ++f) {
    for (const PathShare& sh : s.sharesOf(f)) fractions += sh.fraction;
  }
  EXPECT_NEAR(fractions, 6.0, 1e-12);
}

// Dual plane: each endpoint has a link per plane, so a ring needs every flow in halves over the
// planes to reach the endpoint bound.
TEST(PlanStrategies, SplitDualPlane) {
  const Topology topo = leafSpine(4, 2, 4, 1, 400, 400, false, 2);
  for (const char* pattern : {"ring_allreduce", "alltoall"}) {
    const std::vector<Flow> flows = collectiveFlows(topo, pattern, 1e6, placement(topo, topo.endpoints(), 3));
    const double b = bound(topo, flows);
    const Plan s = plan(topo, flows, "split");
    EXPECT_NEAR(s.maxCongestion() / b, 1.0, 1e-12) << pattern;
    EXPECT_GE(plan(topo, flows, "balanced").maxCongestion(), b * (1 - 1e-12));
  }
}

TEST(PlanStrategies, EcmpIsSeededAndSpreads) {
  const Topology topo = leafSpine(8, 8, 4);
  const std::vector<Flow> flows = collectiveFlows(topo, "ring_allreduce", 1e6, placement(topo, 32, 1));
  const Plan a = plan(topo, flows, "ecmp", 5), b = plan(topo, flows, "ecmp", 5), c = plan(topo, flows, "ecmp", 6);
  EXPECT_EQ(a.toJson(), b.toJson());
  EXPECT_NE(a.toJson(), c.toJson());
  std::vector<int> used(8, 0);
  for (size_t f = 0; f < flows.size(); ++f) {
    for (const PathShare& s : a.sharesOf(f)) {
      ASSERT_GE(s.path, 0);
      ASSERT_LT(s.path, topo.pathCount(flows[f].src, flows[f].dst));
      if (topo.pathCount(flows[f].src, flows[f].dst) == 8) ++used[s.path];
    }
  }
  EXPECT_GT(std::count_if(used.begin(), used.end(), [](int u) { return u > 0; }), 4);
}

// Failed and degraded links: no strategy uses a failed link, split is between the bound and
// balanced, the bound still bounds.
TEST(PlanStrategies, FailuresAreAvoided) {
  SplitMix64 rng(11);
  for (int trial = 0; trial < 30; ++trial) {
    const int planes = trial % 3 == 2 ? 2 : 1;
    Topology topo = leafSpine(4 + static_cast<int>(rng.below(4)), 2 + static_cast<int>(rng.below(4)),
                              2 + static_cast<int>(rng.below(3)), 1, 400, 200, false, planes);
    const std::vector<Link>& links = topo.links();
    for (int k = 0; k < 3; ++k) {
      // A leaf-spine link (both ends switches), sometimes only degraded.
      for (int tries = 0; tries < 100; ++tries) {
        const int l = static_cast<int>(rng.below(links.size()));
        if (links[l].failed || topo.nodes()[links[l].from].kind == NodeKind::kEndpoint ||
            topo.nodes()[links[l].to].kind == NodeKind::kEndpoint) {
          continue;
        }
        if (k == 2) {
          topo.degradeLink(l, 0.5);
        } else {
          topo.failLink(l);
        }
        break;
      }
    }
    if (planes == 2) topo.failLink(uplink(topo, 0));
    const char* pattern = trial % 2 ? "alltoall" : "ring_allreduce";
    const std::vector<Flow> flows = collectiveFlows(topo, pattern, 1e6, placement(topo, topo.endpoints(), rng.next()));
    SCOPED_TRACE(testing::Message() << "trial " << trial << " " << pattern);
    const double b = bound(topo, flows);
    for (const char* strategy : {"ecmp", "balanced", "split"}) {
      const Plan p = plan(topo, flows, strategy, 1);
      EXPECT_FALSE(usesFailedLink(p, topo)) << strategy;
      EXPECT_GE(p.maxCongestion(), b * (1 - 1e-12)) << strategy;
    }
    const double split = plan(topo, flows, "split").maxCongestion();
    const double balanced = plan(topo, flows, "balanced").maxCongestion();
    EXPECT_LE(split, balanced * (1 + 1e-12));
    EXPECT_LE(balanced, 1.5 * std::max(b, wholeFlowBound(topo, flows)));
  }
}

// One uplink of leaf 0 fails: its 48 all-to-all flows out (and in) share the other three, the
// cut bound, which the other leaves can meet by sending their flows to leaf 0 over those spines
// and spreading the rest: split reaches it.
TEST(PlanStrategies, SplitAroundAFailedUplink) {
  for (const char* pattern : {"alltoall", "allgather"}) {
    Topology topo = leafSpine(4, 4, 4, 1, 400, 200);
    const int leaf0 = topo.links()[uplink(topo, 0)].to;
    for (size_t l = 0; l < topo.links().size(); ++l) {
      if (topo.links()[l].from == leaf0 && topo.nodes()[topo.links()[l].to].kind == NodeKind::kSpine) {
        topo.failLink(static_cast<int>(l));
        break;
      }
    }
    const std::vector<Flow> flows = collectiveFlows(topo, pattern, 1e6);
    const double b = bound(topo, flows);
    const Plan s = plan(topo, flows, "split");
    EXPECT_NEAR(s.maxCongestion() / b, 1.0, 2e-3) << pattern;
    EXPECT_FALSE(usesFailedLink(s, topo));
  }
}

TEST(PlanStrategies, UnequalFlowsAndClos) {
  SplitMix64 rng(5);
  ClosSpec spec;
  spec.k = 4;
  const Topology clos = Topology::clos(spec);
  const Topology ls = leafSpine(4, 3, 3);
  for (const Topology* topo : {&clos, &ls}) {
    for (int trial = 0; trial < 6; ++trial) {
      std::vector<Flow> flows;
      const int n = topo->endpoints();
      for (int i = 0; i < 3 * n; ++i) {
        flows.push_back({static_cast<int>(rng.below(n)), static_cast<int>(rng.below(n)),
                         1e6 * (1 + static_cast<double>(rng.below(100)))});
      }
      const double b = bound(*topo, flows);
      const Plan bal = plan(*topo, flows, "balanced");
      const Plan s = plan(*topo, flows, "split");
      EXPECT_GE(s.maxCongestion(), b * (1 - 1e-12));
      EXPECT_LE(s.maxCongestion(), bal.maxCongestion() * (1 + 1e-12));
      EXPECT_LE(bal.maxCongestion(), 1.5 * b);
      EXPECT_LE(s.subflows(), flows.size() + topo->links().size());
    }
  }
  // Clos with equal flows: balanced near the bound (pods and leaves are cuts).
  const std::vector<Flow> flows = collectiveFlows(clos, "alltoall", 1e6);
  EXPECT_LE(plan(clos, flows, "balanced").maxCongestion(), 1.5 * bound(clos, flows));
  EXPECT_NEAR(plan(clos, flows, "split").maxCongestion() / bound(clos, flows), 1.0, 1e-3);
}

TEST(PlanStrategies, Errors) {
  Topology topo = leafSpine(2, 2, 2);
  const std::vector<Flow> flows = {{0, 3, 1e6}};
  EXPECT_THROW(plan(topo, flows, "spray"), InvalidArgument);
  const std::vector<Flow> outside = {{0, 99, 1e6}}, negative = {{0, 1, -1}}, nan = {{0, 1, NAN}};
  EXPECT_THROW(plan(topo, outside, "balanced"), InvalidArgument);
  EXPECT_THROW(plan(topo, negative, "balanced"), InvalidArgument);
  EXPECT_THROW(bound(topo, nan), InvalidArgument);
  // Endpoint 0 cut off: its only uplink fails.
  topo.failLink(uplink(topo, 0));
  for (const char* strategy : {"ecmp", "balanced", "split"}) EXPECT_THROW(plan(topo, flows, strategy), InvalidArgument);
  // Plans made by hand are checked.
  auto make = [&](std::vector<Flow> f, std::vector<size_t> offsets, std::vector<PathShare> shares) {
    return Plan(topo, std::move(f), std::move(offsets), std::move(shares), "x");
  };
  const std::vector<Flow> one = {{2, 1, 1}};
  EXPECT_THROW(make(one, {0, 1}, {{0, 0.5}}), InvalidArgument);  // fractions sum to 0.5
  EXPECT_THROW(make(one, {0, 1}, {{9, 1}}), InvalidArgument);    // no such path
  EXPECT_THROW(make(one, {0, 0}, {}), InvalidArgument);          // no share
  EXPECT_THROW(make(flows, {0, 1}, {{0, 1}}), InvalidArgument);  // crosses the failed link
  EXPECT_NO_THROW(make(one, {0, 2}, {{0, 0.5}, {1, 0.5}}));
}

TEST(PlanStrategies, JsonListsEveryPath) {
  const Topology topo = leafSpine(2, 2, 1);
  const std::vector<Flow> flows = {{0, 1, 1000}};
  const Plan p(topo, flows, {0, 2}, {{0, 0.25}, {1, 0.75}}, "split");
  std::vector<int> a, b;
  topo.path(0, 1, 0, a);
  topo.path(0, 1, 1, b);
  auto list = [](const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s;
  };
  const std::string json = p.toJson();
  EXPECT_EQ(json.rfind("{\"strategy\": \"split\", \"max_congestion\": ", 0), 0u) << json;
  const std::string tail = "\"subflows\": 2, \"flows\": [{\"src\": 0, \"dst\": 1, \"bytes\": 1000, \"paths\": " +
                           std::string("[{\"links\": [") + list(a) + "], \"fraction\": 0.25}, {\"links\": [" + list(b) +
                           "], \"fraction\": 0.75}]}]}";
  EXPECT_NE(json.find(tail), std::string::npos) << json;
  EXPECT_EQ(Plan().toJson(), "{\"strategy\": \"\", \"max_congestion\": 0, \"subflows\": 0, \"flows\": []}");
}

// ---- bound ---------------------------------------------------------------------------------

TEST(PlanBound, Cuts) {
  // 2 leaves x 2 endpoints, one 100 Gbit/s spine link per leaf, 400 Gbit/s host links.
  const Topology topo = leafSpine(2, 1, 2, 1, 400, 100);
  const double host = topo.links()[uplink(topo, 0)].capacity;
  const double up = host / 4;
  // One flow: the uplink (a quarter of the host rate) is the cut.
  EXPECT_DOUBLE_EQ(bound(topo, {{0, 2, 1e6}}), 1e6 / up);
  // Inside the leaf: only endpoint links.
  EXPECT_DOUBLE_EQ(bound(topo, {{0, 1, 1e6}}), 1e6 / host);
  // Two flows out of one leaf share its uplink capacity.
  EXPECT_DOUBLE_EQ(bound(topo, {{0, 2, 1e6}, {1, 3, 1e6}}), 2e6 / up);
  EXPECT_EQ(bound(topo, {}), 0);
  // In-host traffic loads nothing.
  const Topology nics = leafSpine(2, 1, 1, 2);
  EXPECT_EQ(bound(nics, {{0, 1, 1e6}}), 0);
}

TEST(PlanBound, BelowEveryPlan) {
  SplitMix64 rng(3);
  ClosSpec spec;
  spec.k = 4;
  spec.nicsPerHost = 2;
  const Topology topos[] = {Topology::clos(spec), leafSpine(6, 3, 2, 2, 400, 200, true, 2), leafSpine(5, 2, 3)};
  for (const Topology& topo : topos) {
    for (const char* pattern : kEqualPatterns) {
      const std::vector<Flow> flows =
          collectiveFlows(topo, pattern, 1e6, placement(topo, topo.endpoints(), rng.next()));
      const double b = bound(topo, flows);
      for (const char* strategy : {"ecmp", "balanced", "split"}) {
        EXPECT_GE(plan(topo, flows, strategy, 2).maxCongestion(), b * (1 - 1e-12)) << pattern << " " << strategy;
      }
    }
  }
}

// ---- simulator -----------------------------------------------------------------------------

TEST(PlanSim, HandComputed) {
  // Host links 100 Gbit/s, uplinks 400: the host links are the bottlenecks.
  const Topology topo = leafSpine(2, 2, 3, 1, 100, 400);
  const double c = topo.links()[uplink(topo, 0)].capacity;
  const double b = 1e6;
  auto time = [&](const std::vector<Flow>& flows) { return plan(topo, flows, "balanced").completionTime(); };
  EXPECT_DOUBLE_EQ(time({{0, 4, b}}), b / c);                // alone: bytes / the narrowest link
  EXPECT_DOUBLE_EQ(time({{0, 4, b}, {0, 5, b}}), 2 * b / c);  // two share the source's link
  EXPECT_DOUBLE_EQ(time({{0, 0, b}}), 0);                     // in-host
  EXPECT_EQ(Plan().completionTime(), 0);
  // Max-min: flows 1-3 share endpoint 4's downlink at c/3 each, so flow 0 gets 2c/3 of endpoint
  // 0's uplink while they last (3b/c); its 4b - 2b left then run at c: 5b/c in all.
  EXPECT_NEAR(time({{0, 1, 4 * b}, {0, 4, b}, {2, 4, b}, {3, 4, b}}) / (b / c), 5.0, 1e-9);
  EXPECT_NEAR(time({{0, 1, b}, {0, 4, b}, {2, 4, b}, {3, 4, b}}) / (b / c), 3.0, 1e-9);
}

TEST(PlanSim, NeverBeatsCongestion) {
  SplitMix64 rng(9);
  for (int trial = 0; trial < 40; ++trial) {
    const Topology topo = leafSpine(3 + static_cast<int>(rng.below(4)), 1 + static_cast<int>(rng.below(4)),
                                    1 + static_cast<int>(rng.below(4)), 1, 400, trial % 2 ? 100 : 400);
    std::vector<Flow> flows;
    const int n = topo.endpoints();
    for (int i = 0; i < 2 * n; ++i) {
      flows.push_back({static_cast<int>(rng.below(n)), static_cast<int>(rng.below(n)),
                       1e5 * (1 + static_cast<double>(rng.below(50)))});
    }
    for (const char* strategy : {"ecmp", "balanced", "split"}) {
      const Plan p = plan(topo, flows, strategy, static_cast<uint64_t>(trial));
      const double t = p.completionTime();
      EXPECT_GE(t, p.maxCongestion() * (1 - 1e-9)) << strategy;
      EXPECT_TRUE(std::isfinite(t));
    }
  }
}

// Not timed: balanced on all-to-all among 1,024 endpoints (about a million flows) completes.
TEST(PlanStrategies, BalancedAllToAll1024) {
  const Topology topo = leafSpine(32, 16, 32, 1, 400, 400);
  const std::vector<Flow> flows = collectiveFlows(topo, "alltoall", 1e9);
  ASSERT_EQ(flows.size(), 1024u * 1023u);
  const Plan p = plan(topo, flows, "balanced");
  EXPECT_LE(p.maxCongestion(), 1.5 * bound(topo, flows));
}

}  // namespace
}  // namespace efcomm::plan

namespace efcomm::plan {
namespace {

// Ring allreduce over every endpoint of a 1:1 leaf-spine with ranks at a stride coprime to the
// endpoints: every leaf sends and receives hostsPerLeaf flows over as many spines, so a proper
// edge coloring (Konig) puts one flow on every leaf-spine link and the single-path optimum is the
// bound. Greedy placement leaves some link with two; only ejection chains (alternating paths)
// reach the optimum.
TEST(PlanStrategies, BalancedReachesTheBoundOnStridedRings) {
  {
    const Topology topo = leafSpine(8, 4, 4);
    std::vector<int> p;
    for (int r = 0; r < 32; ++r) p.push_back(7 * r % 32);
    const std::vector<Flow> flows = collectiveFlows(topo, "ring_allreduce", double(1 << 30), p);
    EXPECT_NEAR(plan(topo, flows, "balanced").maxCongestion() / bound(topo, flows), 1.0, 1e-9);
  }
  int checked = 0;
  for (const auto& [leaves, hosts] : {std::pair{4, 3}, {7, 3}, {7, 4}, {8, 4}, {8, 8}, {10, 8}, {12, 6}, {16, 8}}) {
    const Topology topo = leafSpine(leaves, hosts, hosts);
    const int n = topo.endpoints();
    for (int stride = 2; stride < n; stride += 1 + n / 12) {
      if (std::gcd(stride, n) != 1) continue;
      std::vector<int> p;
      for (int r = 0; r < n; ++r) p.push_back(stride * r % n);
      const std::vector<Flow> flows = collectiveFlows(topo, "ring_allreduce", 1e9, p);
      EXPECT_NEAR(plan(topo, flows, "balanced").maxCongestion() / bound(topo, flows), 1.0, 1e-9)
          << leaves << " leaves x " << hosts << " hosts, stride " << stride;
      ++checked;
    }
  }
  EXPECT_GT(checked, 25);
}

// Random Clos fabrics and leaf-spines with failed cables, equal and unequal flows: balanced is a
// plan (above the bound, clear of failed links) within 1.5x of the best lower bound on single
// paths (the cut bound; a flow alone on its widest candidate).
TEST(PlanStrategies, BalancedNearTheSinglePathBoundOnRandomFabrics) {
  SplitMix64 rng(11);
  double worst = 0;
  for (int trial = 0; trial < 120; ++trial) {
    const bool clos = trial % 2 == 0;
    Topology topo = [&] {
      if (clos) {
        ClosSpec spec;
        spec.k = 4 + 2 * static_cast<int>(rng.below(3));
        spec.hostsPerLeaf = 1 + static_cast<int>(rng.below(static_cast<uint64_t>(spec.k / 2)));
        spec.nicsPerHost = 1 + static_cast<int>(rng.below(2));
        return Topology::clos(spec);
      }
      return leafSpine(2 + static_cast<int>(rng.below(6)), 2 + static_cast<int>(rng.below(4)),
                       1 + static_cast<int>(rng.below(4)), 1 + static_cast<int>(rng.below(2)));
    }();
    const char* pattern = kEqualPatterns[rng.below(6)];
    const bool whole = std::string(pattern) == "hierarchical_allreduce";
    const int n = whole ? topo.endpoints() : 2 + static_cast<int>(rng.below(static_cast<uint64_t>(topo.endpoints() - 1)));
    std::vector<int> p(static_cast<size_t>(topo.endpoints()));
    std::iota(p.begin(), p.end(), 0);
    if (!whole) p = placement(topo, n, rng.next());
    std::vector<Flow> flows = collectiveFlows(topo, pattern, 1e9, p);
    if (trial % 3 == 0) {
      for (Flow& f : flows) f.bytes *= 1 + static_cast<double>(rng.below(20));
    }
    int failed = 0;
    if (!clos) {  // fail switch cables that leave every flow a path
      for (int i = 0; i < 3; ++i) {
        const int l = static_cast<int>(rng.below(topo.links().size()));
        const Link& link = topo.links()[l];
        if (topo.nodes()[link.from].kind == NodeKind::kEndpoint || topo.nodes()[link.to].kind == NodeKind::kEndpoint) continue;
        Topology copy = topo;
        copy.failLink(l);
        if (std::all_of(flows.begin(), flows.end(), [&](const Flow& f) { return copy.pathCount(f.src, f.dst) > 0; })) {
          topo = copy;
          ++failed;
        }
      }
    }
    SCOPED_TRACE(testing::Message() << "trial " << trial << ": " << pattern << " on " << n << " of "
                                    << topo.endpoints() << " endpoints, " << (clos ? "clos" : "leaf-spine") << ", "
                                    << failed << " failed cables");
    const double b = bound(topo, flows);
    if (b == 0) continue;
    const Plan bal = plan(topo, flows, "balanced");
    EXPECT_EQ(bal.subflows(), flows.size());
    EXPECT_FALSE(usesFailedLink(bal, topo));
    EXPECT_GE(bal.maxCongestion(), b * (1 - 1e-12));
    const double single = std::max(b, wholeFlowBound(topo, flows));
    EXPECT_LE(bal.maxCongestion(), 1.5 * single);
    worst = std::max(worst, bal.maxCongestion() / single);
  }
  std::printf("balanced / max(bound, whole-flow bound) on Clos and failures: worst %.3f\n", worst);
}

}  // namespace
}  // namespace efcomm::plan
