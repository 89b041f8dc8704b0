"""ef.plan: topologies and their JSON, the flows of collectives, the strategies' plans checked link by
link, the cut bound and the LP optimum (split reaches it exactly on leaf-spine fabrics with equal
flows, on randomized instances), and the ``efcomm plan`` command line."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import has_module

import efcomm as ef
from efcomm.cli import main

P = ef.plan
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIB = float(1 << 30)
needs_scipy = pytest.mark.skipif(not has_module("scipy"), reason="scipy is not installed (lp_bound)")


def check_plan(topo, flows, p):
    """Every flow's paths lead from its source endpoint to its destination over working links, the
    fractions sum to 1, and the plan's link bytes and maximum congestion are what the paths carry."""
    links = topo.links
    expect = np.zeros(topo.num_links)
    for i in range(len(flows)):
        src, dst, size = int(flows.src[i]), int(flows.dst[i]), float(flows.bytes[i])
        paths = p.paths(i)
        assert paths, f"flow {i} has no path"
        assert sum(f for _, f in paths) == pytest.approx(1.0, rel=1e-12, abs=1e-12)
        for path, fraction in paths:
            assert fraction > 0
            if src // topo.nics_per_host == dst // topo.nics_per_host:
                assert path == []  # inside the host
                continue
            assert links["from"][path[0]] == topo.endpoint_node(src)
            assert links["to"][path[-1]] == topo.endpoint_node(dst)
            for a, b in zip(path, path[1:]):
                assert links["to"][a] == links["from"][b], f"flow {i}: links {a} and {b} do not connect"
            assert not links["failed"][path].any(), f"flow {i} uses a failed link"
            np.add.at(expect, path, size * fraction)
    np.testing.assert_allclose(p.link_bytes, expect, rtol=1e-9, atol=1e-6)
    assert p.max_congestion == pytest.approx((expect / links["capacity"]).max(), rel=1e-9)
    assert p.subflows == int(p.subflow_counts.sum()) >= len(flows)


# ---- topologies -------------------------------------------------------------------------------

def test_leaf_spine_shape():
    t = P.Topology.leaf_spine(leaves=4, spines=2, hosts_per_leaf=2)
    assert (t.hosts, t.nics_per_host, t.endpoints) == (8, 1, 8)
    kinds = [n["kind"] for n in t.nodes]
    assert (kinds.count("endpoint"), kinds.count("leaf"), kinds.count("spine")) == (8, 4, 2)
    assert t.num_links == len(t.links) == 2 * 8 + 2 * 4 * 2  # a cable is two directed links
    assert np.all(t.links["gbps"] == pytest.approx(400.0))
    assert np.all(t.links["capacity"] == pytest.approx(400e9 / 8))
    assert not t.links["failed"].any()
    names = {n["name"] for n in t.nodes}
    assert len(names) == len(t.nodes)
    # every link joins two nodes in both directions
    pairs = {(int(a), int(b)) for a, b in zip(t.links["from"], t.links["to"])}
    assert all((b, a) in pairs for a, b in pairs)

    multi = P.Topology.leaf_spine(leaves=4, spines=2, hosts_per_leaf=2, nics_per_host=4, planes=2)
    assert (multi.hosts, multi.endpoints) == (8, 32)
    assert [n["kind"] for n in multi.nodes].count("spine") == 4
    rail = P.Topology.leaf_spine(leaves=4, spines=2, hosts_per_leaf=3, nics_per_host=2, rail_optimized=True)
    assert (rail.hosts, rail.endpoints) == (6, 12)
    # rails: the two NICs of a host hang off different leaves
    leaf_of = {int(a): int(b) for a, b in zip(rail.links["from"], rail.links["to"])
               if rail.nodes[int(a)]["kind"] == "endpoint"}
    assert leaf_of[rail.endpoint_node(0)] != leaf_of[rail.endpoint_node(1)]


def test_clos_shape():
    t = P.Topology.clos(k=4)
    assert (t.hosts, t.endpoints) == (16, 16)
    kinds = [n["kind"] for n in t.nodes]
    assert (kinds.count("leaf"), kinds.count("agg"), kinds.count("core")) == (8, 8, 4)
    assert t.num_links == 2 * (16 + 8 * 2 + 8 * 2)
    assert t.path_count(0, 15) == 4  # across pods: (k/2)^2 paths
    assert len(t.path(0, 15, 3)) == 6


