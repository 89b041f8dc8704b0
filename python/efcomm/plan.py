"""Collective traffic planning (docs/planning.md): which path each connection of a
collective takes through a leaf-spine or Clos fabric.

Example::

    topo = ef.plan.Topology.leaf_spine(leaves=8, spines=4, hosts_per_leaf=4)
    flows = ef.plan.collective_flows(topo, "ring_allreduce", nbytes=1 << 30)
    for strategy in ("ecmp", "balanced", "split"):
        p = ef.plan.plan(topo, flows, strategy=strategy)
        print(strategy, p.max_congestion / ef.plan.bound(topo, flows), p.completion_time())

Model (efcomm/plan.hpp): endpoints are NIC ports, one rank each (rank = host x nics_per_host +
nic); links are directed (a cable is two links), capacities in bytes per second; traffic inside a
host loads no fabric link. The congestion of a link is the bytes it carries / its capacity
(seconds at full rate); every strategy minimizes the maximum over links, :func:`bound` bounds it
from below (the cut bound, exact on uniform leaf-spine fabrics, raised elsewhere by a
multiplicative-weights dual) and :func:`lp_bound` computes the
exact splittable optimum of small instances by linear programming (scipy's HiGHS).

The command line ``efcomm plan`` (:func:`main`) compares the strategies on one fabric.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .errors import Error, InvalidArgument, _one_line

__all__ = ["Topology", "Flows", "Plan", "collective_flows", "plan", "bound", "lp_bound", "PATTERNS", "STRATEGIES",
           "LP_MAX_VARIABLES", "parse_bytes"]

#: The collectives :func:`collective_flows` knows.
PATTERNS = ("ring_allreduce", "hierarchical_allreduce", "tree_allreduce", "alltoall", "allgather", "reduce_scatter")
#: The strategies of :func:`plan`.
STRATEGIES = ("ecmp", "balanced", "split")
#: :func:`lp_bound` refuses instances with more variables (candidate paths of the fabric flows + 1).
LP_MAX_VARIABLES = 20000

_LINK_DTYPE = np.dtype([("from", np.int32), ("to", np.int32), ("capacity", np.float64), ("gbps", np.float64),
                        ("failed", np.bool_)])


def _int(v, what: str, minimum: Optional[int] = None, bits: int = 32) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise InvalidArgument(f"{what} must be an integer, got {v!r}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise InvalidArgument(f"{what} must be >= {minimum}, got {v}")
    if bits == 32 and not -2 ** 31 <= v < 2 ** 31:  # the core's ints
        raise InvalidArgument(f"{what} must be below 2**31, got {v}")
    return v


def _bool(v, what: str) -> bool:
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    raise InvalidArgument(f"{what} must be True or False, got {v!r}")


def _float(v, what: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidArgument(f"{what} must be a number, got {v!r}")
    return float(v)


# The core's messages name its C++ API (leafSpine, hostGbps, failLink); Python callers read
# this module's names.
_CPP_NAMES = {"leafSpine": "leaf_spine", "hostsPerLeaf": "hosts_per_leaf", "nicsPerHost": "nics_per_host",
              "hostGbps": "host_gbps", "uplinkGbps": "uplink_gbps", "fabricGbps": "fabric_gbps",
              "railOptimized": "rail_optimized", "failLink": "fail_link", "degradeLink": "degrade_link"}


@contextlib.contextmanager
def _python_names():
    """Re-raises the core's InvalidArgument with this module's names for its C++ identifiers."""
    try:
        yield
    except InvalidArgument as e:
        text = re.sub(r"\b(" + "|".join(_CPP_NAMES) + r")\b", lambda m: _CPP_NAMES[m.group(1)], str(e))
        raise InvalidArgument(text.replace("plan.Topology.", "Topology.")) from None


class Topology:
    """A fabric: nodes (endpoints and switches) and directed links with capacities. Build one with
    :meth:`leaf_spine`, :meth:`clos` or :meth:`from_json`; :meth:`fail_link` and
    :meth:`degrade_link` change it in place (plans already made keep the fabric they were made on).
    """

    def __init__(self, impl):
        if not isinstance(impl, _core._Topology):
            raise InvalidArgument("Topology: build one with Topology.leaf_spine, Topology.clos or Topology.from_json")
        self._t = impl
        self._names = None

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def leaf_spine(cls, leaves: int, spines: int, hosts_per_leaf: int, nics_per_host: int = 1,
                   host_gbps: float = 400, uplink_gbps: float = 400, rail_optimized: bool = False,
                   planes: int = 1) -> "Topology":
        """A 2-tier leaf-spine fabric: ``leaves`` leaves and ``spines`` spines per plane, every spine
        linked to every leaf of its plane, ``hosts_per_leaf`` hosts of ``nics_per_host`` NICs per leaf.
        ``rail_optimized``: leaves in groups of ``nics_per_host`` (rails), NIC i of the group's hosts on
        the group's leaf i. ``planes`` > 1 replicates the switch fabric, every endpoint linked to its
        leaf in every plane. Rates in Gbit/s per direction."""
        with _python_names():
            return cls(_core._Topology.leaf_spine(
                _int(leaves, "Topology.leaf_spine: leaves"), _int(spines, "Topology.leaf_spine: spines"),
                _int(hosts_per_leaf, "Topology.leaf_spine: hosts_per_leaf"),
                _int(nics_per_host, "Topology.leaf_spine: nics_per_host"),
                _float(host_gbps, "Topology.leaf_spine: host_gbps"),
                _float(uplink_gbps, "Topology.leaf_spine: uplink_gbps"),
                _bool(rail_optimized, "Topology.leaf_spine: rail_optimized"),
                _int(planes, "Topology.leaf_spine: planes")))

    @classmethod
    def clos(cls, k: int, hosts_per_leaf: int = 0, nics_per_host: int = 1, host_gbps: float = 400,
             fabric_gbps: float = 400) -> "Topology":
        """A 3-tier Clos (k-ary fat-tree): k pods of k/2 leaves and k/2 aggs, (k/2)^2 cores;
        ``hosts_per_leaf`` hosts per leaf (k/2 when 0) of ``nics_per_host`` NICs. Rates in Gbit/s."""
        with _python_names():
            return cls(_core._Topology.clos(
                _int(k, "Topology.clos: k"), _int(hosts_per_leaf, "Topology.clos: hosts_per_leaf"),
                _int(nics_per_host, "Topology.clos: nics_per_host"), _float(host_gbps, "Topology.clos: host_gbps"),
                _float(fabric_gbps, "Topology.clos: fabric_gbps")))

    @classmethod
    def from_json(cls, path_or_text: Union[str, os.PathLike]) -> "Topology":
        """A topology from the JSON :meth:`to_json` writes: the text itself (starting with ``{``) or
        the path of a file holding it."""
        if isinstance(path_or_text, (bytes, bytearray)):
            path_or_text = path_or_text.decode()
        if isinstance(path_or_text, str) and path_or_text.lstrip().startswith("{"):
            text = path_or_text
        elif isinstance(path_or_text, (str, os.PathLike)):
            try:
                with open(path_or_text) as f:
                    text = f.read()
            except OSError as e:
                raise InvalidArgument(f"Topology.from_json: {path_or_text!s} is neither JSON text (starting with "
                                      f"'{{') nor a readable file: {e.strerror or e}") from e
        else:
            raise InvalidArgument(f"Topology.from_json: expected JSON text or a path, got {type(path_or_text).__name__}")
        where = "" if text is path_or_text else f"{os.fspath(path_or_text)}: "
        try:
            impl = _core._Topology.from_json(text)
        except InvalidArgument as e:
            # The core names its C++ function, and a field of the top-level object by an empty path
            # ("plan.Topology.fromJson: : missing field"); the reader wants this name and the file.
            raise InvalidArgument(f"Topology.from_json: {where}"
                                  + re.sub(r"^plan\.Topology\.fromJson: (: )?", "", str(e))) from None
        return cls(impl)

    def to_json(self) -> str:
        """The JSON description: nodes (kind, plane, group, name), links (from, to, gbps, failed),
        hosts, nics_per_host and kind; :meth:`from_json` reads it back."""
        return self._t.to_json()

    def copy(self) -> "Topology":
        """An independent copy (cheap: the two share their state until one of them changes)."""
        return Topology(_core._Topology(self._t))

    # ---- what it is ------------------------------------------------------------------------------

    @property
    def hosts(self) -> int:
        return self._t.hosts

    @property
    def nics_per_host(self) -> int:
        return self._t.nics_per_host

    @property
    def endpoints(self) -> int:
        """Endpoints (ranks): hosts x nics_per_host."""
        return self._t.endpoints

    @property
    def nodes(self) -> List[dict]:
        """Every node: ``{"id", "kind", "plane", "group", "name"}``; kind is "endpoint", "leaf",
        "spine", "agg" or "core"."""
        kinds, plane, group, names = self._t._node_columns()
        return [{"id": i, "kind": k, "plane": int(p), "group": int(g), "name": n}
                for i, (k, p, g, n) in enumerate(zip(kinds, plane, group, names))]

    @property
    def links(self) -> np.ndarray:
        """Every directed link (its id = its index) as a numpy structured array with fields ``from``
        and ``to`` (node ids), ``capacity`` (bytes/s), ``gbps`` and ``failed``; a copy."""
        frm, to, capacity, failed = self._t._link_columns()
        out = np.empty(len(frm), _LINK_DTYPE)
        out["from"], out["to"], out["capacity"], out["failed"] = frm, to, capacity, failed
        out["gbps"] = capacity * 8 / 1e9
        return out

    @property
    def num_links(self) -> int:
        return self._t.num_links

    def endpoint_node(self, rank: int) -> int:
        """The node id of endpoint ``rank``."""
        return self._t.endpoint_node(_int(rank, "Topology.endpoint_node: rank"))

    def node_id(self, node: Union[int, str]) -> int:
        """A node's id from its id or its name ("h3.n1", "p0.leaf2", "pod1.agg0", "core5")."""
        if isinstance(node, str):
            if self._names is None:
                kinds, _, _, names = self._t._node_columns()
                self._names = {n: i for i, n in enumerate(names)}
                # One example name per kind (endpoint, leaf, spine, agg, core), for the error below.
                self._examples = list({k: n for k, n in reversed(list(zip(kinds, names)))}.values())[::-1]
            if node not in self._names:
                raise InvalidArgument(f"Topology: no node named {node!r} (names look like "
                                      f"{', '.join(self._examples)}, ...)")
            return self._names[node]
        i = _int(node, "Topology: a node (id or name)")
        if not 0 <= i < self._t.num_nodes:
            raise InvalidArgument(f"Topology: node id {i} is out of range [0, {self._t.num_nodes})")
        return i

    def link_id(self, a: Union[int, str], b: Union[int, str]) -> int:
        """The id of the link from node ``a`` to node ``b`` (ids or names)."""
        i, j = self.node_id(a), self.node_id(b)
        link = self._t.link_between(i, j)
        if link < 0:
            raise InvalidArgument(f"Topology: no link from node {a!r} to node {b!r}")
        return link

    def _link(self, args: tuple, what: str) -> int:
        if len(args) == 1:
            return _int(args[0], f"Topology.{what}: the link id")
        if len(args) == 2:
            return self.link_id(*args)
        raise InvalidArgument(f"Topology.{what}: pass a link id or the two nodes (ids or names) of the cable, "
                              f"got {len(args)} arguments")

    # ---- changes ---------------------------------------------------------------------------------

    def fail_link(self, *link) -> None:
        """Fails a cable, both directions: ``fail_link(link_id)`` or ``fail_link(node_a, node_b)``
        (ids or names). No path uses it any more."""
        with _python_names():
            self._t.fail_link(self._link(link, "fail_link"))

    def degrade_link(self, *link, factor: Optional[float] = None) -> None:
        """Scales a cable's capacity (both directions) by ``factor`` in (0, 1]:
        ``degrade_link(link_id, factor)`` or ``degrade_link(node_a, node_b, factor)``."""
        if factor is None:
            if len(link) < 2:
                raise InvalidArgument("Topology.degrade_link: pass the link (an id or two nodes) and the factor")
            link, factor = link[:-1], link[-1]
        with _python_names():
            self._t.degrade_link(self._link(link, "degrade_link"), _float(factor, "Topology.degrade_link: factor"))

    # ---- paths -----------------------------------------------------------------------------------

    def path_count(self, src: int, dst: int) -> int:
        """Candidate paths from endpoint src to endpoint dst (0: unreachable; 1 inside a host)."""
        return self._t.path_count(_int(src, "Topology.path_count: src"), _int(dst, "Topology.path_count: dst"))

    def path(self, src: int, dst: int, index: int) -> List[int]:
        """Candidate path ``index`` from endpoint src to endpoint dst, as link ids in order."""
        return self._t.path(_int(src, "Topology.path: src"), _int(dst, "Topology.path: dst"),
                            _int(index, "Topology.path: index"))

    def __repr__(self) -> str:
        return (f"Topology(hosts={self.hosts}, nics_per_host={self.nics_per_host}, endpoints={self.endpoints}, "
                f"nodes={self._t.num_nodes}, links={self.num_links})")


class Flows:
    """Connections of a collective: numpy arrays ``src``, ``dst`` (endpoints) and ``bytes``, one
    entry per flow (read-only views of the native storage). Build from arrays (``bytes`` may be one
    number for all) or with :func:`collective_flows`."""

    def __init__(self, src, dst, bytes):
        src = np.asarray(src)
        dst = np.asarray(dst)
        try:
            size = np.asarray(bytes, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidArgument(f"Flows: bytes must be a number or an array of numbers, got {bytes!r}") from None
        for name, a in (("src", src), ("dst", dst)):
            if a.ndim != 1:
                raise InvalidArgument(f"Flows: {name} must be a 1-D array, got shape {a.shape}")
            if a.size and not np.issubdtype(a.dtype, np.integer):
                raise InvalidArgument(f"Flows: {name} must hold integers (endpoint ranks), got {a.dtype}")
        if size.ndim == 0:
            size = np.full(src.shape, float(size))
        self._f = _core._Flows(src.astype(np.int64, copy=False), dst.astype(np.int64, copy=False), size)
        self.pattern = None

    @classmethod
    def _wrap(cls, impl, pattern: Optional[str] = None) -> "Flows":
        f = cls.__new__(cls)
        f._f = impl
        f.pattern = pattern
        return f

    @property
    def records(self) -> np.ndarray:
        """The flows as a read-only structured array (src int32, dst int32, bytes float64)."""
        return self._f.records

    @property
    def src(self) -> np.ndarray:
        return self.records["src"]

    @property
    def dst(self) -> np.ndarray:
        return self.records["dst"]

    @property
    def bytes(self) -> np.ndarray:
        return self.records["bytes"]

    @property
    def total_bytes(self) -> float:
        return float(self.bytes.sum())

    def __len__(self) -> int:
        return len(self._f)

    def __repr__(self) -> str:
        what = f"{self.pattern}, " if self.pattern else ""
        return f"Flows({what}{len(self)} flows, {self.total_bytes:.6g} bytes)"


def _as_flows(flows) -> Flows:
    if isinstance(flows, Flows):
        return flows
    if isinstance(flows, tuple) and len(flows) == 3:
        return Flows(*flows)
    raise InvalidArgument(f"expected Flows (from collective_flows or Flows(src, dst, bytes)), got "
                          f"{type(flows).__name__}")


def _as_topology(topo) -> Topology:
    if not isinstance(topo, Topology):
        raise InvalidArgument(f"expected a Topology, got {type(topo).__name__}")
    return topo


def collective_flows(topo: Topology, pattern: str, nbytes: float, placement: Optional[Sequence[int]] = None) -> Flows:
    """The flows of collective ``pattern`` (one of :data:`PATTERNS`) among n ranks on endpoints
    ``placement[r]`` (None: rank r on endpoint r, every endpoint), each rank holding ``nbytes``:
    ring_allreduce (r -> r+1, 2(n-1)/n x nbytes each), hierarchical_allreduce (a ring inside each
    host, then per NIC index a ring over the hosts), tree_allreduce (a binary tree, up and down,
    nbytes each), alltoall (every ordered pair, nbytes/n), allgather (every ordered pair, nbytes:
    the Reducer's allgather of payloads), reduce_scatter (every ordered pair, 2 x nbytes/n)."""
    topo = _as_topology(topo)
    if not isinstance(pattern, str):
        raise InvalidArgument(f"collective_flows: pattern must be a string (one of {', '.join(PATTERNS)}), "
                              f"got {pattern!r}")
    nbytes = _float(nbytes, "collective_flows: nbytes")
    if placement is None:
        ranks = []
    else:
        arr = np.asarray(placement)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InvalidArgument("collective_flows: placement must be a sequence of endpoint ids (integers), "
                                  f"got {placement!r:.80}")
        ranks = [int(v) for v in arr]
        if not ranks:
            raise InvalidArgument("collective_flows: placement is empty (pass None for every endpoint)")
    return Flows._wrap(_core._collective_flows(topo._t, pattern, nbytes, ranks), pattern)


class Plan:
    """The paths chosen for every flow by :func:`plan`; ``topology`` is the fabric it was made on
    (a snapshot)."""

    def __init__(self, impl, topology: Topology, flows: Flows, seed: int):
        self._p = impl
        self.topology = topology
        self.flows = flows
        self.seed = seed
        self._max = None
        self._completion = None
        self._link_bytes = None

    @property
    def strategy(self) -> str:
        return self._p.strategy

    @property
    def max_congestion(self) -> float:
        """max over links of carried bytes / capacity: seconds at full rate."""
        if self._max is None:
            self._max = self._p.max_congestion
        return self._max

    def completion_time(self) -> float:
        """The collective's completion time under flow-level max-min fair sharing (every sub-flow
        starts at 0, progressive filling until the last one ends), seconds."""
        if self._completion is None:
            self._completion = self._p.completion_time()
        return self._completion

    def paths(self, flow_index: int) -> List[Tuple[List[int], float]]:
        """Flow ``flow_index``'s paths: ``[(link ids in order, fraction of its bytes)]``; the
        fractions sum to 1 (one entry, fraction 1, for an unsplit flow; an empty path inside a host)."""
        return self._p.paths(self._index(flow_index))

    def shares(self, flow_index: int) -> List[Tuple[int, float]]:
        """Flow ``flow_index``'s shares as ``[(candidate path index, fraction)]`` (see
        :meth:`Topology.path`)."""
        return self._p.shares(self._index(flow_index))

    def _index(self, i) -> int:
        i = _int(i, "Plan: flow index")
        n = len(self.flows)
        if not -n <= i < n:
            raise IndexError(f"Plan: flow index {i} is out of range for {n} flows")
        return i % n

    @property
    def subflows(self) -> int:
        """Sub-flows in all: len(flows) when no flow is split."""
        return self._p.subflows

    @property
    def subflow_counts(self) -> np.ndarray:
        """Sub-flows of each flow (1 where it is not split)."""
        return self._p.subflow_counts()

    @property
    def link_bytes(self) -> np.ndarray:
        """Bytes carried per link (indexed by link id)."""
        if self._link_bytes is None:
            self._link_bytes = self._p.link_bytes()
            self._link_bytes.setflags(write=False)
        return self._link_bytes

    @property
    def link_congestion(self) -> np.ndarray:
        """Per link, bytes carried / capacity (seconds at full rate)."""
        return self.link_bytes / self.topology.links["capacity"]

    def to_json(self) -> str:
        """``{"strategy", "max_congestion", "subflows", "flows": [{"src", "dst", "bytes", "paths":
        [{"links", "fraction"}]}]}``: every connection's path(s), for a fabric's steering layer."""
        return self._p.to_json()

    def __repr__(self) -> str:
        return (f"Plan(strategy={self.strategy!r}, flows={len(self.flows)}, subflows={self.subflows}, "
                f"max_congestion={self.max_congestion:.6g})")


def plan(topo: Topology, flows, strategy: str = "split", seed: int = 0) -> Plan:
    """Plans ``flows`` on ``topo``: "ecmp" (each flow on one candidate path drawn by a hash of
    (src, dst, seed)), "balanced" (each flow on one path, minimizing the maximum congestion,
    C4P-style) or "split" (the splittable optimum with the fewest sub-flows)."""
    topo, flows = _as_topology(topo), _as_flows(flows)
    if not isinstance(strategy, str):
        raise InvalidArgument(f"plan: strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    seed = _int(seed, "plan: seed", 0, bits=64)
    if seed >= 1 << 64:
        raise InvalidArgument(f"plan: seed must be < 2^64, got {seed}")
    snapshot = topo.copy()
    return Plan(_core._plan(snapshot._t, flows._f, strategy, seed), snapshot, flows, seed)


def bound(topo: Topology, flows) -> float:
    """A lower bound on the maximum congestion of any plan, splitting allowed, seconds: the cut
    bound over every endpoint's links and every leaf's or pod's uplinks (the splittable optimum on
    uniform leaf-spine fabrics), and elsewhere the larger of it and a multiplicative-weights dual
    bound, within a few % of the optimum where the instance is small enough (docs/planning.md).
    :func:`lp_bound` is exact on small instances."""
    topo, flows = _as_topology(topo), _as_flows(flows)
    return _core._bound(topo._t, flows._f)


def single_path_bound(topo: Topology, flows) -> float:
    """A lower bound on the maximum congestion of any plan that keeps each flow on one path
    (ecmp, balanced), seconds: the larger of :func:`bound` and, over the flows, the flow's bytes
    over the capacity of its widest candidate path. Where one flow alone outweighs what splitting
    would spread over parallel links (two ranks on a fabric of 8 spines), no single-path plan can
    come near the splittable bound; this is the bound such plans are measured against."""
    topo, flows = _as_topology(topo), _as_flows(flows)
    best = bound(topo, flows)
    cap = topo.links["capacity"]
    widest = {}
    for s, d, b in zip(flows.src.tolist(), flows.dst.tolist(), flows.bytes.tolist()):
        if b <= 0:
            continue
        if (s, d) not in widest:
            counts = topo.path_count(s, d)
            widest[(s, d)] = max((min((cap[link] for link in topo.path(s, d, i)), default=math.inf)
                                  for i in range(counts)), default=math.inf)
        best = max(best, b / widest[(s, d)])
    return best


def lp_bound(topo: Topology, flows, max_variables: int = LP_MAX_VARIABLES) -> float:
    """The exact optimum of the splittable problem, seconds, by linear programming (scipy's HiGHS):
    a fraction per (flow, candidate path) and t; minimize t subject to every flow's fractions
    summing to 1 and every link's bytes / capacity <= t. For small instances: raises
    :class:`InvalidArgument` above ``max_variables`` variables (use :func:`bound`).

    The value returned is certified by LP duality: the solver's link prices give a lower bound
    computed here exactly (weak duality), so it never exceeds the true optimum by more than
    rounding; the primal solution found is checked to be within 1e-6 of it."""
    topo, flows = _as_topology(topo), _as_flows(flows)
    max_variables = _int(max_variables, "lp_bound: max_variables", 1, bits=64)
    counts = _core._path_counts(topo._t, flows._f)
    unreachable = np.flatnonzero(counts == 0)
    if unreachable.size:
        i = int(unreachable[0])
        raise InvalidArgument(f"lp_bound: flow {i} ({flows.src[i]} -> {flows.dst[i]}) has no path (failed links?)"
                              f"{f' nor do {unreachable.size - 1} others' if unreachable.size > 1 else ''}")
    nph = topo.nics_per_host
    # Flows inside a host and empty flows load no link: they leave the LP.
    keep = np.flatnonzero((flows.bytes > 0) & (flows.src // nph != flows.dst // nph))
    nvars = int(counts[keep].sum()) + 1
    if nvars > max_variables:
        raise InvalidArgument(f"lp_bound: {nvars} variables ({keep.size} fabric flows, {nvars - 1} candidate paths) "
                              f"exceed the limit of {max_variables}: the LP is for small instances; use "
                              "ef.plan.bound() (the cut bound), exact on uniform leaf-spine fabrics")
    if keep.size == 0:
        return 0.0
    try:
        from scipy.optimize import linprog
        from scipy.sparse import coo_matrix
    except ImportError as e:
        raise ImportError(f"ef.plan.lp_bound needs scipy (pip install scipy): {e}") from e

    sub = Flows(flows.src[keep], flows.dst[keep], flows.bytes[keep])
    path_off, link_off, links = _core._candidate_paths(topo._t, sub._f)
    nflows, npaths = keep.size, int(path_off[-1])
    capacity = topo.links["capacity"]
    path_flow = np.repeat(np.arange(nflows), np.diff(path_off))      # flow of each path
    entry_path = np.repeat(np.arange(npaths), np.diff(link_off))      # path of each (path, link) entry
    entry_coef = sub.bytes[path_flow[entry_path]] / capacity[links]   # seconds per unit fraction
    scale = float(entry_coef.max())
    used, row = np.unique(links, return_inverse=True)                 # LP rows: the links some path uses
    # A_ub [x; t] <= 0: sum over entries of coef x / scale - t, per used link.
    a_ub = coo_matrix((np.concatenate([entry_coef / scale, -np.ones(used.size)]),
                       (np.concatenate([row, np.arange(used.size)]),
                        np.concatenate([entry_path, np.full(used.size, npaths)]))),
                      shape=(used.size, npaths + 1)).tocsr()
    a_eq = coo_matrix((np.ones(npaths), (path_flow, np.arange(npaths))), shape=(nflows, npaths + 1)).tocsr()
    c = np.zeros(npaths + 1)
    c[-1] = 1.0
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(used.size), A_eq=a_eq, b_eq=np.ones(nflows), bounds=(0, None),
                  method="highs")
    if res.status != 0:
        raise Error(f"lp_bound: the LP solver failed (status {res.status}): {res.message}")

    # Weak duality: for link prices w >= 0 summing to 1, sum over flows of the cheapest candidate
    # path's price (sum of w x bytes / capacity over its links) is <= the optimum.
    w = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
    lower = 0.0
    if w.sum() > 0:
        w /= w.sum()
        path_price = np.zeros(npaths)
        np.add.at(path_price, entry_path, entry_coef * w[row])
        lower = float(np.minimum.reduceat(path_price, path_off[:-1]).sum())
    # The primal solution, fractions renormalized per flow, is a feasible plan: an upper bound.
    x = np.maximum(res.x[:npaths], 0.0)
    x /= np.bincount(path_flow, weights=x, minlength=nflows)[path_flow]
    load = np.zeros(used.size)
    np.add.at(load, row, entry_coef * x[entry_path])
    upper = float(load.max())
    if not lower <= upper * (1 + 1e-12) or upper - lower > 1e-6 * upper:
        raise Error(f"lp_bound: the LP solution is not accurate (certified lower bound {lower:.12g}, feasible plan "
                    f"{upper:.12g}); report this instance")
    return lower


# ---- command line: efcomm plan -------------------------------------------------------------------

DESCRIPTION = ("Plans the connections of a collective on a leaf-spine or Clos fabric with each strategy (ecmp over "
               "several hash seeds, balanced, split) and compares them: maximum link congestion against the bound, "
               "the simulated completion time, sub-flows, and the distribution of link loads.")

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(text: str) -> float:
    """A size: "1GiB", "512MiB", "100MB", "1e9", "4096"; > 0."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidArgument(f"bad size {text!r}: use a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB)")
    v = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not v > 0 or not math.isfinite(v):
        raise InvalidArgument(f"bad size {text!r}: must be > 0")
    return v


def _fmt_bytes(v: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= size:
            return f"{v / size:.4g} {unit}"
    return f"{v:.4g} B"


_KEYS = {
    "leaf_spine": {"leaves": int, "spines": int, "hosts_per_leaf": int, "nics_per_host": int, "host_gbps": float,
                   "uplink_gbps": float, "rail_optimized": bool, "planes": int},
    "clos": {"k": int, "hosts_per_leaf": int, "nics_per_host": int, "host_gbps": float, "fabric_gbps": float},
}
_ALIASES = {"nics": "nics_per_host", "hosts": "hosts_per_leaf", "rail": "rail_optimized"}
_DEFAULT_TOPOLOGY = "leaf_spine:leaves=8,spines=4,hosts_per_leaf=4"


def _parse_value(kind, key: str, text: str, spec: str):
    try:
        if kind is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on", ""):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return kind(text)
    except ValueError:
        what = {int: "an integer", float: "a number", bool: "true or false"}[kind]
        raise InvalidArgument(f"--topology {spec!r}: {key} must be {what}, got {text!r}") from None


def _flag(key: str) -> str:
    """The ``efcomm plan`` option that sets a topology key: --nics for nics_per_host, else --key."""
    return "--nics" if key == "nics_per_host" else "--" + key.replace("_", "-")


def parse_topology(spec: str, overrides: Optional[dict] = None) -> Tuple[Topology, dict]:
    """A topology from a spec "leaf_spine:leaves=8,spines=4,hosts_per_leaf=4" or "clos:k=8"
    (keys as the constructors' arguments; nics = nics_per_host), ``overrides`` (values not None)
    applied on top; returns it and the parameters."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower().replace("-", "_")
    if kind == "leafspine":
        kind = "leaf_spine"
    if kind not in _KEYS:
        raise InvalidArgument(f"--topology {spec!r}: unknown kind {kind!r}: use leaf_spine:leaves=L,spines=S,"
                              "hosts_per_leaf=H[,...] or clos:k=K[,...]")
    keys = _KEYS[kind]
    params = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = _ALIASES.get(key.strip(), key.strip())
        if key not in keys:
            raise InvalidArgument(f"--topology {spec!r}: unknown key {key!r} for {kind} (known: {', '.join(keys)})")
        if not eq and keys[key] is not bool:
            raise InvalidArgument(f"--topology {spec!r}: {key} needs a value ({key}=...)")
        if key in params:
            raise InvalidArgument(f"--topology {spec!r}: {key} given twice")
        params[key] = _parse_value(keys[key], key, value.strip(), spec)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in keys:
            raise InvalidArgument(f"{_flag(key)} does not apply to a {kind} topology (its keys: {', '.join(keys)})")
        if key in params and params[key] != value:
            raise InvalidArgument(f"{key} is given both in --topology ({params[key]}) and as a flag ({value})")
        params[key] = value
    if kind == "leaf_spine":
        missing = [k for k in ("leaves", "spines", "hosts_per_leaf") if k not in params]
        if missing:
            raise InvalidArgument(f"--topology {spec!r}: leaf_spine needs {', '.join(missing)}")
        return Topology.leaf_spine(**params), {"kind": kind, **params}
    if "k" not in params:
        raise InvalidArgument(f"--topology {spec!r}: clos needs k (e.g. clos:k=8)")
    return Topology.clos(**params), {"kind": kind, **params}


def _switch_cables(topo: Topology) -> np.ndarray:
    """One link id per working switch-to-switch cable (the direction with from < to)."""
    kinds, _, _, _ = topo._t._node_columns()
    switch = np.array([k != "endpoint" for k in kinds])
    links = topo.links
    ok = switch[links["from"]] & switch[links["to"]] & ~links["failed"] & (links["from"] < links["to"])
    return np.flatnonzero(ok)


def fail_random_links(topo: Topology, count: int, seed: int, flows: Flows) -> List[int]:
    """Fails ``count`` random switch-to-switch cables of ``topo`` in place (seeded), skipping any
    whose loss would leave a flow without a path; returns the link ids failed."""
    rng = np.random.default_rng(seed)
    failed = []
    for link in rng.permutation(_switch_cables(topo)):
        if len(failed) == count:
            break
        trial = topo.copy()
        trial.fail_link(int(link))
        if (_core._path_counts(trial._t, flows._f) == 0).any():
            continue
        topo._t = trial._t
        failed.append(int(link))
    if len(failed) < count:
        raise InvalidArgument(f"--fail-links {count}: only {len(failed)} switch-to-switch cables can fail without "
                              "disconnecting a flow of the collective")
    return failed


#: ``efcomm plan`` simulates completion times of plans up to this many sub-flows by default (an ecmp
#: all-to-all of 16k flows takes about a second here, of 65k flows fifteen).
SIM_MAX_SUBFLOWS = 20000

#: Link-load histogram bins, as fractions of the bound: 0, (0, 25%], ..., > 200%.
HIST_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def _hist_labels() -> List[str]:
    e = [f"{int(round(v * 100))}%" for v in HIST_EDGES]
    return ["0 (idle)"] + [f"{'>0' if i == 0 else e[i]}-{e[i + 1]}" for i in range(len(e) - 1)] + [f"> {e[-1]}"]


def load_histogram(congestion: np.ndarray, reference: float) -> List[int]:
    """Counts of links per bin of congestion / reference (bins :data:`HIST_EDGES`; a value within
    1e-9 relative above an edge counts below it)."""
    r = congestion / reference
    counts = [int(np.count_nonzero(r <= 0))]
    for lo, hi in zip(HIST_EDGES[:-1], HIST_EDGES[1:]):
        counts.append(int(np.count_nonzero((r > lo * (1 + 1e-9)) & (r <= hi * (1 + 1e-9)))))
    counts.append(int(np.count_nonzero(r > HIST_EDGES[-1] * (1 + 1e-9))))
    return counts


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .bench._util import nonnegative_int, png_path, writable_file

    topo = p.add_argument_group("fabric")
    src = topo.add_mutually_exclusive_group()
    src.add_argument("--topology", metavar="SPEC", default=None,
                     help=f"leaf_spine:leaves=L,spines=S,hosts_per_leaf=H[,nics_per_host=N,host_gbps=G,uplink_gbps=G,"
                          f"rail_optimized=1,planes=P] or clos:k=K[,hosts_per_leaf=H,nics_per_host=N,host_gbps=G,"
                          f"fabric_gbps=G] (default {_DEFAULT_TOPOLOGY})")
    src.add_argument("--topology-json", metavar="FILE", help="a topology as ef.plan.Topology.to_json() writes it")
    topo.add_argument("--nics", type=int, metavar="N", help="NICs per host (nics_per_host)")
    topo.add_argument("--rail-optimized", action="store_const", const=True, default=None,
                      help="leaf-spine: NIC i of every host of a rail group on the group's leaf i")
    topo.add_argument("--planes", type=int, metavar="P", help="leaf-spine: switch planes (2: dual-plane)")
    topo.add_argument("--host-gbps", type=float, metavar="G", help="endpoint link rate, Gbit/s per direction")
    topo.add_argument("--uplink-gbps", type=float, metavar="G", help="leaf-spine: leaf-spine link rate, Gbit/s")
    topo.add_argument("--fabric-gbps", type=float, metavar="G", help="clos: switch-switch link rate, Gbit/s")
    topo.add_argument("--fail-links", type=int, default=0, metavar="N",
                      help="fail N random switch-to-switch cables (seeded by --seed; never disconnecting a flow)")
    work = p.add_argument_group("traffic")
    work.add_argument("--pattern", default="ring_allreduce", choices=PATTERNS, help="the collective (default %(default)s)")
    work.add_argument("--bytes", default="1GiB", metavar="SIZE", help="data per rank, e.g. 1GiB, 256MB (default %(default)s)")
    work.add_argument("--ranks", type=int, metavar="N", help="ranks of the collective (default: every endpoint)")
    work.add_argument("--placement", choices=("linear", "random"), default="linear",
                      help="rank r on endpoint r, or on a random endpoint (seeded by --seed) (default %(default)s)")
    how = p.add_argument_group("planning")
    how.add_argument("--strategies", default=",".join(STRATEGIES), metavar="LIST",
                     help="comma-separated, of ecmp, balanced, split (default %(default)s)")
    how.add_argument("--ecmp-seeds", type=int, default=10, metavar="N", help="ecmp hash seeds to try (default %(default)s)")
    how.add_argument("--seed", type=int, default=0, help="first ecmp seed; seed of --fail-links and --placement random")
    how.add_argument("--lp", action="store_true", help="also solve the LP optimum (scipy; small instances only)")
    how.add_argument("--sim-max-subflows", type=nonnegative_int, default=SIM_MAX_SUBFLOWS, metavar="N",
                     help="simulate completion times only for plans of at most N sub-flows: the simulation's cost "
                          "grows with the sub-flows and their distinct finishing times (default %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")
    out.add_argument("--plot", type=png_path, metavar="FILE.png", help="write a PNG of the link loads per strategy (needs matplotlib)")
    out.add_argument("--export", type=writable_file, metavar="FILE.json",
                     help="write every connection's path(s) of one strategy as JSON")
    out.add_argument("--export-strategy", choices=STRATEGIES, default=None,
                     help="the strategy --export writes (default: split if planned, else the last one; ecmp: the first seed)")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _build(args) -> Tuple[Topology, dict]:
    overrides = {"nics_per_host": args.nics, "rail_optimized": args.rail_optimized, "planes": args.planes,
                 "host_gbps": args.host_gbps, "uplink_gbps": args.uplink_gbps, "fabric_gbps": args.fabric_gbps}
    if args.topology_json:
        given = [k for k, v in overrides.items() if v is not None]
        if given:
            raise InvalidArgument(f"--topology-json describes the whole fabric: drop {_flag(given[0])}")
        topo = Topology.from_json(args.topology_json)
        return topo, {"kind": "json", "file": args.topology_json}
    return parse_topology(args.topology or _DEFAULT_TOPOLOGY, overrides)


def run(args, progress: bool = False) -> dict:
    """Plans and measures what ``args`` (the parsed ``efcomm plan`` arguments) ask for; raises
    :class:`InvalidArgument` for bad input."""
    from .bench._util import Progress

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise InvalidArgument(f"--strategies {args.strategies!r}: use a comma-separated list of {', '.join(STRATEGIES)}")
    strategies = list(dict.fromkeys(strategies))
    if args.ecmp_seeds < 1:
        raise InvalidArgument(f"--ecmp-seeds must be >= 1, got {args.ecmp_seeds}")
    if args.fail_links < 0:
        raise InvalidArgument(f"--fail-links must be >= 0, got {args.fail_links}")
    if args.seed < 0:
        raise InvalidArgument(f"--seed must be >= 0, got {args.seed}")
    last = args.seed + (args.ecmp_seeds - 1 if "ecmp" in strategies else 0)
    if last >= 1 << 64:  # the planner's seeds are uint64s
        what = (f"--seed {args.seed} with --ecmp-seeds {args.ecmp_seeds}: ecmp plans with seeds --seed to --seed + "
                f"{args.ecmp_seeds - 1}, which must be" if last > args.seed else f"--seed {args.seed} must be")
        raise InvalidArgument(f"{what} below 2^64: give --seed at most {(1 << 64) - 1 - (last - args.seed)}")
    nbytes = parse_bytes(args.bytes)
    export_strategy = args.export_strategy or ("split" if "split" in strategies else strategies[-1])
    if args.export and export_strategy not in strategies:
        raise InvalidArgument(f"--export-strategy {export_strategy} is not among --strategies {args.strategies}")

    topo, params = _build(args)
    placement = None
    ranks = args.ranks if args.ranks is not None else topo.endpoints
    if not 2 <= ranks <= topo.endpoints:
        raise InvalidArgument(f"--ranks must be in [2, {topo.endpoints}] (the fabric's endpoints), got {ranks}")
    if args.placement == "random":
        placement = np.random.default_rng(args.seed).permutation(topo.endpoints)[:ranks].tolist()
    elif ranks < topo.endpoints:
        placement = list(range(ranks))
    flows = collective_flows(topo, args.pattern, nbytes, placement)
    notes = []
    failed = fail_random_links(topo, args.fail_links, args.seed, flows) if args.fail_links else []

    links = topo.links
    usable = ~links["failed"]
    nph = topo.nics_per_host
    fabric = int(np.count_nonzero((flows.src // nph) != (flows.dst // nph)))
    res = {
        "topology": {**params, "endpoints": topo.endpoints, "hosts": topo.hosts, "nics_per_host": nph,
                     "links": topo.num_links, "failed_links": failed},
        "pattern": args.pattern, "bytes": nbytes, "ranks": ranks, "placement": args.placement,
        "flows": len(flows), "fabric_flows": fabric, "total_bytes": flows.total_bytes,
    }
    t0 = time.perf_counter()
    res["bound_s"] = bound(topo, flows)
    res["bound_seconds"] = time.perf_counter() - t0
    res["lp_bound_s"] = None
    if args.lp:
        try:
            res["lp_bound_s"] = lp_bound(topo, flows)
        except (InvalidArgument, ImportError) as e:
            notes.append(f"LP optimum skipped: {e}")
    ref = res["bound_s"]

    seeds = [args.seed + i for i in range(args.ecmp_seeds)]
    jobs = [(s, seed) for s in strategies for seed in (seeds if s == "ecmp" else [args.seed])]
    bar = Progress(2 * len(jobs), enabled=None if progress else False)
    rows, plans, skipped_sim = [], {}, False
    try:
        per = {s: [] for s in strategies}
        for strategy, seed in jobs:
            bar.step(f"plan {strategy}" + (f" seed {seed}" if strategy == "ecmp" else ""))
            t0 = time.perf_counter()
            p = plan(topo, flows, strategy, seed)
            took = time.perf_counter() - t0
            if strategy not in plans:
                plans[strategy] = p
            bar.step(f"simulate {strategy}" + (f" seed {seed}" if strategy == "ecmp" else ""))
            completion = None
            if p.subflows <= args.sim_max_subflows:
                completion = p.completion_time()
            else:
                skipped_sim = True
            counts = p.subflow_counts
            per[strategy].append({"seed": seed, "max_congestion_s": p.max_congestion,
                                  "ratio": p.max_congestion / ref if ref > 0 else None, "completion_s": completion,
                                  "subflows": p.subflows, "max_subflows_per_flow": int(counts.max()) if len(counts) else 0,
                                  "split_flows": int(np.count_nonzero(counts > 1)), "plan_seconds": took})
    finally:
        bar.close()
    if skipped_sim:
        notes.append(f"completion times not simulated for plans of more than {args.sim_max_subflows} sub-flows "
                     "(--sim-max-subflows)")
    for strategy in strategies:
        runs = per[strategy]
        row = dict(runs[0])
        row["strategy"] = strategy
        if strategy == "ecmp":
            row["seeds"] = [r["seed"] for r in runs]
            row["over_seeds"] = {k: (_stats([r[k] for r in runs]) if runs[0][k] is not None else None)
                                 for k in ("max_congestion_s", "ratio", "completion_s", "plan_seconds")}
            row["runs"] = runs
            for k in ("max_congestion_s", "ratio", "completion_s", "plan_seconds"):
                if row["over_seeds"][k] is not None:
                    row[k] = row["over_seeds"][k]["mean"]
            del row["seed"]
        rows.append(row)
    res["strategies"] = rows

    hist = {"edges_of_bound": list(HIST_EDGES), "labels": _hist_labels(), "links": int(usable.sum()), "counts": {}}
    loads = {}
    for strategy in strategies:
        congestion = plans[strategy].link_congestion[usable]
        loads[strategy] = congestion
        if ref > 0:
            hist["counts"][strategy] = load_histogram(congestion, ref)
    if ref <= 0:
        notes.append("no traffic crosses the fabric: no link-load histogram")
    res["histogram"] = hist

    res["export"] = None
    if args.export:
        with open(args.export, "w") as f:
            f.write(plans[export_strategy].to_json())
        res["export"] = {"path": os.path.abspath(args.export), "strategy": export_strategy,
                         "seed": plans[export_strategy].seed}
    res["plot"] = None
    if args.plot:
        res["plot"] = write_plot(loads, ref, res, args.plot)
    res["notes"] = notes
    return res


def write_plot(loads: dict, reference: float, res: dict, path: str) -> dict:
    """A PNG of the link loads per strategy: every link's congestion, sorted (left), and the
    histogram of loads against the bound (right). Returns {"path"} or {"skipped": why}."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return {"path": None, "skipped": "matplotlib is not installed (pip install matplotlib)"}
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    # Idle links (most of a large fabric under a ring) would flatten both panels: left shows the
    # links some strategy loads, right leaves the idle bin out and counts it in the legend.
    loaded = max((int(np.count_nonzero(c > 0)) for c in loads.values()), default=0)
    for strategy, c in loads.items():
        label = strategy + (" (first seed)" if strategy == "ecmp" else "")
        y = np.sort(c)[::-1][:max(loaded, 1)] * 1e3
        left.step(np.arange(1, len(y) + 1), y, where="post", label=label, linewidth=1.4)
    if reference > 0:
        left.axhline(reference * 1e3, color="black", linestyle="--", linewidth=1, label="bound")
    left.set_xlabel(f"loaded links, most loaded first ({loaded} of {res['histogram']['links']})")
    left.set_ylabel("congestion (ms at full rate)")
    left.set_xscale("log" if loaded > 200 else "linear")
    left.set_ylim(bottom=0)
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    counts = res["histogram"]["counts"]
    labels = res["histogram"]["labels"][1:]
    if counts:
        width = 0.8 / len(counts)
        x = np.arange(len(labels))
        for i, (strategy, cnt) in enumerate(counts.items()):
            right.bar(x + (i - (len(counts) - 1) / 2) * width, cnt[1:], width, label=f"{strategy} ({cnt[0]} idle)")
        right.set_xticks(x)
        right.set_xticklabels(labels, rotation=30, fontsize=8)
        right.set_xlabel("link congestion / bound")
        right.set_ylabel("links")
        right.legend(fontsize=8)
    else:
        right.set_axis_off()
    t = res["topology"]
    fig.suptitle(f"efcomm plan: {res['pattern']}, {_fmt_bytes(res['bytes'])} per rank, {t['endpoints']} endpoints "
                 f"({t['kind']})", fontsize=10)
    fig.savefig(path, dpi=110)
    return {"path": os.path.abspath(path), "skipped": None}


def _g(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def render_text(res: dict) -> str:
    from .bench._util import format_table

    t = res["topology"]
    desc = ", ".join(f"{k}={v}" for k, v in t.items()
                     if k not in ("kind", "endpoints", "hosts", "nics_per_host", "links", "failed_links"))
    lines = [f"fabric: {t['kind']} {desc}: {t['endpoints']} endpoints ({t['hosts']} hosts x {t['nics_per_host']} "
             f"NIC{'s' if t['nics_per_host'] != 1 else ''}), {t['links']} links" + (f", {len(t['failed_links'])} cables failed" if t["failed_links"] else ""),
             f"traffic: {res['pattern']}, {_fmt_bytes(res['bytes'])} per rank, {res['ranks']} ranks "
             f"({res['placement']} placement): {res['flows']} flows, {res['fabric_flows']} across hosts, "
             f"{_fmt_bytes(res['total_bytes'])} in all",
             f"lower bound: {_g(res['bound_s'])} s" + (f"; LP optimum: {_g(res['lp_bound_s'])} s"
                                                      if res["lp_bound_s"] is not None else ""), ""]
    headers = ["strategy", "max congestion (s)", "ratio to bound", "completion (s)", "sub-flows", "split flows",
               "plan (ms)"]
    rows = []
    for r in res["strategies"]:
        if r["strategy"] == "ecmp":
            o = r["over_seeds"]

            def rng(k, fmt="{:.4g}", scale=1.0, o=o):
                s = o[k]
                if s is None:
                    return "-"
                lo, mean, hi = (fmt.format(s[q] * scale) for q in ("min", "mean", "max"))
                return f"{mean} ({lo}-{hi})"
            rows.append([f"ecmp ({len(r['seeds'])} seeds)", rng("max_congestion_s"), rng("ratio", "{:.3f}"),
                         rng("completion_s"), str(r["subflows"]), str(r["split_flows"]),
                         rng("plan_seconds", "{:.3g}", 1e3)])
        else:
            rows.append([r["strategy"], _g(r["max_congestion_s"]), "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
                         _g(r["completion_s"]), str(r["subflows"]), str(r["split_flows"]),
                         f"{r['plan_seconds'] * 1e3:.3g}"])
    lines.append(format_table(headers, rows, "lrrrrrr"))
    if any(r["strategy"] == "ecmp" for r in res["strategies"]):
        lines.append("ecmp: mean (min-max) over the seeds")
    h = res["histogram"]
    if h["counts"]:
        lines += ["", f"link loads ({h['links']} working links, congestion as a fraction of the bound"
                      + ("; ecmp: its first seed)" if "ecmp" in h["counts"] else ")")]
        names = list(h["counts"])
        hrows = [[label] + [str(h["counts"][s][i]) for s in names] for i, label in enumerate(h["labels"])]
        lines.append(format_table(["load"] + names, hrows, "l" + "r" * len(names)))
    if res["export"]:
        e = res["export"]
        lines.append(f"\npaths of {e['strategy']} written to {e['path']}")
    p = res["plot"]
    if p:
        lines.append(f"plot: {p['path']}" if p["path"] else f"plot skipped: {p['skipped']}")
    lines += [f"NOTE: {n}" for n in res["notes"]]
    return "\n".join(lines)


def main(args) -> int:
    """``efcomm plan``: 0 on success, 2 for bad input."""
    from .bench._util import json_safe

    try:
        res = run(args, progress=args.progress)
    except (InvalidArgument, OSError) as e:
        print(f"efcomm plan: error: {_one_line(e)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_safe(res), indent=2))
    else:
        print(render_text(res))
    return 0
