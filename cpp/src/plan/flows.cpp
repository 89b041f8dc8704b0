// The flows of collectives (plan.hpp, collectiveFlows): which endpoint sends how many bytes to
// which, per algorithm. Ring allreduce moves 2(n-1)/n of the data over each ring edge
// (reduce-scatter, then allgather; Patarasuk & Yuan 2009); the hierarchical (2D) allreduce does
// that inside each host, then per NIC index across hosts on 1/m of the data (m ranks per host);
// efcomm's Reducer algorithms are all-pairs exchanges.

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "efcomm/error.hpp"
#include "efcomm/plan.hpp"

namespace efcomm::plan {

namespace {

constexpr const char* kWhere = "plan.collectiveFlows";

// The endpoint of every rank: `placement`, or the identity over all endpoints; validated.
std::vector<int> endpointsOf(const Topology& topo, const std::vector<int>& placement) {
  const int endpoints = topo.endpoints();
  std::vector<int> eps = placement;
  if (eps.empty()) {
    eps.resize(endpoints);
    for (int r = 0; r < endpoints; ++r) eps[r] = r;
  }
  EFCOMM_CHECK(eps.size() >= 2, kWhere, ": ", eps.size(), " rank(s)",
               placement.empty() ? " (the topology's endpoints)" : "", ": a collective needs at least 2 ranks");
  std::vector<int> owner(endpoints, -1);
  for (size_t r = 0; r < eps.size(); ++r) {
    const int e = eps[r];
    EFCOMM_CHECK(e >= 0 && e < endpoints, kWhere, ": placement[", r, "] = ", e,
                 " is not an endpoint of the topology (it has ", endpoints, ": 0 .. ", endpoints - 1, ")");
    EFCOMM_CHECK(owner[e] < 0, kWhere, ": placement[", r, "] = ", e, " repeats placement[", owner[e],
                 "]: every rank needs its own endpoint");
    owner[e] = static_cast<int>(r);
  }
  return eps;
}

// A ring over `members` (endpoints, in ring order), `bytes` on each edge.
void ring(const std::vector<int>& members, double bytes, std::vector<Flow>& out) {
  const size_t n = members.size();
  if (n < 2) return;
  for (size_t i = 0; i < n; ++i) out.push_back({members[i], members[(i + 1) % n], bytes});
}

// Ring allreduce traffic per edge among n members holding `bytes` each.
double ringBytes(size_t n, double bytes) { return 2.0 * static_cast<double>(n - 1) / static_cast<double>(n) * bytes; }

// Hierarchical (2D) allreduce. Hosts are taken in the order of their first rank, the ranks of a
// host in rank order. Inside a host of m ranks: a ring of 2(m-1)/m x bytes per edge
// (reduce-scatter, then allgather, over NVLink: no fabric link). Across hosts: the data is in M
// shards, M = the most ranks any host holds (nicsPerHost when every NIC is placed); shard s is
// reduced by a ring over all H hosts, 2(H-1)/H x bytes / M per edge, through each host's rank on
// NIC s, or where the host has none its rank s mod m (m ranks on it): a host with fewer ranks
// covers several shards, so every host still sends and receives its whole share.
void hierarchical(const Topology& topo, const std::vector<int>& eps, double bytes, std::vector<Flow>& out) {
  const int nics = topo.nicsPerHost();
  std::vector<int> slotOfHost(topo.hosts(), -1);
  std::vector<std::vector<int>> hostRanks;  // endpoints of each used host, hosts in first-rank order
  for (const int e : eps) {
    int& slot = slotOfHost[topo.hostOf(e)];
    if (slot < 0) {
      slot = static_cast<int>(hostRanks.size());
      hostRanks.emplace_back();
    }
    hostRanks[slot].push_back(e);
  }
  size_t shards = 1;
  for (const auto& members : hostRanks) {
    ring(members, ringBytes(members.size(), bytes), out);
    shards = std::max(shards, members.size());
  }
  if (hostRanks.size() < 2) return;
  std::vector<int> members;
  for (size_t shard = 0; shard < shards; ++shard) {
    members.clear();
    for (const auto& host : hostRanks) {
      const auto onNic = std::find_if(host.begin(), host.end(),
                                      [&](int e) { return static_cast<size_t>(e % nics) == shard; });
      members.push_back(onNic != host.end() ? *onNic : host[shard % host.size()]);
    }
    ring(members, ringBytes(members.size(), bytes) / static_cast<double>(shards), out);
  }
}

// Every ordered pair (i, j), i != j, in rank order, `bytes` each.
void allPairs(const std::vector<int>& eps, double bytes, std::vector<Flow>& out) {
  const size_t n = eps.size();
  out.reserve(out.size() + n * (n - 1));
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      if (i != j) out.push_back({eps[i], eps[j], bytes});
    }
  }
}

}  // namespace

std::vector<Flow> collectiveFlows(const Topology& topo, const std::string& pattern, double bytes,
                                  const std::vector<int>& placement) {
  EFCOMM_CHECK(std::isfinite(bytes) && bytes > 0, kWhere, ": bytes = ", bytes,
               ": the data each rank holds must be a finite number > 0");
  const bool known = pattern == "ring_allreduce" || pattern == "hierarchical_allreduce" ||
                     pattern == "tree_allreduce" || pattern == "alltoall" || pattern == "allgather" ||
                     pattern == "reduce_scatter";
  EFCOMM_CHECK(known, kWhere, ": unknown pattern \"", pattern,
               "\": use ring_allreduce, hierarchical_allreduce, tree_allreduce, alltoall, allgather or reduce_scatter");
  const std::vector<int> eps = endpointsOf(topo, placement);
  const size_t n = eps.size();
  const double dn = static_cast<double>(n);
  std::vector<Flow> out;
  if (pattern == "ring_allreduce") {
    out.reserve(n);
    ring(eps, ringBytes(n, bytes), out);
  } else if (pattern == "hierarchical_allreduce") {
    hierarchical(topo, eps, bytes, out);
  } else if (pattern == "tree_allreduce") {
    // Heap numbering: rank i's parent is (i-1)/2; reduce up, then broadcast down, all of it.
    out.reserve(2 * (n - 1));
    for (size_t i = 1; i < n; ++i) {
      const int child = eps[i], parent = eps[(i - 1) / 2];
      out.push_back({child, parent, bytes});
      out.push_back({parent, child, bytes});
    }
  } else if (pattern == "alltoall") {
    allPairs(eps, bytes / dn, out);
  } else if (pattern == "allgather") {
    allPairs(eps, bytes, out);
  } else {
    allPairs(eps, bytes * (2 / dn), out);  // 2 bytes / n would overflow near the largest double
  }
  return out;
}

}  // namespace efcomm::plan