def test_json_round_trip(tmp_path):
    t = P.Topology.leaf_spine(leaves=3, spines=2, hosts_per_leaf=2, nics_per_host=2, host_gbps=200, uplink_gbps=100)
    t.fail_link("p0.leaf0", "p0.spine1")
    t.degrade_link(t.link_id("p0.leaf1", "p0.spine0"), 0.5)
    text = t.to_json()
    doc = json.loads(text)
    assert {"nodes", "links", "hosts", "nics_per_host", "kind"} <= set(doc)
    path = tmp_path / "fabric.json"
    path.write_text(text)
    for back in (P.Topology.from_json(text), P.Topology.from_json(str(path)), P.Topology.from_json(path)):
        assert back.nodes == t.nodes
        a, b = back.links, t.links
        for field in ("from", "to", "failed"):
            assert np.array_equal(a[field], b[field])
        np.testing.assert_allclose(a["capacity"], b["capacity"], rtol=1e-12)
        assert (back.hosts, back.nics_per_host, back.endpoints) == (t.hosts, t.nics_per_host, t.endpoints)
        assert back.to_json() == text
    with pytest.raises(ef.InvalidArgument, match="neither JSON text"):
        P.Topology.from_json(str(tmp_path / "missing.json"))
    with pytest.raises(ef.InvalidArgument):
        P.Topology.from_json('{"nodes": 3}')
    with pytest.raises(ef.InvalidArgument):
        P.Topology.from_json("{not json")


def test_fail_and_degrade_links():
    t = P.Topology.leaf_spine(leaves=2, spines=3, hosts_per_leaf=1)
    assert t.path_count(0, 1) == 3
    up = t.link_id("p0.leaf0", "p0.spine1")
    down = t.link_id("p0.spine1", "p0.leaf0")
    before = t.copy()
    t.fail_link("p0.leaf0", "p0.spine1")
    links = t.links
    assert links["failed"][up] and links["failed"][down] and links["failed"].sum() == 2
    assert t.path_count(0, 1) == 2 and before.path_count(0, 1) == 3  # copies are independent
    flows = P.Flows([0, 1], [1, 0], GIB)
    for strategy in P.STRATEGIES:
        p = P.plan(t, flows, strategy)
        check_plan(t, flows, p)
        assert p.link_bytes[up] == 0 and p.link_bytes[down] == 0
    # fail by id, the reverse direction goes too; degrade by id and by names
    t.fail_link(t.link_id("p0.spine2", "p0.leaf1"))
    assert t.links["failed"][t.link_id("p0.leaf1", "p0.spine2")]
    cable = t.link_id("p0.leaf0", "p0.spine0")
    t.degrade_link(cable, 0.25)
    t.degrade_link("p0.spine0", "p0.leaf1", factor=0.5)
    cap = t.links["capacity"]
    assert cap[cable] == pytest.approx(before.links["capacity"][cable] * 0.25)
    assert cap[t.link_id("p0.spine0", "p0.leaf0")] == pytest.approx(cap[cable])
    assert cap[t.link_id("p0.leaf1", "p0.spine0")] == pytest.approx(before.links["capacity"][cable] * 0.5)
    for bad in (lambda: t.fail_link(10 ** 6), lambda: t.fail_link(-1), lambda: t.fail_link("p0.leaf0", "p0.leaf1"),
                lambda: t.fail_link("nowhere", "p0.leaf1"), lambda: t.degrade_link(cable, 0.0),
                lambda: t.degrade_link(cable, 1.5), lambda: t.degrade_link(cable), lambda: t.fail_link(1, 2, 3),
                lambda: t.path(0, 1, 99), lambda: t.path_count(0, 99), lambda: t.endpoint_node(-1)):
        with pytest.raises(ef.InvalidArgument):
            bad()


