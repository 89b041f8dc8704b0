// Traffic planning (efcomm/plan.hpp): topologies, the flows of collectives, plans and the bounds.
// Flows live in C++ (_Flows owns a std::vector<Flow>) and reach Python as a zero-copy read-only
// numpy view, so a million flows cross no Python loop in either direction. Every call that
// computes releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "efcomm/error.hpp"
#include "efcomm/plan.hpp"

namespace py = pybind11;

namespace efcomm::py_bind {

namespace {

using plan::Flow;
using plan::LeafSpineSpec;
using plan::ClosSpec;
using plan::Topology;

// The flows of a collective (or any traffic matrix), owned by C++.
struct FlowList {
  std::vector<Flow> flows;
};

// A plan with the topology it was made on (its path ids index that topology's candidates, and the
// Python topology may be changed afterwards: Topology copies share their state until changed).
struct PlanBox {
  Topology topo;
  plan::Plan plan;
};

void checkRank(const Topology& t, int rank, const char* what) {
  EFCOMM_CHECK(rank >= 0 && rank < t.endpoints(), "plan: ", what, " endpoint ", rank, " is out of range [0, ",
               t.endpoints(), ")");
}

void checkLink(const Topology& t, int link) {
  const int n = static_cast<int>(t.links().size());
  EFCOMM_CHECK(link >= 0 && link < n, "plan: link ", link, " is out of range [0, ", n, ")");
}

// Every flow's endpoints exist on t and its bytes are finite and >= 0.
void checkFlows(const Topology& t, const std::vector<Flow>& flows) {
  const int n = t.endpoints();
  for (size_t i = 0; i < flows.size(); ++i) {
    const Flow& f = flows[i];
    EFCOMM_CHECK(f.src >= 0 && f.src < n && f.dst >= 0 && f.dst < n, "plan: flow ", i, " (", f.src, " -> ", f.dst,
                 ") names an endpoint outside [0, ", n, ") of the topology");
    EFCOMM_CHECK(std::isfinite(f.bytes) && f.bytes >= 0, "plan: flow ", i, " has bytes ", f.bytes,
                 ": must be finite and >= 0");
  }
}

FlowList flowsFromArrays(const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& src,
                         const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& dst,
                         const py::array_t<double, py::array::c_style | py::array::forcecast>& bytes) {
  EFCOMM_CHECK(src.ndim() == 1 && dst.ndim() == 1 && bytes.ndim() == 1, "plan.Flows: src, dst and bytes must be ",
               "1-D arrays, got ", src.ndim(), "-D, ", dst.ndim(), "-D and ", bytes.ndim(), "-D");
  const py::ssize_t n = src.shape(0);
  EFCOMM_CHECK(dst.shape(0) == n && bytes.shape(0) == n, "plan.Flows: src, dst and bytes must have one length, got ",
               n, ", ", dst.shape(0), " and ", bytes.shape(0));
  const int64_t* s = src.data();
  const int64_t* d = dst.data();
  const double* b = bytes.data();
  FlowList out;
  py::gil_scoped_release nogil;
  out.flows.resize(static_cast<size_t>(n));
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  for (py::ssize_t i = 0; i < n; ++i) {
    EFCOMM_CHECK(s[i] >= 0 && s[i] <= kMax && d[i] >= 0 && d[i] <= kMax, "plan.Flows: flow ", i, " (", s[i], " -> ",
                 d[i], ") has a negative or too large endpoint");
    EFCOMM_CHECK(std::isfinite(b[i]) && b[i] >= 0, "plan.Flows: flow ", i, " has bytes ", b[i],
                 ": must be finite and >= 0");
    out.flows[i] = Flow{static_cast<int>(s[i]), static_cast<int>(d[i]), b[i]};
  }
  return out;
}

template <typename T>
py::array_t<T> toArray(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

py::list pathsOf(const PlanBox& b, size_t f) {
  EFCOMM_CHECK(f < b.plan.flows().size(), "Plan.paths: flow index ", f, " is out of range [0, ",
               b.plan.flows().size(), ")");
  const Flow& flow = b.plan.flows()[f];
  py::list out;
  std::vector<int> links;
  for (const plan::PathShare& s : b.plan.sharesOf(f)) {
    b.topo.path(flow.src, flow.dst, s.path, links);
    out.append(py::make_tuple(py::cast(links), s.fraction));
  }
  return out;
}

}  // namespace

void initPlan(py::module_& m) {
  PYBIND11_NUMPY_DTYPE(Flow, src, dst, bytes);

  py::class_<Topology>(m, "_Topology")
      .def(py::init<const Topology&>(), py::arg("other"))
      .def_static("leaf_spine", [](int leaves, int spines, int hostsPerLeaf, int nicsPerHost, double hostGbps,
                                   double uplinkGbps, bool railOptimized, int planes) {
        LeafSpineSpec s;
        s.leaves = leaves;
        s.spines = spines;
        s.hostsPerLeaf = hostsPerLeaf;
        s.nicsPerHost = nicsPerHost;
        s.hostGbps = hostGbps;
        s.uplinkGbps = uplinkGbps;
        s.railOptimized = railOptimized;
        s.planes = planes;
        py::gil_scoped_release nogil;
        return Topology::leafSpine(s);
      }, py::arg("leaves"), py::arg("spines"), py::arg("hosts_per_leaf"), py::arg("nics_per_host"),
         py::arg("host_gbps"), py::arg("uplink_gbps"), py::arg("rail_optimized"), py::arg("planes"))
      .def_static("clos", [](int k, int hostsPerLeaf, int nicsPerHost, double hostGbps, double fabricGbps) {
        ClosSpec s;
        s.k = k;
        s.hostsPerLeaf = hostsPerLeaf;
        s.nicsPerHost = nicsPerHost;
        s.hostGbps = hostGbps;
        s.fabricGbps = fabricGbps;
        py::gil_scoped_release nogil;
        return Topology::clos(s);
      }, py::arg("k"), py::arg("hosts_per_leaf"), py::arg("nics_per_host"), py::arg("host_gbps"),
         py::arg("fabric_gbps"))
      .def_static("from_json", [](const std::string& text) {
        py::gil_scoped_release nogil;
        return Topology::fromJson(text);
      }, py::arg("text"))
      .def("to_json", [](const Topology& t) {
        py::gil_scoped_release nogil;
        return t.toJson();
      })
      .def_property_readonly("hosts", &Topology::hosts)
      .def_property_readonly("nics_per_host", &Topology::nicsPerHost)
      .def_property_readonly("endpoints", &Topology::endpoints)
      .def("endpoint_node", [](const Topology& t, int rank) {
        checkRank(t, rank, "Topology.endpoint_node:");
        return t.endpointNode(rank);
      }, py::arg("rank"))
      // The nodes as columns: kind names, planes, groups, names.
      .def("_node_columns", [](const Topology& t) {
        const std::vector<plan::Node>& nodes = t.nodes();
        py::list kinds, names;
        py::array_t<int32_t> plane(static_cast<py::ssize_t>(nodes.size()));
        py::array_t<int32_t> group(static_cast<py::ssize_t>(nodes.size()));
        for (size_t i = 0; i < nodes.size(); ++i) {
          kinds.append(plan::nodeKindName(nodes[i].kind));
          names.append(nodes[i].name);
          plane.mutable_at(i) = nodes[i].plane;
          group.mutable_at(i) = nodes[i].group;
        }
        return py::make_tuple(kinds, plane, group, names);
      })
      // The links as columns: from, to, capacity (bytes/s), failed.
      .def("_link_columns", [](const Topology& t) {
        const std::vector<plan::Link>& links = t.links();
        const auto n = static_cast<py::ssize_t>(links.size());
        py::array_t<int32_t> from(n), to(n);
        py::array_t<double> capacity(n);
        py::array_t<bool> failed(n);
        for (py::ssize_t i = 0; i < n; ++i) {
          from.mutable_at(i) = links[i].from;
          to.mutable_at(i) = links[i].to;
          capacity.mutable_at(i) = links[i].capacity;
          failed.mutable_at(i) = links[i].failed;
        }
        return py::make_tuple(from, to, capacity, failed);
      })
      .def_property_readonly("num_links", [](const Topology& t) { return t.links().size(); })
      .def_property_readonly("num_nodes", [](const Topology& t) { return t.nodes().size(); })
      .def("link_between", &Topology::linkBetween, py::arg("from"), py::arg("to"))
      .def("fail_link", [](Topology& t, int link) {
        checkLink(t, link);
        py::gil_scoped_release nogil;
        t.failLink(link);
      }, py::arg("link"))
      .def("degrade_link", [](Topology& t, int link, double factor) {
        checkLink(t, link);
        py::gil_scoped_release nogil;
        t.degradeLink(link, factor);
      }, py::arg("link"), py::arg("factor"))
      .def("path_count", [](const Topology& t, int src, int dst) {
        checkRank(t, src, "Topology.path_count: source");
        checkRank(t, dst, "Topology.path_count: destination");
        return t.pathCount(src, dst);
      }, py::arg("src"), py::arg("dst"))
      .def("path", [](const Topology& t, int src, int dst, int index) {
        checkRank(t, src, "Topology.path: source");
        checkRank(t, dst, "Topology.path: destination");
        const int n = t.pathCount(src, dst);
        EFCOMM_CHECK(index >= 0 && index < n, "Topology.path: path index ", index, " is out of range [0, ", n,
                     ") for ", src, " -> ", dst);
        std::vector<int> links;
        t.path(src, dst, index, links);
        return links;
      }, py::arg("src"), py::arg("dst"), py::arg("index"));

  py::class_<FlowList>(m, "_Flows")
      .def(py::init(&flowsFromArrays), py::arg("src"), py::arg("dst"), py::arg("bytes"))
      .def("__len__", [](const FlowList& f) { return f.flows.size(); })
      // A read-only structured view (src int32, dst int32, bytes float64) that keeps this alive.
      .def_property_readonly("records", [](py::object self) {
        const FlowList& f = self.cast<const FlowList&>();
        py::array_t<Flow> a({static_cast<py::ssize_t>(f.flows.size())}, {static_cast<py::ssize_t>(sizeof(Flow))},
                            f.flows.data(), self);
        a.attr("setflags")(py::arg("write") = false);
        return a;
      });

  m.def("_collective_flows", [](const Topology& t, const std::string& pattern, double bytes,
                                const std::vector<int>& placement) {
    FlowList out;
    py::gil_scoped_release nogil;
    out.flows = plan::collectiveFlows(t, pattern, bytes, placement);
    return out;
  }, py::arg("topo"), py::arg("pattern"), py::arg("bytes"), py::arg("placement"));

  // Candidate paths per flow (pathCount), for the LP and for reachability checks.
  m.def("_path_counts", [](const Topology& t, const FlowList& f) {
    py::array_t<int64_t> out(static_cast<py::ssize_t>(f.flows.size()));
    int64_t* o = out.mutable_data();
    py::gil_scoped_release nogil;
    checkFlows(t, f.flows);
    for (size_t i = 0; i < f.flows.size(); ++i) o[i] = t.pathCount(f.flows[i].src, f.flows[i].dst);
    return out;
  }, py::arg("topo"), py::arg("flows"));

  // Every candidate path of every flow, CSR: flow i's paths are path_offsets[i] .. path_offsets[i+1],
  // path p's links links[link_offsets[p] .. link_offsets[p+1]).
  m.def("_candidate_paths", [](const Topology& t, const FlowList& f) {
    std::vector<int64_t> pathOffsets{0}, linkOffsets{0};
    std::vector<int32_t> links;
    {
      py::gil_scoped_release nogil;
      checkFlows(t, f.flows);
      std::vector<int> path;
      for (const Flow& flow : f.flows) {
        const int n = t.pathCount(flow.src, flow.dst);
        for (int p = 0; p < n; ++p) {
          t.path(flow.src, flow.dst, p, path);
          links.insert(links.end(), path.begin(), path.end());
          linkOffsets.push_back(static_cast<int64_t>(links.size()));
        }
        pathOffsets.push_back(pathOffsets.back() + n);
      }
    }
    return py::make_tuple(toArray(pathOffsets), toArray(linkOffsets), toArray(links));
  }, py::arg("topo"), py::arg("flows"));

  py::class_<PlanBox>(m, "_Plan")
      .def_property_readonly("strategy", [](const PlanBox& b) { return b.plan.strategy(); })
      .def_property_readonly("subflows", [](const PlanBox& b) { return b.plan.subflows(); })
      .def_property_readonly("max_congestion", [](const PlanBox& b) {
        py::gil_scoped_release nogil;
        return b.plan.maxCongestion();
      })
      .def("completion_time", [](const PlanBox& b) {
        py::gil_scoped_release nogil;
        return b.plan.completionTime();
      })
      .def("to_json", [](const PlanBox& b) {
        py::gil_scoped_release nogil;
        return b.plan.toJson();
      })
      .def("link_bytes", [](const PlanBox& b) { return toArray(b.plan.linkBytes()); })
      .def("paths", [](const PlanBox& b, size_t flow) { return pathsOf(b, flow); }, py::arg("flow"))
      .def("shares", [](const PlanBox& b, size_t flow) {
        EFCOMM_CHECK(flow < b.plan.flows().size(), "Plan.shares: flow index ", flow, " is out of range [0, ",
                     b.plan.flows().size(), ")");
        py::list out;
        for (const plan::PathShare& s : b.plan.sharesOf(flow)) out.append(py::make_tuple(s.path, s.fraction));
        return out;
      }, py::arg("flow"))
      // Sub-flows of every flow (1 where it is not split).
      .def("subflow_counts", [](const PlanBox& b) {
        py::array_t<int32_t> out(static_cast<py::ssize_t>(b.plan.flows().size()));
        int32_t* o = out.mutable_data();
        py::gil_scoped_release nogil;
        for (size_t i = 0; i < b.plan.flows().size(); ++i) o[i] = static_cast<int32_t>(b.plan.sharesOf(i).size());
        return out;
      });

  m.def("_plan", [](const Topology& t, const FlowList& f, const std::string& strategy, uint64_t seed) {
    py::gil_scoped_release nogil;
    checkFlows(t, f.flows);
    return PlanBox{t, plan::plan(t, f.flows, strategy, seed)};
  }, py::arg("topo"), py::arg("flows"), py::arg("strategy"), py::arg("seed"));

  m.def("_bound", [](const Topology& t, const FlowList& f) {
    py::gil_scoped_release nogil;
    checkFlows(t, f.flows);
    return plan::bound(t, f.flows);
  }, py::arg("topo"), py::arg("flows"));
}

}  // namespace efcomm::py_bind
