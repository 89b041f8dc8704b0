// Topologies and collective flows of plan.hpp: sizes and names of constructed fabrics, candidate
// paths (connected, up-down, distinct, counted exactly), failures and degradation, JSON round
// trips and malformed input, and the flows of every collective pattern.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/json.hpp"
#include "efcomm/error.hpp"
#include "efcomm/plan.hpp"
#include "plan/plan_internal.hpp"
#include "test_util.hpp"

namespace efcomm::plan {
namespace {

using test::leafSpineSpec;

ClosSpec closSpec(int k, int hostsPerLeaf = 0, int nics = 1) {
  ClosSpec s;
  s.k = k;
  s.hostsPerLeaf = hostsPerLeaf;
  s.nicsPerHost = nics;
  return s;
}

int nodeNamed(const Topology& t, const std::string& name) {
  for (size_t i = 0; i < t.nodes().size(); ++i) {
    if (t.nodes()[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

std::vector<std::vector<int>> allPaths(const Topology& t, int src, int dst) {
  std::vector<std::vector<int>> out(t.pathCount(src, dst));
  for (size_t i = 0; i < out.size(); ++i) t.path(src, dst, static_cast<int>(i), out[i]);
  return out;
}

// Every candidate of every pair: starts at src, ends at dst, consecutive links meet, no failed
// link, distinct; up-down and of the shortest length (2 or 2 x tiers) when `upDown`.
void checkPaths(const Topology& t, bool upDown = true) {
  const auto& nodes = t.nodes();
  const auto& links = t.links();
  for (int s = 0; s < t.endpoints(); ++s) {
    for (int d = 0; d < t.endpoints(); ++d) {
      SCOPED_TRACE(testing::Message() << s << " -> " << d);
      const auto paths = allPaths(t, s, d);
      if (t.hostOf(s) == t.hostOf(d)) {
        ASSERT_EQ(paths.size(), 1u);
        EXPECT_TRUE(paths[0].empty());
        continue;
      }
      std::set<std::vector<int>> distinct(paths.begin(), paths.end());
      EXPECT_EQ(distinct.size(), paths.size());
      for (const auto& p : paths) {
        ASSERT_FALSE(p.empty());
        EXPECT_EQ(links[p.front()].from, t.endpointNode(s));
        EXPECT_EQ(links[p.back()].to, t.endpointNode(d));
        bool down = false;
        for (size_t i = 0; i < p.size(); ++i) {
          EXPECT_FALSE(links[p[i]].failed);
          if (i > 0) {
            EXPECT_EQ(links[p[i - 1]].to, links[p[i]].from);
          }
          const int a = detail::tierOf(nodes[links[p[i]].from].kind), b = detail::tierOf(nodes[links[p[i]].to].kind);
          if (upDown) {
            EXPECT_NE(a, b);
            if (b < a) down = true;
            if (down) {
              EXPECT_LT(b, a) << "a path goes up after coming down";
            }
          }
        }
        if (upDown) {
          EXPECT_EQ(p.size() % 2, 0u);
        }
      }
    }
  }
}

TEST(PlanTopology, LeafSpineSizesAndNames) {
  const Topology t = Topology::leafSpine(LeafSpineSpec{});
  EXPECT_EQ(t.hosts(), 32);
  EXPECT_EQ(t.endpoints(), 32);
  EXPECT_EQ(t.nodes().size(), 32u + 8 + 4);
  EXPECT_EQ(t.links().size(), 2u * (32 + 8 * 4));
  EXPECT_EQ(t.nodes()[t.endpointNode(5)].name, "h5.n0");
  EXPECT_GE(nodeNamed(t, "p0.leaf7"), 0);
  EXPECT_GE(nodeNamed(t, "p0.spine3"), 0);
  EXPECT_EQ(nodeNamed(t, "p1.spine0"), -1);
  EXPECT_STREQ(nodeKindName(NodeKind::kAgg), "agg");

  // Rail-optimized, 8 NICs: 16 leaves in 2 rail groups of 8; host h's NIC i on leaf (h/4)*8 + i.
  LeafSpineSpec rail = leafSpineSpec(16, 8, 4, 8, true);
  rail.hostGbps = 200;
  const Topology r = Topology::leafSpine(rail);
  EXPECT_EQ(r.hosts(), 8);
  EXPECT_EQ(r.nicsPerHost(), 8);
  EXPECT_EQ(r.endpoints(), 64);
  EXPECT_EQ(r.nodes().size(), 64u + 16 + 8);
  EXPECT_EQ(r.links().size(), 2u * (64 + 16 * 8));
  const int ep = r.endpointNode(6 * 8 + 3);  // host 6, NIC 3
  EXPECT_EQ(r.nodes()[ep].name, "h6.n3");
  const int leaf = r.linkBetween(ep, nodeNamed(r, "p0.leaf11"));
  ASSERT_GE(leaf, 0);
  EXPECT_EQ(r.links()[leaf].capacity, 200e9 / 8);
  EXPECT_EQ(r.nodes()[nodeNamed(r, "p0.leaf11")].group, 1);

  // Dual-plane: every endpoint on its leaf in each plane.
  const Topology d = Topology::leafSpine(leafSpineSpec(4, 2, 2, 2, false, 2));
  EXPECT_EQ(d.hosts(), 8);
  EXPECT_EQ(d.endpoints(), 16);
  EXPECT_EQ(d.nodes().size(), 16u + 2 * (4 + 2));
  EXPECT_EQ(d.links().size(), 2u * 2 * (16 + 4 * 2));
  const int p1spine0 = nodeNamed(d, "p1.spine0"), p1leaf2 = nodeNamed(d, "p1.leaf2");
  ASSERT_GE(p1spine0, 0);
  EXPECT_EQ(d.nodes()[p1spine0].plane, 1);
  EXPECT_EQ(d.nodes()[p1spine0].kind, NodeKind::kSpine);
  EXPECT_GE(d.linkBetween(d.endpointNode(2 * 2 * 2 + 1), p1leaf2), 0);  // host 4 (leaf 2), NIC 1
  EXPECT_GE(d.linkBetween(p1leaf2, p1spine0), 0);
  EXPECT_EQ(d.linkBetween(nodeNamed(d, "p0.leaf2"), p1spine0), -1);  // planes are separate
  EXPECT_EQ(d.linkBetween(-1, 3), -1);
}

TEST(PlanTopology, ClosSizesAndNames) {
  const Topology t = Topology::clos(closSpec(4));
  EXPECT_EQ(t.hosts(), 16);
  EXPECT_EQ(t.endpoints(), 16);
  EXPECT_EQ(t.nodes().size(), 16u + 20);
  EXPECT_EQ(t.links().size(), 2u * 48);
  const Topology t8 = Topology::clos(closSpec(8));
  EXPECT_EQ(t8.hosts(), 128);
  EXPECT_EQ(t8.nodes().size(), 128u + 80);
  EXPECT_EQ(t8.links().size(), 2u * (128 + 256));
  for (const char* name : {"pod2.leaf1", "pod2.agg1", "core5", "pod7.agg3", "core15", "h127.n0"}) {
    EXPECT_GE(nodeNamed(t8, name), 0) << name;
  }
  // Agg j of every pod links to cores j*k/2 .. j*k/2 + k/2 - 1.
  const int agg = nodeNamed(t8, "pod5.agg2");
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(t8.linkBetween(agg, nodeNamed(t8, "core" + std::to_string(c))) >= 0, c / 4 == 2) << c;
  }
  EXPECT_EQ(t8.nodes()[agg].group, 5);
  EXPECT_EQ(t8.nodes()[t8.endpointNode(127)].group, 7);
  const Topology multi = Topology::clos(closSpec(4, 3, 2));
  EXPECT_EQ(multi.hosts(), 24);
  EXPECT_EQ(multi.endpoints(), 48);
}

TEST(PlanTopology, PathCounts) {
  const Topology a = Topology::leafSpine(leafSpineSpec(4, 3, 2));
  EXPECT_EQ(a.pathCount(0, 1), 1);  // same leaf
  EXPECT_EQ(a.pathCount(0, 2), 3);  // one per spine
  EXPECT_EQ(a.pathCount(7, 0), 3);
  EXPECT_EQ(a.pathCount(3, 3), 1);  // same host: in-host
  std::vector<int> p = {42};
  a.path(3, 3, 0, p);
  EXPECT_TRUE(p.empty());
  const Topology dual = Topology::leafSpine(leafSpineSpec(4, 3, 2, 1, false, 2));
  EXPECT_EQ(dual.pathCount(0, 1), 2);
  EXPECT_EQ(dual.pathCount(0, 2), 6);
  // Rail-optimized, 4 NICs, 8 leaves, 2 hosts per leaf: same NIC index of hosts 0, 1 share a leaf;
  // other NIC indices cross a spine, even within a rail group; one host's NICs stay in-host.
  const Topology rail = Topology::leafSpine(leafSpineSpec(8, 5, 2, 4, true));
  EXPECT_EQ(rail.pathCount(0 * 4 + 1, 1 * 4 + 1), 1);
  EXPECT_EQ(rail.pathCount(0 * 4 + 1, 1 * 4 + 2), 5);
  EXPECT_EQ(rail.pathCount(0 * 4 + 1, 2 * 4 + 1), 5);
  EXPECT_EQ(rail.pathCount(0 * 4 + 1, 0 * 4 + 2), 1);
  const Topology flat = Topology::leafSpine(leafSpineSpec(4, 5, 2, 4));  // all NICs of a host on one leaf
  EXPECT_EQ(flat.pathCount(0 * 4 + 1, 1 * 4 + 2), 1);
  EXPECT_EQ(flat.pathCount(0 * 4 + 1, 2 * 4 + 2), 5);
  const Topology c4 = Topology::clos(closSpec(4));
  EXPECT_EQ(c4.pathCount(0, 1), 1);   // same leaf
  EXPECT_EQ(c4.pathCount(0, 2), 2);   // same pod: via each agg
  EXPECT_EQ(c4.pathCount(0, 15), 4);  // other pod: via each core
  const Topology c8 = Topology::clos(closSpec(8));
  EXPECT_EQ(c8.pathCount(0, 4), 4);
  EXPECT_EQ(c8.pathCount(0, 16), 16);
  EXPECT_THROW(a.pathCount(0, 8), InvalidArgument);
  EXPECT_THROW(a.pathCount(-1, 0), InvalidArgument);
  EXPECT_THROW(a.path(0, 2, 3, p), InvalidArgument);
  EXPECT_THROW(a.path(0, 2, -1, p), InvalidArgument);
  EXPECT_THROW(a.path(3, 3, 1, p), InvalidArgument);
}

TEST(PlanTopology, EveryPathIsConnectedUpDownAndDistinct) {
  for (const LeafSpineSpec& s : {leafSpineSpec(4, 3, 2), leafSpineSpec(4, 2, 1, 2), leafSpineSpec(8, 3, 2, 4, true),
                                 leafSpineSpec(3, 2, 2, 1, false, 2), leafSpineSpec(4, 2, 1, 2, true, 2), leafSpineSpec(1, 0, 3, 2)}) {
    checkPaths(Topology::leafSpine(s));
  }
  checkPaths(Topology::clos(closSpec(4)));
  checkPaths(Topology::clos(closSpec(6, 1, 2)));
  checkPaths(Topology::clos(closSpec(2)));
}

TEST(PlanTopology, EnumerationOrderAndSameLeafPairs) {
  // Plane-major, then spine; pairs under the same two leaves take the same switch links.
  const Topology t = Topology::leafSpine(leafSpineSpec(4, 3, 2, 1, false, 2));
  std::vector<int> a, b;
  for (int i = 0; i < 6; ++i) {
    t.path(0, 2, i, a);
    t.path(1, 3, i, b);
    ASSERT_EQ(a.size(), 4u);
    EXPECT_EQ(t.nodes()[t.links()[a[1]].to].name, "p" + std::to_string(i / 3) + ".spine" + std::to_string(i % 3));
    EXPECT_EQ(a[1], b[1]);
    EXPECT_EQ(a[2], b[2]);
  }
  const Topology c = Topology::clos(closSpec(4));
  for (int i = 0; i < 4; ++i) {
    c.path(0, 12, i, a);  // pod 0 -> pod 3: agg j = i / 2, core 2j + i % 2
    ASSERT_EQ(a.size(), 6u);
    EXPECT_EQ(c.nodes()[c.links()[a[1]].to].name, "pod0.agg" + std::to_string(i / 2));
    EXPECT_EQ(c.nodes()[c.links()[a[2]].to].name, "core" + std::to_string(i));
    EXPECT_EQ(c.nodes()[c.links()[a[3]].to].name, "pod3.agg" + std::to_string(i / 2));
  }
}

// Fails cable `link` of a copy of `t`; every pair keeps exactly the candidates that avoid both of
// its directions, in the same order, and `t` itself is unchanged (copy on write).
void checkFailure(const Topology& t, int link) {
  Topology failed = t;
  failed.failLink(link);
  const int reverse = t.linkBetween(t.links()[link].to, t.links()[link].from);
  ASSERT_GE(reverse, 0);
  EXPECT_TRUE(failed.links()[link].failed);
  EXPECT_TRUE(failed.links()[reverse].failed);
  EXPECT_FALSE(t.links()[link].failed);
  int removed = 0;
  for (int s = 0; s < t.endpoints(); ++s) {
    for (int d = 0; d < t.endpoints(); ++d) {
      std::vector<std::vector<int>> kept;
      for (const auto& p : allPaths(t, s, d)) {
        if (std::find(p.begin(), p.end(), link) == p.end() && std::find(p.begin(), p.end(), reverse) == p.end()) {
          kept.push_back(p);
        } else {
          ++removed;
        }
      }
      EXPECT_EQ(allPaths(failed, s, d), kept) << s << " -> " << d;
    }
  }
  EXPECT_GT(removed, 0);
  checkPaths(failed);
}

TEST(PlanTopology, FailuresRemoveExactlyTheirCandidates) {
  const Topology ls = Topology::leafSpine(leafSpineSpec(4, 3, 2, 2, false, 2));
  checkFailure(ls, ls.linkBetween(nodeNamed(ls, "p1.leaf2"), nodeNamed(ls, "p1.spine1")));  // uplink
  checkFailure(ls, ls.linkBetween(nodeNamed(ls, "p0.spine0"), nodeNamed(ls, "p0.leaf0")));  // downlink
  checkFailure(ls, ls.linkBetween(ls.endpointNode(5), nodeNamed(ls, "p0.leaf1")));         // host link
  Topology wide = Topology::leafSpine(leafSpineSpec(3, 70, 1, 1, false, 2));  // masks of 2 words
  wide.failLink(wide.linkBetween(nodeNamed(wide, "p1.leaf0"), nodeNamed(wide, "p1.spine3")));
  checkFailure(wide, wide.linkBetween(nodeNamed(wide, "p1.spine66"), nodeNamed(wide, "p1.leaf2")));
  checkFailure(wide, wide.linkBetween(nodeNamed(wide, "p0.leaf1"), nodeNamed(wide, "p0.spine64")));
  const Topology c = Topology::clos(closSpec(4));
  checkFailure(c, c.linkBetween(nodeNamed(c, "pod1.agg1"), nodeNamed(c, "core3")));
  checkFailure(c, c.linkBetween(nodeNamed(c, "pod2.leaf0"), nodeNamed(c, "pod2.agg0")));
  Topology c8 = Topology::clos(closSpec(8, 1));
  c8.failLink(c8.linkBetween(nodeNamed(c8, "pod0.agg2"), nodeNamed(c8, "core9")));
  c8.failLink(c8.linkBetween(nodeNamed(c8, "pod3.leaf1"), nodeNamed(c8, "pod3.agg0")));
  checkFailure(c8, c8.linkBetween(nodeNamed(c8, "core10"), nodeNamed(c8, "pod5.agg2")));
  checkFailure(c8, c8.linkBetween(c8.endpointNode(9), nodeNamed(c8, "pod2.leaf1")));

  // A single-plane endpoint whose host link fails is unreachable; several failures compose.
  Topology one = Topology::leafSpine(leafSpineSpec(2, 2, 2));
  one.failLink(one.linkBetween(one.endpointNode(0), nodeNamed(one, "p0.leaf0")));
  EXPECT_EQ(one.pathCount(0, 3), 0);
  EXPECT_EQ(one.pathCount(3, 0), 0);
  EXPECT_EQ(one.pathCount(1, 3), 2);
  one.failLink(one.linkBetween(nodeNamed(one, "p0.spine1"), nodeNamed(one, "p0.leaf1")));  // the reverse direction
  EXPECT_EQ(one.pathCount(1, 3), 1);
  EXPECT_EQ(one.pathCount(3, 1), 1);
  one.failLink(one.linkBetween(nodeNamed(one, "p0.leaf0"), nodeNamed(one, "p0.spine1")));  // again: no change
  EXPECT_EQ(one.pathCount(1, 3), 1);
  EXPECT_THROW(one.failLink(static_cast<int>(one.links().size())), InvalidArgument);
}

TEST(PlanTopology, DegradeScalesBothDirections) {
  Topology t = Topology::leafSpine(leafSpineSpec(2, 2, 1));
  const Topology before = t;
  const int up = t.linkBetween(nodeNamed(t, "p0.leaf0"), nodeNamed(t, "p0.spine1"));
  const int down = t.linkBetween(nodeNamed(t, "p0.spine1"), nodeNamed(t, "p0.leaf0"));
  t.degradeLink(down, 0.5);
  EXPECT_EQ(t.links()[up].capacity, 400e9 / 8 / 2);
  EXPECT_EQ(t.links()[down].capacity, 400e9 / 8 / 2);
  EXPECT_EQ(before.links()[up].capacity, 400e9 / 8);
  for (size_t l = 0; l < t.links().size(); ++l) {
    if (static_cast<int>(l) != up && static_cast<int>(l) != down) {
      EXPECT_EQ(t.links()[l].capacity, 400e9 / 8);
    }
  }
  EXPECT_EQ(t.pathCount(0, 1), 2);  // degraded links stay candidates
  t.degradeLink(up, 0.5);
  EXPECT_EQ(t.links()[down].capacity, 400e9 / 8 / 4);
  EXPECT_THROW(t.degradeLink(up, 0), InvalidArgument);
  EXPECT_THROW(t.degradeLink(up, 1.5), InvalidArgument);
  EXPECT_THROW(t.degradeLink(up, NAN), InvalidArgument);
  EXPECT_THROW(t.degradeLink(-1, 0.5), InvalidArgument);
}

TEST(PlanTopology, BadSpecs) {
  EXPECT_THROW(Topology::leafSpine(leafSpineSpec(0, 2, 2)), InvalidArgument);
  EXPECT_THROW(Topology::leafSpine(leafSpineSpec(2, 0, 2)), InvalidArgument);
  EXPECT_THROW(Topology::leafSpine(leafSpineSpec(2, 2, 0)), InvalidArgument);
  EXPECT_THROW(Topology::leafSpine(leafSpineSpec(2, 2, 2, 0)), InvalidArgument);
  EXPECT_THROW(Topology::leafSpine(leafSpineSpec(6, 2, 2, 4, true)), InvalidArgument);  // 6 leaves, rails of 4
  EXPECT_THROW(Topology::leafSpine(leafSpineSpec(2, 2, 2, 1, false, 0)), InvalidArgument);
  LeafSpineSpec rate = leafSpineSpec(2, 2, 2);
  rate.uplinkGbps = 0;
  EXPECT_THROW(Topology::leafSpine(rate), InvalidArgument);
  rate.uplinkGbps = INFINITY;
  EXPECT_THROW(Topology::leafSpine(rate), InvalidArgument);
  EXPECT_THROW(Topology::leafSpine(leafSpineSpec(1 << 20, 1 << 12, 1)), InvalidArgument);  // too large
  EXPECT_THROW(Topology::leafSpine(leafSpineSpec(INT_MAX, 1, INT_MAX, INT_MAX, false, INT_MAX)), InvalidArgument);
  EXPECT_THROW(Topology::clos(closSpec(4096, INT_MAX, INT_MAX)), InvalidArgument);
  EXPECT_THROW(Topology::clos(closSpec(3)), InvalidArgument);
  EXPECT_THROW(Topology::clos(closSpec(0)), InvalidArgument);
  EXPECT_THROW(Topology::clos(closSpec(4, -1)), InvalidArgument);
  ClosSpec fabric = closSpec(4);
  fabric.fabricGbps = -1;
  EXPECT_THROW(Topology::clos(fabric), InvalidArgument);
}

void expectSame(const Topology& a, const Topology& b) {
  EXPECT_EQ(a.hosts(), b.hosts());
  EXPECT_EQ(a.nicsPerHost(), b.nicsPerHost());
  ASSERT_EQ(a.nodes().size(), b.nodes().size());
  for (size_t i = 0; i < a.nodes().size(); ++i) {
    const Node &x = a.nodes()[i], &y = b.nodes()[i];
    EXPECT_TRUE(x.kind == y.kind && x.plane == y.plane && x.group == y.group && x.name == y.name) << i;
  }
  ASSERT_EQ(a.links().size(), b.links().size());
  for (size_t i = 0; i < a.links().size(); ++i) {
    const Link &x = a.links()[i], &y = b.links()[i];
    EXPECT_TRUE(x.from == y.from && x.to == y.to && x.capacity == y.capacity && x.failed == y.failed) << i;
  }
  for (int s = 0; s < a.endpoints(); ++s) {
    EXPECT_EQ(a.endpointNode(s), b.endpointNode(s));
    for (int d = 0; d < a.endpoints(); ++d) EXPECT_EQ(allPaths(a, s, d), allPaths(b, s, d)) << s << " -> " << d;
  }
}

TEST(PlanTopology, JsonRoundTrip) {
  std::vector<Topology> topos = {Topology::leafSpine(leafSpineSpec(4, 3, 2)), Topology::leafSpine(leafSpineSpec(8, 2, 2, 4, true)),
                                 Topology::leafSpine(leafSpineSpec(3, 2, 2, 2, false, 2)), Topology::clos(closSpec(4)),
                                 Topology::clos(closSpec(6, 1, 2))};
  LeafSpineSpec odd = leafSpineSpec(2, 2, 2);
  odd.hostGbps = 123.456789;
  odd.uplinkGbps = 1e-3;
  topos.push_back(Topology::leafSpine(odd));
  for (Topology& t : topos) {
    t.failLink(static_cast<int>(t.links().size()) - 1);
    t.failLink(0);
    t.degradeLink(static_cast<int>(t.links().size()) / 2, 0.37);
    t.degradeLink(static_cast<int>(t.links().size()) / 3, 1.0 / 3);
    const std::string text = t.toJson();
    const Topology back = Topology::fromJson(text);
    expectSame(t, back);
    EXPECT_EQ(back.toJson(), text);
  }
  // Rates are written readably.
  const std::string text = Topology::leafSpine(LeafSpineSpec{}).toJson();
  EXPECT_NE(text.find("\"gbps\": 400,"), std::string::npos);
  EXPECT_NE(text.find("\"kind\": \"leaf_spine\""), std::string::npos);
  EXPECT_NE(text.find("\"name\": \"p0.spine3\""), std::string::npos);
  EXPECT_NE(Topology::clos(closSpec(4)).toJson().find("\"kind\": \"clos\""), std::string::npos);
}

// Capacities of every magnitude come back bit for bit.
TEST(PlanTopology, JsonRatesAreExact) {
  Topology t = Topology::leafSpine(leafSpineSpec(4, 4, 4));
  uint64_t x = 88172645463325252ull;
  for (size_t l = 0; l < t.links().size(); ++l) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const double unit = static_cast<double>((x >> 11) | 1) / 9007199254740992.0;  // (0, 1)
    const double factor = std::ldexp(unit, -static_cast<int>(x % 40));
    t.degradeLink(static_cast<int>(l), std::max(factor, 1e-300));
  }
  expectSame(t, Topology::fromJson(t.toJson()));
}

std::string replaceOnce(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? s : s.replace(at, from.size(), to);
}

TEST(PlanTopology, CustomFabricsUseShortestPaths) {
  // A leaf-spine described as custom: the same candidates (as sets), found by BFS.
  Topology ls = Topology::leafSpine(leafSpineSpec(3, 3, 2, 2, false, 2));
  ls.failLink(ls.linkBetween(nodeNamed(ls, "p1.leaf0"), nodeNamed(ls, "p1.spine2")));
  const Topology custom = Topology::fromJson(replaceOnce(ls.toJson(), "\"leaf_spine\"", "\"custom\""));
  EXPECT_NE(custom.toJson().find("\"kind\": \"custom\""), std::string::npos);
  checkPaths(custom);
  for (int s = 0; s < ls.endpoints(); ++s) {
    for (int d = 0; d < ls.endpoints(); ++d) {
      auto a = allPaths(ls, s, d), b = allPaths(custom, s, d);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      EXPECT_EQ(a, b) << s << " -> " << d;
    }
  }
  expectSame(custom, Topology::fromJson(custom.toJson()));

  // A hand-written diamond: e0 - s0 - {s1, s2} - s3 - e1, and e2 hanging off s0 and s3, which
  // is never a transit node.
  const std::string diamond = R"({"kind": "custom", "hosts": 3, "nics_per_host": 1,
    "nodes": [{"kind": "endpoint", "name": "e0"}, {"kind": "endpoint", "name": "e1"}, {"kind": "endpoint", "name": "e2"},
              {"kind": "leaf", "name": "s0"}, {"kind": "spine", "name": "s1"}, {"kind": "spine", "name": "s2"},
              {"kind": "leaf", "name": "s3"}],
    "links": [{"from": 0, "to": 3, "gbps": 100}, {"from": 3, "to": 0, "gbps": 100},
              {"from": 3, "to": 4, "gbps": 100}, {"from": 4, "to": 6, "gbps": 100},
              {"from": 3, "to": 5, "gbps": 100}, {"from": 5, "to": 6, "gbps": 100},
              {"from": 6, "to": 1, "gbps": 100}, {"from": 1, "to": 6, "gbps": 100},
              {"from": 3, "to": 2, "gbps": 100}, {"from": 2, "to": 6, "gbps": 100},
              {"from": 2, "to": 3, "gbps": 100}, {"from": 6, "to": 2, "gbps": 50}]})";
  Topology d = Topology::fromJson(diamond);
  EXPECT_EQ(d.endpoints(), 3);
  EXPECT_EQ(d.links()[11].capacity, 50e9 / 8);
  EXPECT_EQ(d.pathCount(0, 1), 2);
  EXPECT_EQ(d.pathCount(1, 0), 0);  // no way back from s3 but through e2
  EXPECT_EQ(d.pathCount(0, 2), 1);
  EXPECT_EQ(d.pathCount(2, 1), 1);
  checkPaths(d, false);
  const std::vector<std::vector<int>> both = {{0, 2, 3, 6}, {0, 4, 5, 6}};
  EXPECT_EQ(allPaths(d, 0, 1), both);
  d.failLink(3);  // s1 -> s3, one way
  const std::vector<std::vector<int>> second = {{0, 4, 5, 6}};
  EXPECT_EQ(allPaths(d, 0, 1), second);
  d.failLink(5);
  EXPECT_EQ(d.pathCount(0, 1), 0);  // still no transit through e2

  // At most 64 candidates: a 100-spine leaf-spine as custom.
  const Topology wide = Topology::fromJson(
      replaceOnce(Topology::leafSpine(leafSpineSpec(2, 100, 1)).toJson(), "\"leaf_spine\"", "\"custom\""));
  EXPECT_EQ(wide.pathCount(0, 1), 64);
  std::vector<int> p;
  wide.path(0, 1, 63, p);
  EXPECT_EQ(p.size(), 4u);
  EXPECT_THROW(wide.path(0, 1, 64, p), InvalidArgument);
}

// The shortest-path cache of a custom fabric is built lazily by whichever thread asks first.
TEST(PlanTopology, CustomPathsFromManyThreads) {
  const Topology ls = Topology::leafSpine(leafSpineSpec(4, 3, 2, 2));
  const std::string text = replaceOnce(ls.toJson(), "\"leaf_spine\"", "\"custom\"");
  const Topology reference = Topology::fromJson(text), shared = Topology::fromJson(text);
  std::vector<std::vector<std::vector<int>>> expected;
  for (int s = 0; s < ls.endpoints(); ++s) {
    for (int d = 0; d < ls.endpoints(); ++d) expected.push_back(allPaths(reference, s, d));
  }
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < ls.endpoints() * ls.endpoints(); ++i) {
        const int pair = (i * 7 + t * 5) % (ls.endpoints() * ls.endpoints());
        mismatches[t] += allPaths(shared, pair / ls.endpoints(), pair % ls.endpoints()) != expected[pair];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << t;
}

TEST(PlanTopology, JsonParser) {
  const json::Value v = json::parse(
      " {\"a\": [1, -2.5e3, true, false, null], \"s\": \"\\u00e9\\ud83d\\ude00\\n\\\"\", \"o\": {}, \"x\": \"\xc3\xa9\"} ");
  ASSERT_TRUE(v.isObject());
  const json::Value::Array& a = v.find("a")->array();
  ASSERT_EQ(a.size(), 5u);
  EXPECT_EQ(a[1].number(), -2500);
  EXPECT_EQ(a[1].numberText(), "-2.5e3");
  EXPECT_TRUE(a[2].boolean());
  EXPECT_TRUE(a[4].isNull());
  EXPECT_EQ(v.find("s")->string(), "\xc3\xa9\xf0\x9f\x98\x80\n\"");
  EXPECT_EQ(v.find("x")->string(), "\xc3\xa9");
  EXPECT_TRUE(v.find("o")->object().empty());
  EXPECT_EQ(v.find("missing"), nullptr);
  EXPECT_THROW(v.find("a")->string(), InvalidArgument);
  EXPECT_EQ(json::parse(std::string(200, '[') + std::string(200, ']')).type(), json::Value::Type::kArray);

  const std::vector<std::string> bads = {
      "", " ", "{", "[1,]", "[1 2]", "{\"a\" 1}", "{\"a\":1,}", "{\"a\":1,\"a\":2}", "{1: 2}", "01", "1.", ".5", "-",
        "1e", "+1", "1e999", "NaN", "tru", "nul", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"",
        "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"a\nb\"", "[] []", "{}x",
        std::string(300, '[') + std::string(300, ']')};
  for (const std::string& bad : bads) {
    EXPECT_THROW(json::parse(bad), InvalidArgument) << bad;
  }
  try {
    json::parse("[1, 2,, 3]");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("at byte 6"), std::string::npos) << e.what();
  }
}

// fromJson of `text` throws InvalidArgument whose message contains `needle`.
void expectJsonError(const std::string& text, const std::string& needle) {
  try {
    Topology::fromJson(text);
    ADD_FAILURE() << "no error; expected one naming " << needle;
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(PlanTopology, MalformedJson) {
  const std::string good = Topology::leafSpine(leafSpineSpec(2, 2, 1)).toJson();
  // Nodes: 0, 1 endpoints; 2, 3 leaves; 4, 5 spines. Links: 0..3 host links, 4.. fabric.
  EXPECT_NO_THROW(Topology::fromJson(good));
  expectJsonError("{\"kind\": ", "json: ");
  expectJsonError("[]", "the document: expected an object");
  expectJsonError(replaceOnce(good, "\"kind\": \"leaf_spine\"", "\"kind\": \"torus\""), "kind = \"torus\"");
  expectJsonError(replaceOnce(good, "\"hosts\": 2", "\"hosts\": 3"), "hosts x nics_per_host");
  expectJsonError(replaceOnce(good, "\"hosts\": 2", "\"hosts\": 1.5"), "hosts = 1.5");
  expectJsonError(replaceOnce(good, ", \"nics_per_host\": 1", ""), "missing field \"nics_per_host\"");
  expectJsonError(replaceOnce(good, "\"hosts\": 2", "\"hosts\": 2, \"spines\": 2"), "unknown field \"spines\"");
  expectJsonError(replaceOnce(good, "{\"kind\": \"leaf\"", "{\"kind\": \"router\""), "nodes[2].kind = \"router\"");
  expectJsonError(
      replaceOnce(good, "\"plane\": 0, \"group\": 0, \"name\": \"p0.leaf0\"", "\"plane\": -1, \"name\": \"x\""),
      "nodes[2].plane = -1");
  expectJsonError(replaceOnce(good, "\"name\": \"h1.n0\"", "\"name\": 7"), "nodes[1].name: expected a string");
  expectJsonError(replaceOnce(good, "{\"from\": 0, \"to\": 2,", "{\"from\": 0, \"to\": 9,"), "links[0].to = 9");
  expectJsonError(replaceOnce(good, "{\"from\": 0, \"to\": 2,", "{\"from\": 0, \"to\": 0,"), "links[0]: from = to");
  expectJsonError(replaceOnce(good, "\"to\": 2, \"gbps\": 400", "\"to\": 2, \"gbps\": 0"), "links[0].gbps = 0");
  expectJsonError(replaceOnce(good, "\"to\": 2, \"gbps\": 400", "\"to\": 2, \"gbps\": \"fast\""),
                  "links[0].gbps: expected a number");
  expectJsonError(replaceOnce(good, "\"to\": 2, \"gbps\": 400", "\"to\": 2, \"gbps\": -400"), "links[0].gbps = -400");
  expectJsonError(replaceOnce(good, "\"gbps\": 400, \"failed\": false}", "\"gbps\": 400, \"failed\": 0}"),
                  "links[0].failed: expected true or false");
  expectJsonError(replaceOnce(good, "{\"from\": 2, \"to\": 0,", "{\"from\": 0, \"to\": 2,"),
                  "both go from node 0 to node 2");
  // Endpoint 1 cut off entirely (its two links now join endpoint 0 and leaf 1 instead).
  const std::string custom = replaceOnce(good, "\"leaf_spine\"", "\"custom\"");
  expectJsonError(replaceOnce(replaceOnce(custom, "{\"from\": 1, \"to\": 3,", "{\"from\": 0, \"to\": 3,"),
                              "{\"from\": 3, \"to\": 1,", "{\"from\": 3, \"to\": 0,"),
                  "(endpoint \"h1.n0\") is not attached");
  // A leaf-spine whose structure was edited is not a leaf_spine (but fine as custom).
  const std::string edited = replaceOnce(good, "{\"from\": 2, \"to\": 4,", "{\"from\": 2, \"to\": 3,");
  expectJsonError(edited, "\"kind\": \"custom\"");
  EXPECT_NO_THROW(Topology::fromJson(replaceOnce(edited, "\"leaf_spine\"", "\"custom\"")));
  expectJsonError(replaceOnce(Topology::clos(closSpec(4)).toJson(), "\"core3\"", "\"core9\""), "nodes[");
}

// Mutated documents (bytes replaced, inserted, deleted) are read or refused with InvalidArgument,
// never anything else; what is read enumerates paths.
TEST(PlanTopology, FromJsonFuzz) {
  Topology seed = Topology::leafSpine(leafSpineSpec(2, 2, 1, 2));
  seed.failLink(5);
  const std::string base = seed.toJson();
  const std::string alphabet = "{}[],:\"0123456789-+.eE truefalsnl\\u\x01\xff";
  uint64_t x = 0x9E3779B97F4A7C15ull;
  const auto next = [&] {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return x;
  };
  int read = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string text = base;
    for (int edits = 1 + static_cast<int>(next() % 3); edits > 0; --edits) {
      const size_t at = next() % text.size();
      const char c = alphabet[next() % alphabet.size()];
      switch (next() % 3) {
        case 0: text[at] = c; break;
        case 1: text.insert(text.begin() + static_cast<long>(at), c); break;
        default: text.erase(at, 1 + next() % 4);
      }
    }
    try {
      const Topology t = Topology::fromJson(text);
      ++read;
      for (int s = 0; s < t.endpoints(); ++s) {
        for (int d = 0; d < t.endpoints(); ++d) allPaths(t, s, d);
      }
    } catch (const InvalidArgument&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "trial " << trial << ": " << e.what();
    }
  }
  EXPECT_GT(read, 0);
}

// ---- flows ----

double total(const std::vector<Flow>& flows) {
  double sum = 0;
  for (const Flow& f : flows) sum += f.bytes;
  return sum;
}

TEST(PlanFlows, PatternsCountsAndBytes) {
  const Topology t = Topology::leafSpine(leafSpineSpec(4, 2, 2, 2));  // 8 hosts x 2 NICs
  const double b = 1e6;
  const int n = 16;
  const auto ring = collectiveFlows(t, "ring_allreduce", b);
  ASSERT_EQ(ring.size(), 16u);
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(ring[r].src, r);
    EXPECT_EQ(ring[r].dst, (r + 1) % n);
    EXPECT_DOUBLE_EQ(ring[r].bytes, 2.0 * (n - 1) / n * b);
  }
  EXPECT_NEAR(total(ring), n * 2.0 * (n - 1) / n * b, 1e-6);

  const auto a2a = collectiveFlows(t, "alltoall", b);
  EXPECT_EQ(a2a.size(), static_cast<size_t>(n * (n - 1)));
  EXPECT_NEAR(total(a2a), (n - 1) * b, 1e-6);
  std::set<std::pair<int, int>> pairs;
  for (const Flow& f : a2a) {
    EXPECT_NE(f.src, f.dst);
    EXPECT_EQ(f.bytes, b / n);
    pairs.insert({f.src, f.dst});
  }
  EXPECT_EQ(pairs.size(), a2a.size());
  const auto ag = collectiveFlows(t, "allgather", b);
  EXPECT_EQ(ag.size(), static_cast<size_t>(n * (n - 1)));
  for (const Flow& f : ag) EXPECT_EQ(f.bytes, b);
  const auto rs = collectiveFlows(t, "reduce_scatter", b);
  EXPECT_EQ(rs.size(), static_cast<size_t>(n * (n - 1)));
  for (const Flow& f : rs) EXPECT_EQ(f.bytes, 2 * b / n);

  const auto tree = collectiveFlows(t, "tree_allreduce", b);
  ASSERT_EQ(tree.size(), 2u * (n - 1));
  std::multiset<std::pair<int, int>> edges;
  for (const Flow& f : tree) {
    EXPECT_EQ(f.bytes, b);
    edges.insert({f.src, f.dst});
  }
  for (int i = 1; i < n; ++i) {
    EXPECT_EQ(edges.count({i, (i - 1) / 2}), 1u) << i;
    EXPECT_EQ(edges.count({(i - 1) / 2, i}), 1u) << i;
  }
}

TEST(PlanFlows, Placement) {
  const Topology t = Topology::leafSpine(leafSpineSpec(4, 2, 2, 2));
  const std::vector<int> place = {9, 2, 14, 5};
  const auto ring = collectiveFlows(t, "ring_allreduce", 8, place);
  ASSERT_EQ(ring.size(), 4u);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(ring[r].src, place[r]);
    EXPECT_EQ(ring[r].dst, place[(r + 1) % 4]);
    EXPECT_EQ(ring[r].bytes, 12);
  }
  const auto tree = collectiveFlows(t, "tree_allreduce", 8, place);  // 9 <- {2, 14}, 2 <- 5
  const std::vector<std::pair<int, int>> expected = {{2, 9}, {9, 2}, {14, 9}, {9, 14}, {5, 2}, {2, 5}};
  ASSERT_EQ(tree.size(), expected.size());
  for (size_t i = 0; i < tree.size(); ++i) EXPECT_EQ(std::make_pair(tree[i].src, tree[i].dst), expected[i]);
  EXPECT_EQ(collectiveFlows(t, "alltoall", 8, place).size(), 12u);