def test_bad_topologies():
    for bad in (lambda: P.Topology.leaf_spine(leaves=0, spines=2, hosts_per_leaf=2),
                lambda: P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=2, host_gbps=-1),
                lambda: P.Topology.leaf_spine(leaves=3, spines=2, hosts_per_leaf=2, nics_per_host=2,
                                              rail_optimized=True),  # leaves not a multiple of the rails
                lambda: P.Topology.leaf_spine(leaves=2.5, spines=2, hosts_per_leaf=2),
                lambda: P.Topology.clos(k=3), lambda: P.Topology.clos(k=4, nics_per_host=0),
                # beyond the core's ints, and a string that bool() would take for True
                lambda: P.Topology.leaf_spine(leaves=2 ** 31, spines=2, hosts_per_leaf=2),
                lambda: P.Topology.clos(k=2 ** 40),
                lambda: P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=2, rail_optimized="no")):
        with pytest.raises(ef.InvalidArgument):
            bad()
    # Errors speak this module's names, not the C++ API's (hostGbps, failLink).
    with pytest.raises(ef.InvalidArgument, match="Topology.leaf_spine: host_gbps"):
        P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=2, host_gbps=0)
    with pytest.raises(ef.InvalidArgument, match="use fail_link"):
        P.Topology.clos(k=4).degrade_link(0, 2.0)
    with pytest.raises(ef.InvalidArgument, match="h0.n0, p0.leaf0, p0.spine0"):  # an example of every kind
        P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=2).fail_link("leaf0", "spine0")
    with pytest.raises(ef.InvalidArgument, match="Flows: bytes must be a number"):
        P.Flows([0], [1], "x")
    with pytest.raises(ef.InvalidArgument, match="lp_bound: max_variables"):
        P.lp_bound(P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=2), P.Flows([0], [2], 1.0),
                   max_variables=None)


# ---- flows ------------------------------------------------------------------------------------

def test_collective_flows():
    t = P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=2, nics_per_host=2)
    n = t.endpoints
    ring = P.collective_flows(t, "ring_allreduce", nbytes=GIB)
    assert len(ring) == n and ring.pattern == "ring_allreduce"
    assert sorted(zip(ring.src.tolist(), ring.dst.tolist())) == sorted((r, (r + 1) % n) for r in range(n))
    np.testing.assert_allclose(ring.bytes, 2 * (n - 1) / n * GIB)
    a2a = P.collective_flows(t, "alltoall", GIB)
    assert len(a2a) == n * (n - 1)
    np.testing.assert_allclose(a2a.bytes, GIB / n)
    assert len(P.collective_flows(t, "allgather", GIB)) == n * (n - 1)
    np.testing.assert_allclose(P.collective_flows(t, "reduce_scatter", GIB).bytes, 2 * GIB / n)
    tree = P.collective_flows(t, "tree_allreduce", GIB)
    assert len(tree) == 2 * (n - 1)
    hier = P.collective_flows(t, "hierarchical_allreduce", GIB)
    across = (hier.src // 2) != (hier.dst // 2)
    np.testing.assert_allclose(hier.bytes[across], 2 * (4 - 1) / 4 * GIB / 2)  # 4 hosts, 2 NICs
    sub = P.collective_flows(t, "ring_allreduce", GIB, placement=[6, 1, 3])
    assert sorted(zip(sub.src.tolist(), sub.dst.tolist())) == [(1, 3), (3, 6), (6, 1)]
    with pytest.raises(ValueError):
        ring.src[0] = 5  # read-only views
    for bad in (lambda: P.collective_flows(t, "ring", GIB), lambda: P.collective_flows(t, "alltoall", 0),
                lambda: P.collective_flows(t, "alltoall", GIB, placement=[0, n]),
                lambda: P.collective_flows(t, "alltoall", GIB, placement=[0, 0, 1]),
                lambda: P.collective_flows(t, "alltoall", GIB, placement=[]),
                lambda: P.collective_flows(t, 3, GIB)):
        with pytest.raises(ef.InvalidArgument):
            bad()


def test_custom_flows():
    f = P.Flows([0, 1, 2], np.array([3, 2, 1], np.int16), 5.0)
    assert len(f) == 3 and f.bytes.tolist() == [5.0] * 3 and f.total_bytes == 15.0
    assert f.records.dtype.names == ("src", "dst", "bytes")
    assert P.Flows([], [], []).records.shape == (0,)
    for bad in (lambda: P.Flows([0, 1], [1], 1.0), lambda: P.Flows([0.5], [1], 1.0), lambda: P.Flows([-1], [1], 1.0),
                lambda: P.Flows([0], [1], -2.0), lambda: P.Flows([0], [1], float("nan")),
                lambda: P.Flows([[0]], [[1]], 1.0)):
        with pytest.raises(ef.InvalidArgument):
            bad()
    t = P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=1)
    with pytest.raises(ef.InvalidArgument, match="outside"):
        P.plan(t, P.Flows([0], [7], 1.0))
    with pytest.raises(ef.InvalidArgument):
        P.plan(t, P.Flows([0], [1], 1.0), strategy="random")
    with pytest.raises(ef.InvalidArgument):
        P.plan(t, [(0, 1, 1.0)])


