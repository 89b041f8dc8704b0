#pragma once
// Internals shared by the planner's strategies, the cut bound and Plan: flow validation, the
// grouping of endpoints by their leaf (edge switch), and the tiers of the fabric.

#include <vector>

#include "efcomm/plan.hpp"

namespace efcomm::plan::detail {

/// Throws InvalidArgument unless every flow names endpoints of `topo` and has finite bytes >= 0.
/// `where` starts the message ("plan.plan", "plan.bound").
void checkFlows(const Topology& topo, const std::vector<Flow>& flows, const char* where);

/// 0 endpoint, 1 leaf, 2 spine or agg, 3 core: a link goes up when it goes to a higher tier.
int tierOf(NodeKind kind);

/// Endpoints grouped by the leaf they hang off: in a dual-plane fabric an endpoint links to one
/// leaf per plane, and those leaves serve the same endpoints, so one class covers them all.
struct LeafClasses {
  std::vector<int> ofEndpoint;             ///< class of each endpoint rank; -1 without a leaf
  std::vector<std::vector<int>> leaves;    ///< leaf node ids of each class
  /// Every leaf serves exactly the endpoints of its class (false for odd custom fabrics, where
  /// the leaf cuts of `bound` are not valid and are skipped).
  bool consistent = true;
  int count() const { return static_cast<int>(leaves.size()); }
};
LeafClasses leafClasses(const Topology& topo);

/// The cut bound (bound.cpp): out-bytes over cut capacity for every endpoint, leaf class and pod;
/// the splittable optimum on uniform leaf-spine fabrics. Checks the flows ("plan.bound").
double cutBound(const Topology& topo, const std::vector<Flow>& flows);

}  // namespace efcomm::plan::detail