  for (const std::vector<int>& bad : std::vector<std::vector<int>>{{3}, {1, 16}, {1, -1}, {4, 2, 4}}) {
    EXPECT_THROW(collectiveFlows(t, "ring_allreduce", 1, bad), InvalidArgument);
  }
  try {
    collectiveFlows(t, "alltoall", 1, {0, 1, 7, 1});
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("placement[3] = 1 repeats placement[1]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(collectiveFlows(t, "broadcast", 1), InvalidArgument);
  EXPECT_THROW(collectiveFlows(t, "ring_allreduce", 0), InvalidArgument);
  EXPECT_THROW(collectiveFlows(t, "ring_allreduce", NAN), InvalidArgument);
  EXPECT_THROW(collectiveFlows(Topology::leafSpine(leafSpineSpec(1, 0, 1)), "ring_allreduce", 1), InvalidArgument);
}

TEST(PlanFlows, Hierarchical) {
  // 4 hosts x 4 NICs, everything placed: in each host a ring of 4 (2 x 3/4 x b per edge), per NIC
  // index a ring over the 4 hosts of 2 x 3/4 x b / 4 per edge.
  const Topology t = Topology::leafSpine(leafSpineSpec(2, 2, 2, 4));
  const double b = 1e6;
  const auto flows = collectiveFlows(t, "hierarchical_allreduce", b);
  ASSERT_EQ(flows.size(), 16u + 16u);
  int inHost = 0, across = 0;
  std::map<int, int> outOfNic;
  for (const Flow& f : flows) {
    if (t.hostOf(f.src) == t.hostOf(f.dst)) {
      ++inHost;
      EXPECT_DOUBLE_EQ(f.bytes, 1.5 * b);
    } else {
      ++across;
      EXPECT_EQ(f.src % 4, f.dst % 4) << "inter-host flows stay on one NIC index";
      EXPECT_DOUBLE_EQ(f.bytes, 1.5 * b / 4);
      ++outOfNic[f.src];
    }
  }
  EXPECT_EQ(inHost, 16);
  EXPECT_EQ(across, 16);
  for (const auto& [ep, count] : outOfNic) EXPECT_EQ(count, 1) << ep;

  // Uneven: host 0 holds NICs 0 and 1, host 1 NIC 0, host 2 NICs 0, 1, 2 (M = 3 shards); host
  // order is first-rank order (2, 0, 1). Shard s rings over all three hosts through each host's
  // NIC s, or its rank s mod m: host 1's one rank covers all three, host 0's rank 0 shard 2.
  const std::vector<int> place = {8, 0, 9, 4, 1, 10};
  const auto uneven = collectiveFlows(t, "hierarchical_allreduce", b, place);
  std::set<std::pair<int, int>> across3;
  size_t inHostCount = 0;
  std::map<int, double> sent, received;
  for (const Flow& f : uneven) {
    if (t.hostOf(f.src) == t.hostOf(f.dst)) {
      ++inHostCount;
      continue;
    }
    across3.insert({f.src, f.dst});
    EXPECT_DOUBLE_EQ(f.bytes, 2.0 * 2 / 3 * b / 3);
    sent[t.hostOf(f.src)] += f.bytes;
    received[t.hostOf(f.dst)] += f.bytes;
  }
  EXPECT_EQ(inHostCount, 3u + 2u);  // host 2: ring of 3; host 0: 2 flows
  const std::set<std::pair<int, int>> want = {{8, 0}, {0, 4}, {4, 8}, {9, 1}, {1, 4}, {4, 9}, {10, 0}, {0, 4}, {4, 10}};
  EXPECT_EQ(across3, want);
  for (int host : {0, 1, 2}) {  // every host sends and receives its whole share: 2 (H - 1) / H x b
    EXPECT_DOUBLE_EQ(sent[host], 4.0 / 3 * b) << host;
    EXPECT_DOUBLE_EQ(received[host], 4.0 / 3 * b) << host;
  }
  // Two hosts with one rank each, on different NICs: the whole allreduce crosses between them.
  const auto pair = collectiveFlows(t, "hierarchical_allreduce", b, {0, 5});
  ASSERT_EQ(pair.size(), 2u);
  EXPECT_DOUBLE_EQ(pair[0].bytes, b);
}

// Not a timed assertion: building a 2,048-host x 8-NIC rail-optimized fabric and enumerating
// one path per ring flow completes (the planner's scale target); the time is printed.
TEST(PlanTopology, LargeFabricSanity) {
  const auto start = std::chrono::steady_clock::now();
  const Topology t = Topology::leafSpine(leafSpineSpec(512, 64, 32, 8, true));
  ASSERT_EQ(t.endpoints(), 16384);
  const auto built = std::chrono::steady_clock::now();
  const auto flows = collectiveFlows(t, "ring_allreduce", 1e9);
  std::vector<int> path;
  size_t links = 0;
  for (const Flow& f : flows) {
    const int n = t.pathCount(f.src, f.dst);
    ASSERT_GT(n, 0);
    t.path(f.src, f.dst, n - 1, path);
    links += path.size();
  }
  const auto done = std::chrono::steady_clock::now();
  EXPECT_GT(links, 0u);
  // With failed uplinks (one per 8 leaves): every candidate of every ring flow, as planners ask.
  Topology failed = t;
  for (int leaf = 0; leaf < 512; leaf += 8) {
    const std::string spine = "p0.spine" + std::to_string(leaf % 64);
    failed.failLink(failed.linkBetween(nodeNamed(t, "p0.leaf" + std::to_string(leaf)), nodeNamed(t, spine)));
  }
  size_t candidates = 0;
  for (const Flow& f : flows) {
    const int n = failed.pathCount(f.src, f.dst);
    ASSERT_GT(n, 0);
    for (int i = 0; i < n; ++i) failed.path(f.src, f.dst, i, path);
    candidates += n;
  }
  const auto withFailures = std::chrono::steady_clock::now();
  std::printf("leafSpine 16384 endpoints, %zu links: built in %.3f s, %zu ring paths in %.3f s; "
              "with 64 failed uplinks all %zu candidates in %.3f s\n",
              t.links().size(), std::chrono::duration<double>(built - start).count(), flows.size(),
              std::chrono::duration<double>(done - built).count(), candidates,
              std::chrono::duration<double>(withFailures - done).count());
}

}  // namespace
}  // namespace efcomm::plan