# ---- plans ------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", P.STRATEGIES)
def test_plan_round_trip(strategy):
    t = P.Topology.leaf_spine(leaves=4, spines=2, hosts_per_leaf=2, nics_per_host=2)
    flows = P.collective_flows(t, "alltoall", GIB)
    p = P.plan(t, flows, strategy=strategy, seed=3)
    assert p.strategy == strategy and p.flows is flows and p.seed == 3
    check_plan(t, flows, p)
    b = P.bound(t, flows)
    assert p.max_congestion >= b * (1 - 1e-12)
    # max-min fair sharing never beats the most loaded link
    assert p.completion_time() >= p.max_congestion * (1 - 1e-9)
    doc = json.loads(p.to_json())
    assert doc["strategy"] == strategy and doc["subflows"] == p.subflows
    assert doc["max_congestion"] == pytest.approx(p.max_congestion, rel=1e-9)
    assert len(doc["flows"]) == len(flows)
    for i in (0, len(flows) // 2, len(flows) - 1):
        d = doc["flows"][i]
        assert (d["src"], d["dst"]) == (flows.src[i], flows.dst[i])
        assert [(q["links"], pytest.approx(q["fraction"])) for q in d["paths"]] == [
            (links, fraction) for links, fraction in p.paths(i)]
    assert p.paths(-1) == p.paths(len(flows) - 1)
    with pytest.raises(IndexError):
        p.paths(len(flows))
    if strategy != "split":
        assert p.subflows == len(flows)


def test_plan_keeps_its_topology():
    t = P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=1)
    flows = P.Flows([0], [1], GIB)
    p = P.plan(t, flows, "ecmp")
    used = p.paths(0)[0][0]
    t.fail_link(used[1])
    assert not p.topology.links["failed"].any()
    assert p.paths(0)[0][0] == used
    q = P.plan(t, flows, "ecmp")
    assert used[1] not in q.paths(0)[0][0]


def test_hand_computed_instance():
    # One flow between two leaves; 800G host links, two 400G spines: splitting halves the uplink load.
    t = P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=1, host_gbps=800, uplink_gbps=400)
    flows = P.Flows([0], [1], GIB)
    assert P.bound(t, flows) == pytest.approx(GIB / 100e9, rel=1e-12)
    assert P.plan(t, flows, "ecmp").max_congestion == pytest.approx(GIB / 50e9, rel=1e-12)
    assert P.plan(t, flows, "balanced").max_congestion == pytest.approx(GIB / 50e9, rel=1e-12)
    split = P.plan(t, flows, "split")
    assert split.max_congestion == pytest.approx(GIB / 100e9, rel=1e-12)
    assert split.subflows == 2 and sorted(f for _, f in split.paths(0)) == pytest.approx([0.5, 0.5])
    if has_module("scipy"):
        assert P.lp_bound(t, flows) == pytest.approx(GIB / 100e9, rel=1e-9)


def _random_leaf_spine(rng, max_endpoints=24):
    """Parameters of a random small leaf-spine fabric (multi-NIC, rail-optimized, dual-plane)."""
    while True:
        nics = int(rng.integers(1, 4))
        rail = bool(nics > 1 and rng.random() < 0.5)
        leaves = nics * int(rng.integers(1, 3)) if rail else int(rng.integers(2, 6))
        spec = dict(leaves=max(leaves, 2), spines=int(rng.integers(1, 6)), hosts_per_leaf=int(rng.integers(1, 5)),
                    nics_per_host=nics, rail_optimized=rail, planes=int(rng.choice([1, 1, 2])))
        hosts = spec["leaves"] // nics * spec["hosts_per_leaf"] if rail else spec["leaves"] * spec["hosts_per_leaf"]
        if 2 <= hosts * nics <= max_endpoints:
            return spec


