// The cut bound on maximum congestion (where plan.hpp `bound` starts). Any plan, splitting
// allowed, must move the bytes leaving a set of nodes over the links leaving it, so out-bytes /
// cut capacity bounds the most congested of those links from below. The sets: every endpoint,
// every leaf class (the leaves an endpoint group links to, with those endpoints) and, in a Clos,
// every pod (the non-core nodes of its group). A set's cut counts every usable link between it
// and the rest, whatever tiers the link joins (a custom fabric's leaf-leaf or NIC-NIC cables
// too), so the bound holds on any fabric and any labelling of groups. On a uniform leaf-spine
// fabric it is the splittable optimum: splitting every flow evenly over all planes and spines
// meets it (the `split` strategy does so with few pieces).

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "efcomm/error.hpp"
#include "efcomm/plan.hpp"
#include "plan/plan_internal.hpp"

namespace efcomm::plan {

namespace detail {

void checkFlows(const Topology& topo, const std::vector<Flow>& flows, const char* where) {
  const int n = topo.endpoints();
  for (size_t i = 0; i < flows.size(); ++i) {
    const Flow& f = flows[i];
    EFCOMM_CHECK(f.src >= 0 && f.src < n && f.dst >= 0 && f.dst < n, where, ": flow ", i, " (", f.src, " -> ", f.dst,
                 ") names an endpoint outside [0, ", n, ") of the topology");
    EFCOMM_CHECK(std::isfinite(f.bytes) && f.bytes >= 0, where, ": flow ", i, " has bytes ", f.bytes,
                 ": must be finite and >= 0");
  }
}

int tierOf(NodeKind kind) {
  switch (kind) {
    case NodeKind::kEndpoint: return 0;
    case NodeKind::kLeaf: return 1;
    case NodeKind::kSpine:
    case NodeKind::kAgg: return 2;
    case NodeKind::kCore: return 3;
  }
  return 0;
}

LeafClasses leafClasses(const Topology& topo) {
  const std::vector<Node>& nodes = topo.nodes();
  const std::vector<Link>& links = topo.links();
  const int endpoints = topo.endpoints();
  // Endpoint rank of each endpoint node; the lowest leaf of each endpoint names its class.
  std::vector<int> rankOf(nodes.size(), -1);
  for (int r = 0; r < endpoints; ++r) rankOf[topo.endpointNode(r)] = r;
  std::vector<int> firstLeaf(endpoints, -1);
  for (const Link& l : links) {
    const int r = rankOf[l.from];
    if (r < 0 || nodes[l.to].kind != NodeKind::kLeaf) continue;
    if (firstLeaf[r] < 0 || l.to < firstLeaf[r]) firstLeaf[r] = l.to;
  }
  LeafClasses out;
  out.ofEndpoint.assign(endpoints, -1);
  std::vector<int> classOfLeaf(nodes.size(), -1);
  std::vector<int> classSize;
  for (int r = 0; r < endpoints; ++r) {
    const int leaf = firstLeaf[r];
    if (leaf < 0) continue;
    if (classOfLeaf[leaf] < 0) {
      classOfLeaf[leaf] = out.count();
      out.leaves.push_back({});
      classSize.push_back(0);
    }
    out.ofEndpoint[r] = classOfLeaf[leaf];
    ++classSize[classOfLeaf[leaf]];
  }
  // Every leaf an endpoint links to joins that endpoint's class; it must serve the whole class
  // and nothing else.
  std::vector<int> leafClass(nodes.size(), -1), served(nodes.size(), 0);
  for (const Link& l : links) {
    const int r = rankOf[l.from];
    if (r < 0 || nodes[l.to].kind != NodeKind::kLeaf) continue;
    const int c = out.ofEndpoint[r];
    if (leafClass[l.to] < 0) {
      leafClass[l.to] = c;
      out.leaves[c].push_back(l.to);
    } else if (leafClass[l.to] != c) {
      out.consistent = false;
    }
    ++served[l.to];
  }
  for (int c = 0; c < out.count(); ++c) {
    for (const int leaf : out.leaves[c]) out.consistent = out.consistent && served[leaf] == classSize[c];
  }
  return out;
}

}  // namespace detail

namespace {

double ratio(double bytes, double capacity) {
  if (bytes <= 0) return 0;
  return capacity > 0 ? bytes / capacity : std::numeric_limits<double>::infinity();
}

}  // namespace

double detail::cutBound(const Topology& topo, const std::vector<Flow>& flows) {
  detail::checkFlows(topo, flows, "plan.bound");
  const std::vector<Node>& nodes = topo.nodes();
  const std::vector<Link>& links = topo.links();
  const int endpoints = topo.endpoints();
  const detail::LeafClasses classes = detail::leafClasses(topo);
  // Pods of a Clos: the groups of its aggs; an endpoint's pod is its node's group.
  int pods = 0;
  for (const Node& n : nodes) {
    if (n.kind == NodeKind::kAgg) pods = std::max(pods, n.group + 1);
  }

  // The sets each node belongs to (-1: none), then each set's usable capacity out and in.
  std::vector<int> epOf(nodes.size(), -1), classOf(nodes.size(), -1), podOf(nodes.size(), -1);
  for (int r = 0; r < endpoints; ++r) {
    epOf[topo.endpointNode(r)] = r;
    classOf[topo.endpointNode(r)] = classes.ofEndpoint[r];
  }
  for (int c = 0; c < classes.count(); ++c)
    for (const int leaf : classes.leaves[c]) classOf[leaf] = c;
  for (size_t n = 0; n < nodes.size(); ++n) {
    if (nodes[n].kind != NodeKind::kCore && nodes[n].group >= 0 && nodes[n].group < pods) podOf[n] = nodes[n].group;
  }
  std::vector<double> epCapOut(endpoints, 0), epCapIn(endpoints, 0);
  std::vector<double> classCapOut(classes.count(), 0), classCapIn(classes.count(), 0);
  std::vector<double> podCapOut(pods, 0), podCapIn(pods, 0);
  const auto cross = [](const std::vector<int>& setOf, const Link& l, std::vector<double>& out, std::vector<double>& in) {
    const int a = setOf[l.from], b = setOf[l.to];
    if (a == b) return;
    if (a >= 0) out[a] += l.capacity;
    if (b >= 0) in[b] += l.capacity;
  };
  for (const Link& l : links) {
    if (l.failed) continue;
    cross(epOf, l, epCapOut, epCapIn);
    cross(classOf, l, classCapOut, classCapIn);
    cross(podOf, l, podCapOut, podCapIn);
  }
  std::vector<double> epOut(endpoints, 0), epIn(endpoints, 0);
  std::vector<double> leafOut(classes.count(), 0), leafIn(classes.count(), 0);
  std::vector<double> podOut(pods, 0), podIn(pods, 0);
  for (const Flow& f : flows) {
    if (topo.hostOf(f.src) == topo.hostOf(f.dst)) continue;  // in-host: no fabric link
    epOut[f.src] += f.bytes;
    epIn[f.dst] += f.bytes;
    const int cs = classes.ofEndpoint[f.src], cd = classes.ofEndpoint[f.dst];
    if (cs >= 0 && cd >= 0 && cs != cd) {
      leafOut[cs] += f.bytes;
      leafIn[cd] += f.bytes;
    }
    if (pods > 0) {
      const int ps = nodes[topo.endpointNode(f.src)].group, pd = nodes[topo.endpointNode(f.dst)].group;
      if (ps != pd && ps >= 0 && ps < pods && pd >= 0 && pd < pods) {
        podOut[ps] += f.bytes;
        podIn[pd] += f.bytes;
      }
    }
  }

  double best = 0;
  for (int r = 0; r < endpoints; ++r) best = std::max({best, ratio(epOut[r], epCapOut[r]), ratio(epIn[r], epCapIn[r])});
  for (int c = 0; c < classes.count(); ++c)
    best = std::max({best, ratio(leafOut[c], classCapOut[c]), ratio(leafIn[c], classCapIn[c])});
  for (int p = 0; p < pods; ++p) best = std::max({best, ratio(podOut[p], podCapOut[p]), ratio(podIn[p], podCapIn[p])});
  return best;
}

}  // namespace efcomm::plan
