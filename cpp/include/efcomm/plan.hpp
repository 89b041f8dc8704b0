#pragma once
/// @file plan.hpp
/// Collective traffic planning (docs/planning.md): which path each connection of a
/// collective takes through a leaf-spine or Clos fabric. C4 (C4P) gains ~15% by planning paths
/// instead of leaving them to ECMP hashing; "Challenging the Need for Packet Spraying" proves that
/// single-path transport with minimal application-layer flow splitting matches ideal packet
/// spraying in maximum congestion. Both are built here, with a flow-level simulator.
///
/// Model. Endpoints are NIC ports, one rank (GPU) each: rank = host x nicsPerHost + nic. Links are
/// directed (a cable is two links, one per direction), with a capacity in bytes per second.
/// Traffic between two endpoints of the same host stays inside the host (NVLink) and loads no
/// fabric link. Paths follow up-down routing: endpoint -> leaf -> (agg -> core -> agg ->) leaf ->
/// endpoint, shortest first; failed links are never used.
///
/// Congestion of a link: the bytes it carries / its capacity (seconds at full rate); the maximum
/// congestion over links is the objective every strategy minimizes and `bound` bounds from below.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace efcomm::plan {

/// What a node of the fabric is.
enum class NodeKind { kEndpoint, kLeaf, kSpine, kAgg, kCore };

/// "endpoint", "leaf", "spine", "agg", "core".
const char* nodeKindName(NodeKind kind);

/// A node of the fabric: an endpoint (one NIC of a host, one rank) or a switch.
struct Node {
  NodeKind kind = NodeKind::kEndpoint;
  int plane = 0;       ///< the network plane (dual-plane fabrics: 0 or 1)
  int group = 0;       ///< leaf-spine: the leaf's host group; Clos: the pod (switches and endpoints)
  std::string name;    ///< "h3.n1" (host 3, NIC 1), "p0.leaf2", "p1.spine0", "pod2.agg1", "core5"
};

/// A directed link.
struct Link {
  int from = 0, to = 0;      ///< node ids
  double capacity = 0;       ///< bytes per second (> 0); a degraded link has less
  bool failed = false;       ///< never used by any path
};

/// A 2-tier leaf-spine fabric of `leaves` leaves and `spines` spines per plane; every spine links
/// to every leaf of its plane. `hostsPerLeaf` hosts hang off each leaf: without `railOptimized`,
/// all `nicsPerHost` NICs of a host on the same leaf (hosts = leaves x hostsPerLeaf); with it,
/// leaves come in groups of `nicsPerHost` (rails), NIC i of each of the group's hostsPerLeaf hosts
/// on the group's leaf i (hosts = leaves / nicsPerHost x hostsPerLeaf). With `planes` > 1
/// (dual-plane: 2) the switch fabric is replicated and every endpoint links to its leaf in every
/// plane; a path picks the plane. Rates in Gbit/s per direction.
struct LeafSpineSpec {
  int leaves = 8;             ///< per plane
  int spines = 4;             ///< per plane
  int hostsPerLeaf = 4;
  int nicsPerHost = 1;
  double hostGbps = 400;      ///< each endpoint-leaf link, per direction
  double uplinkGbps = 400;    ///< each leaf-spine link, per direction
  bool railOptimized = false;
  int planes = 1;
};

/// A 3-tier Clos (k-ary fat-tree): k pods of k/2 leaves (edge switches) and k/2 aggs, (k/2)^2
/// cores; leaf i of a pod links to every agg of the pod, agg j to cores j*k/2 .. j*k/2 + k/2 - 1;
/// `hostsPerLeaf` hosts per leaf (k/2 when 0) with `nicsPerHost` NICs each. Rates in Gbit/s.
struct ClosSpec {
  int k = 4;                  ///< even, >= 2
  int hostsPerLeaf = 0;
  int nicsPerHost = 1;
  double hostGbps = 400;
  double fabricGbps = 400;    ///< every switch-switch link
};

/// A fabric: nodes (endpoints first, in rank order, then switches) and directed links, with the
/// candidate paths between endpoints. Immutable but for failLink/degradeLink; copies share the
/// paths' tables.
class Topology {
 public:
  /// The fabrics of LeafSpineSpec / ClosSpec; InvalidArgument (naming the field) for a bad spec.
  static Topology leafSpine(const LeafSpineSpec& spec);
  static Topology clos(const ClosSpec& spec);
  /// The JSON `toJson` writes: {"nodes": [{"kind", "plane", "group", "name"}], "links": [{"from",
  /// "to", "gbps", "failed"}], "hosts", "nics_per_host", "kind": "leaf_spine" | "clos" | "custom"}.
  /// Throws InvalidArgument (naming the field) for malformed input.
  static Topology fromJson(const std::string& text);
  std::string toJson() const;

  /// Hosts, and NICs (endpoints, ranks) per host.
  int hosts() const;
  int nicsPerHost() const;
  /// Endpoints (ranks): hosts() x nicsPerHost().
  int endpoints() const;
  /// The node id of endpoint `rank`.
  int endpointNode(int rank) const;
  /// The host of endpoint `rank`.
  int hostOf(int rank) const { return rank / nicsPerHost(); }