@needs_scipy
@pytest.mark.parametrize("seed", range(10))
def test_split_reaches_the_lp_optimum_with_equal_flows(seed):
    rng = np.random.default_rng(1000 + seed)
    while True:  # an instance with traffic across hosts
        spec = _random_leaf_spine(rng)
        t = P.Topology.leaf_spine(**spec)
        # patterns whose flows across hosts are all equal
        pattern = str(rng.choice(["ring_allreduce", "tree_allreduce", "alltoall", "allgather", "reduce_scatter",
                                  "hierarchical_allreduce"]))
        placement = None
        if pattern != "hierarchical_allreduce" and rng.random() < 0.5:
            placement = rng.permutation(t.endpoints)[:int(rng.integers(2, t.endpoints + 1))].tolist()
        flows = P.collective_flows(t, pattern, float(rng.integers(1, 1 << 30)), placement)
        if P.bound(t, flows) > 0:
            break
    lp = P.lp_bound(t, flows)
    where = f"{spec}, {pattern}, placement {placement}, {len(flows)} flows"
    split = P.plan(t, flows, "split")
    check_plan(t, flows, split)
    assert split.max_congestion == pytest.approx(lp, rel=1e-9), where
    # the cut bound is the splittable optimum on uniform leaf-spine fabrics
    assert P.bound(t, flows) == pytest.approx(lp, rel=1e-9), where
    for s in range(3):
        assert P.plan(t, flows, "ecmp", seed=s).max_congestion >= lp * (1 - 1e-9), where
    assert P.plan(t, flows, "balanced").max_congestion >= lp * (1 - 1e-9), where


@needs_scipy
@pytest.mark.parametrize("seed", [101, 257, 298])
def test_bound_is_the_optimum_where_the_cuts_are_loose(seed):
    # Failed links in a Clos where no endpoint, leaf or pod cut is the bottleneck: the cut bound
    # alone was 0.3 and 0.875 of the optimum here; the multiplicative weights' dual closes the gap.
    rng = np.random.default_rng(seed)
    t = P.Topology.clos(k=4)
    links = rng.choice(len(t.links["capacity"]), size=int(rng.integers(2, 6)), replace=False)
    for link in links[:-1]:
        t.fail_link(int(link))
    t.degrade_link(int(links[-1]), 0.3)
    flows = P.collective_flows(t, str(rng.choice(["ring_allreduce", "alltoall"])), GIB)
    lp = P.lp_bound(t, flows)
    assert lp * (1 - 0.02) <= P.bound(t, flows) <= lp * (1 + 1e-9)


@needs_scipy
@pytest.mark.parametrize("seed", range(6))
def test_unequal_flows_and_links_against_the_lp(seed):
    rng = np.random.default_rng(2000 + seed)
    if seed % 3 == 2:
        t = P.Topology.clos(k=4, nics_per_host=int(rng.integers(1, 3)))
    else:
        t = P.Topology.leaf_spine(**_random_leaf_spine(rng), uplink_gbps=float(rng.choice([100, 200, 400])))
    cables = P._switch_cables(t)
    for cable in rng.choice(cables, size=min(2, len(cables)), replace=False):
        t.degrade_link(int(cable), float(rng.uniform(0.2, 0.9)))
    n = t.endpoints
    m = int(rng.integers(4, 40))
    src = rng.integers(0, n, m)
    dst = (src + rng.integers(1, n, m)) % n
    flows = P.Flows(src, dst, rng.uniform(1e6, 1e9, m))
    lp = P.lp_bound(t, flows)
    assert P.bound(t, flows) <= lp * (1 + 1e-9)
    split, balanced = P.plan(t, flows, "split"), P.plan(t, flows, "balanced")
    check_plan(t, flows, split)
    check_plan(t, flows, balanced)
    assert lp * (1 - 1e-9) <= split.max_congestion <= balanced.max_congestion * (1 + 1e-12)
    assert P.plan(t, flows, "ecmp", seed=seed).max_congestion >= lp * (1 - 1e-9)


@needs_scipy
def _custom(nodes, links, hosts, nics=1):
    """A custom fabric from (kind, name) nodes and (a, b, gbps) cables, both directions."""
    return ef.plan.Topology.from_json(json.dumps({
        "kind": "custom", "hosts": hosts, "nics_per_host": nics, "nodes": [{"kind": k, "name": n} for k, n in nodes],
        "links": [{"from": a, "to": b, "gbps": g} for a, b, g in links] + [{"from": b, "to": a, "gbps": g}
                                                                           for a, b, g in links]}))


def test_bound_holds_on_custom_fabrics():
    """The cuts count every cable leaving a set (leaf-leaf, NIC-NIC too), and a leaf-spine with a
    cable missing is no uniform one: the bound stays below the LP optimum (it was inf on a ring of
    leaves, 8x the optimum with a NIC-NIC cable), and split, which aims at it, reaches the optimum."""
    square = _custom([("endpoint", f"e{i}") for i in range(4)] + [("leaf", x) for x in "ABCD"],
                     [(i, 4 + i, 800) for i in range(4)] + [(4, 5, 400), (4, 6, 400), (5, 7, 400), (6, 7, 400)], 4)
    nic_cable = _custom([("endpoint", "e0"), ("endpoint", "e1"), ("leaf", "A")], [(0, 1, 800), (0, 2, 100),
                                                                                  (1, 2, 100)], 2)
    nodes = [("endpoint", f"e{i}") for i in range(4)] + [("leaf", f"L{i}") for i in range(4)] + [("spine", "S0"),
                                                                                                ("spine", "S1")]
    missing = _custom(nodes, [(i, 4 + i, 1600) for i in range(4)] + [(4, 8, 400), (7, 8, 400), (5, 9, 400),
                                                                      (6, 8, 400), (6, 9, 400)], 4)
    for topo, flows in ((square, ef.plan.Flows([0], [3], [1e9])), (nic_cable, ef.plan.Flows([0], [1], [1e9])),
                        (missing, ef.plan.Flows([0, 3], [2, 2], [1e9, 1e9]))):
        lp = ef.plan.lp_bound(topo, flows)
        assert 0 < ef.plan.bound(topo, flows) <= lp * (1 + 1e-9)
        assert ef.plan.plan(topo, flows, "split").max_congestion == pytest.approx(lp, rel=1e-3)
    assert ef.plan.bound(missing, ef.plan.Flows([0, 3], [2, 2], [1e9, 1e9])) == pytest.approx(0.04, rel=1e-6)