  /// Every node (ids are indices) and every directed link (ids are indices; a cable is two).
  const std::vector<Node>& nodes() const;
  const std::vector<Link>& links() const;
  /// The id of the link from node `from` to node `to`, or -1.
  int linkBetween(int from, int to) const;

  /// Fails (capacity kept, never used) or degrades (capacity x factor, 0 < factor <= 1) the link
  /// and its reverse direction.
  void failLink(int link);
  void degradeLink(int link, double factor);

  /// Number of candidate paths from endpoint `src` to endpoint `dst` (0: unreachable; 1 for
  /// endpoints of one host: the empty in-host path).
  int pathCount(int src, int dst) const;
  /// Candidate path `index` (in [0, pathCount)) as link ids, in order. The enumeration is
  /// deterministic (plane-major, then spine; Clos: agg, then core); pairs under the same pair of
  /// leaves share it unless one of their endpoint links has failed (its plane drops out).
  void path(int src, int dst, int index, std::vector<int>& links) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

/// A connection of a collective: `bytes` from endpoint `src` to endpoint `dst`.
struct Flow {
  int src = 0, dst = 0;
  double bytes = 0;
};

/// The flows of collective `pattern` among n ranks on endpoints `placement[r]` (empty: rank r on
/// endpoint r, all endpoints), each rank holding `bytes` of data:
/// - "ring_allreduce": rank r -> r+1 (mod n), 2(n-1)/n x bytes each;
/// - "hierarchical_allreduce": inside each host a ring over its NICs (in-host, no fabric), then per
///   NIC index a ring over the hosts of 2(h-1)/h x bytes / m each (h hosts holding that NIC index,
///   m the most ranks on one host: nicsPerHost when every NIC is placed);
/// - "tree_allreduce": a binary tree over the ranks, every child -> parent and parent -> child
///   `bytes` each (reduce then broadcast);
/// - "alltoall": every ordered pair, bytes / n each;
/// - "allgather": every ordered pair, `bytes` each (efcomm's Reducer allgather of payloads);
/// - "reduce_scatter": every ordered pair, 2 x bytes / n (efcomm's two phases: chunks to their
///   owners, re-compressed chunks back).
/// Throws InvalidArgument for an unknown pattern, bytes <= 0 or a bad placement.
std::vector<Flow> collectiveFlows(const Topology& topo, const std::string& pattern, double bytes,
                                  const std::vector<int>& placement = {});

/// One part of a flow: the candidate path it takes and the fraction of the flow's bytes on it.
struct PathShare {
  int path = 0;
  double fraction = 1;
};

/// Paths chosen for every flow. Compact (CSR): flow f's shares are shares[offsets[f] ..
/// offsets[f+1]).
class Plan {
 public:
  Plan() = default;
  Plan(const Topology& topo, std::vector<Flow> flows, std::vector<size_t> offsets, std::vector<PathShare> shares,
       std::string strategy);

  const std::string& strategy() const { return strategy_; }
  const std::vector<Flow>& flows() const { return flows_; }
  /// Flow f's shares.
  std::vector<PathShare> sharesOf(size_t flow) const;
  /// Sub-flows in all (shares); flows() when nothing is split.
  size_t subflows() const { return shares_.size(); }
  /// Per link, bytes carried.
  const std::vector<double>& linkBytes() const { return linkBytes_; }
  /// max over links of bytes / capacity: seconds at full rate.
  double maxCongestion() const;
  /// Completion time of the collective under flow-level max-min fair sharing (every sub-flow
  /// starts at 0; progressive filling until the last one ends), seconds.
  double completionTime() const;
  /// {"strategy", "max_congestion", "subflows", "flows": [{"src", "dst", "bytes", "paths":
  /// [{"links": [...], "fraction"}]}]} - per connection its path(s), for a fabric's steering layer.
  std::string toJson() const;

 private:
  Topology topo_;
  std::vector<Flow> flows_;
  std::vector<size_t> offsets_;
  std::vector<PathShare> shares_;
  std::string strategy_;
  std::vector<double> linkBytes_;
};

/// Plans `flows` on `topo` with `strategy`:
/// - "ecmp": each flow on one candidate path drawn by a seeded hash of (src, dst, seed);
/// - "balanced": each flow on one path, chosen to minimize the maximum congestion (C4P-style:
///   largest flows first onto the least loaded path, then improvement passes);
/// - "split": the splittable optimum with the fewest sub-flows (Ethereal-style): reaches `bound`
///   exactly on leaf-spine fabrics with equal flows and uniform capacities.
/// Throws InvalidArgument for an unknown strategy or a flow between unreachable endpoints.
Plan plan(const Topology& topo, const std::vector<Flow>& flows, const std::string& strategy, uint64_t seed = 0);

/// A lower bound on the maximum congestion of any plan, splitting allowed, seconds: the cut bound
/// (every endpoint's traffic over its links, every leaf's (pod's) traffic leaving and entering it
/// over its uplinks), exactly the splittable optimum on uniform leaf-spine fabrics; elsewhere
/// (failed or degraded links, Clos, custom fabrics) the larger of it and the dual bound of a
/// multiplicative-weights run (Garg-Konemann), within about 1-10 % of the optimum, where the
/// instance takes at most ~5e7 link visits (a fraction of a second).
double bound(const Topology& topo, const std::vector<Flow>& flows);

}  // namespace efcomm::plan