def test_hierarchical_allreduce_crosses_hosts_whatever_the_placement():
    """A host with fewer ranks covers several shards: every host sends its whole share (two
    hosts with one rank each on different NICs moved nothing across before)."""
    topo = ef.plan.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=2, nics_per_host=2)
    b = 1e9
    for placement, share in (([0, 3], b), ([0, 3, 5], 4 / 3 * b), ([0, 1, 2], b)):
        flows = ef.plan.collective_flows(topo, "hierarchical_allreduce", b, placement)
        sent = {}
        for s, d, nbytes in zip(flows.src, flows.dst, flows.bytes):
            if s // 2 != d // 2:
                sent[s // 2] = sent.get(s // 2, 0) + nbytes
        assert sorted(sent) == sorted({e // 2 for e in placement}) and all(
            v == pytest.approx(share) for v in sent.values()), (placement, sent)
    huge = ef.plan.collective_flows(topo, "reduce_scatter", 1.7e308)
    assert all(math.isfinite(v) for v in huge.bytes)


def test_lp_bound_refuses_large_instances():
    t = P.Topology.leaf_spine(leaves=8, spines=8, hosts_per_leaf=8)
    flows = P.collective_flows(t, "alltoall", GIB)  # 64 x 63 flows, 8 paths each across leaves
    with pytest.raises(ef.InvalidArgument, match=r"bound\(\)"):
        P.lp_bound(t, flows)
    small = P.collective_flows(t, "ring_allreduce", GIB)
    with pytest.raises(ef.InvalidArgument, match="exceed the limit of 5"):
        P.lp_bound(t, small, max_variables=5)
    # traffic inside hosts only: nothing crosses the fabric
    t2 = P.Topology.leaf_spine(leaves=2, spines=2, hosts_per_leaf=1, nics_per_host=4)
    assert P.lp_bound(t2, P.Flows([0, 1], [1, 2], GIB)) == 0.0


def test_bound_scales_with_bytes():
    t = P.Topology.clos(k=4)
    f1 = P.collective_flows(t, "alltoall", GIB)
    f2 = P.collective_flows(t, "alltoall", 2 * GIB)
    assert P.bound(t, f2) == pytest.approx(2 * P.bound(t, f1), rel=1e-12)


# ---- the command line -----------------------------------------------------------------------

SMALL = ["plan", "--topology", "leaf_spine:leaves=4,spines=2,hosts_per_leaf=2", "--ecmp-seeds", "3",
         "--no-progress"]


def test_cli_json_plot_export(tmp_path):
    png, export = tmp_path / "loads.png", tmp_path / "paths.json"
    args = [sys.executable, "-m", "efcomm.cli"] + SMALL + ["--nics", "2", "--pattern", "alltoall", "--bytes", "256MiB",
                                                           "--json", "--plot", str(png), "--export", str(export)]
    if has_module("scipy"):
        args.append("--lp")
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["topology"]["endpoints"] == 16 and res["bytes"] == 256 * (1 << 20)
    rows = {s["strategy"]: s for s in res["strategies"]}
    assert set(rows) == set(P.STRATEGIES)
    assert rows["split"]["ratio"] == pytest.approx(1.0, rel=1e-9)
    assert rows["ecmp"]["seeds"] == [0, 1, 2] and len(rows["ecmp"]["runs"]) == 3
    o = rows["ecmp"]["over_seeds"]["ratio"]
    assert 1 - 1e-9 <= o["min"] <= o["mean"] <= o["max"]
    if has_module("scipy"):
        assert res["lp_bound_s"] == pytest.approx(res["bound_s"], rel=1e-9)
    h = res["histogram"]
    assert all(sum(c) == h["links"] for c in h["counts"].values())
    doc = json.loads(export.read_text())
    assert doc["strategy"] == "split" and len(doc["flows"]) == res["flows"]
    if has_module("matplotlib"):
        assert res["plot"]["path"] and png.read_bytes()[:8] == PNG_MAGIC
    else:
        assert res["plot"]["skipped"]


def test_cli_text(capsys):
    assert main(SMALL + ["--fail-links", "2", "--strategies", "ecmp,split", "--placement", "random"]) == 0
    out = capsys.readouterr().out
    assert "max congestion (s)" in out and "ratio to bound" in out and "ecmp (3 seeds)" in out
    assert "2 cables failed" in out and "link loads" in out
    assert main(SMALL + ["--fail-links", "1", "--json", "--strategies", "balanced"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["topology"]["failed_links"]) == 1
    assert [s["strategy"] for s in res["strategies"]] == ["balanced"]


def test_cli_topology_json(tmp_path, capsys):
    path = tmp_path / "fabric.json"
    path.write_text(P.Topology.clos(k=4).to_json())
    assert main(["plan", "--topology-json", str(path), "--json", "--no-progress", "--ecmp-seeds", "2",
                 "--sim-max-subflows", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["topology"]["endpoints"] == 16
    assert all(s["completion_s"] is None for s in res["strategies"])
    assert any("not simulated" in n for n in res["notes"])


@pytest.mark.parametrize("argv, message", [
    (["--sim-max-subflows", "-1"], "--sim-max-subflows: must be >= 0, got -1"),
    # Checked before the planning, not after it.
    (["--export", "/nonexistent/dir/x.json"], "argument --export: '/nonexistent/dir/x.json': the directory"),
])
def test_cli_bad_option_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "--no-progress"] + argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--topology", "leaf_spine:leaves=x,spines=2,hosts_per_leaf=2"], "leaves must be an integer"),
    (["--topology", "torus:k=4"], "unknown kind"),
    (["--topology", "leaf_spine:leaves=2,spines=2"], "needs hosts_per_leaf"),
    (["--topology", "leaf_spine:leaves=2,spines=2,hosts_per_leaf=2,colour=red"], "unknown key"),
    (["--topology", "clos:k=4", "--uplink-gbps", "100"], "does not apply"),
    (["--topology", "leaf_spine:leaves=2,spines=2,hosts_per_leaf=2,nics=2", "--nics", "4"], "given both"),
    (["--topology", "leaf_spine:leaves=0,spines=2,hosts_per_leaf=2"], "leaves"),
    (["--strategies", "ecmp,fastest"], "--strategies"),
    (["--bytes", "12XB"], "bad size"),
    (["--bytes", "0"], "bad size"),
    (["--topology-json", "/nonexistent/fabric.json"], "neither JSON text"),
    (["--ranks", "1"], "--ranks"),
    (["--fail-links", "1000"], "--fail-links"),
    # The ecmp seeds are --seed + i: the message names the options, not a derived seed.
    (["--seed", "18446744073709551610"], "--seed 18446744073709551610 with --ecmp-seeds 10: ecmp plans with seeds "
     "--seed to --seed + 9, which must be below 2^64: give --seed at most 18446744073709551606"),
    (["--seed", str(1 << 64), "--strategies", "split"], f"--seed {1 << 64} must be below 2^64"),
])
def test_cli_bad_input(argv, message, capsys):
    assert main(["plan", "--no-progress"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("efcomm plan: error:") and message in err


def test_cli_topology_json_errors_name_the_option_and_the_file(tmp_path, capsys):
    fabric, empty = tmp_path / "clos.json", tmp_path / "empty.json"
    fabric.write_text(P.Topology.clos(k=4).to_json())
    empty.write_text("{}")
    assert main(["plan", "--no-progress", "--topology-json", str(fabric), "--nics", "2"]) == 2
    assert "describes the whole fabric: drop --nics\n" in capsys.readouterr().err
    assert main(["plan", "--no-progress", "--topology-json", str(empty)]) == 2
    assert capsys.readouterr().err == f'efcomm plan: error: Topology.from_json: {empty}: missing field "kind"\n'
    with pytest.raises(ef.InvalidArgument, match=r'^Topology\.from_json: missing field "kind"'):
        P.Topology.from_json("{}")
    with pytest.raises(ef.InvalidArgument, match=r"^Topology\.from_json: kind: expected a string"):
        P.Topology.from_json('{"kind": 3}')


def test_cli_plot_must_be_a_png_before_planning(capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own check: status 2
        main(["plan", "--no-progress", "--plot", "loads.txt"])
    assert e.value.code == 2 and "--plot: must name a .png file" in capsys.readouterr().err


def test_single_path_bound():
    """Two ranks on a fabric of 4 spines: one flow cannot use 4 uplinks, so single-path plans are
    measured against the flow alone on its widest path (4x the splittable bound here)."""
    topo = ef.plan.Topology.leaf_spine(leaves=2, spines=4, hosts_per_leaf=1, host_gbps=400, uplink_gbps=100)
    flows = ef.plan.Flows([0], [1], [1e9])
    b, sp = ef.plan.bound(topo, flows), ef.plan.single_path_bound(topo, flows)
    assert b == pytest.approx(1e9 / 50e9, rel=1e-12)  # 400G host link = 4 x 100G uplinks = 50 GB/s
    assert sp == pytest.approx(1e9 / (100e9 / 8), rel=1e-12)
    assert sp == pytest.approx(4 * b, rel=1e-12)
    assert ef.plan.plan(topo, flows, "balanced").max_congestion == pytest.approx(sp, rel=1e-12)


def test_bench_plan_quick(capsys):
    """`efcomm bench plan --quick --json`: every part ran and no target failed."""
    assert main(["bench", "plan", "--quick", "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["optimality"]["summary"]) == {"leaf_spine", "strided", "clos", "failures"}
    assert all(row["split"] >= 1 - 1e-9 for row in r["optimality"]["instances"])
    assert {c["placement"] for c in r["completion"]} == {"linear", "random"}
    assert {x["pattern"] for x in r["speed"]} == {"ring_allreduce", "hierarchical_allreduce", "alltoall"}
    status = {t["target"]: t["status"] for t in r["targets"]}
    assert status and all(s in ("PASS", "SKIP") for s in status.values()), status


def test_bench_plan_command_reproduces_the_run(capsys):
    import types

    from efcomm.bench import plan as bench

    args = types.SimpleNamespace(quick=True, instances=12, ecmp_seeds=5, seed=3)
    assert bench.command_line(args) == "efcomm bench plan --quick --ecmp-seeds 5 --seed 3"
    args = types.SimpleNamespace(quick=False, instances=bench.DEFAULT_INSTANCES, ecmp_seeds=bench.DEFAULT_ECMP_SEEDS,
                                 seed=0)
    assert bench.command_line(args) == "efcomm bench plan"
    with pytest.raises(SystemExit) as e:  # was a numpy traceback after parsing
        main(["bench", "plan", "--quick", "--seed", "-1"])
    assert e.value.code == 2 and "argument --seed: must be >= 0, got -1" in capsys.readouterr().err
