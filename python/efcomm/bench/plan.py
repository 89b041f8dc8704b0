"""Traffic-planning benchmark: ``efcomm bench plan``.

Three parts, each checked against issue 7's targets:

1. Optimality. Randomized instances (seeded): leaf-spine fabrics (1:1 and oversubscribed,
   several NICs per host, rail-optimized, dual-plane), 3-tier Clos fabrics, and leaf-spine
   fabrics with failed cables, each carrying one collective (every pattern of
   ``ef.plan.PATTERNS``, linear or random placement, equal flows). For every instance: the maximum
   link congestion of ``split``, ``balanced`` and ``ecmp`` (several hash seeds) divided by the
   bound (``ef.plan.bound``, the cut bound; on failure instances, whose cut bound need not be
   tight, the LP optimum ``ef.plan.lp_bound``).
2. Completion time. Ring allreduce on a 1:1 leaf-spine across fabric sizes, linear and random
   rank placement: the max-min fair simulated completion time of each strategy (ecmp: median and
   worst over the seeds) and the gain of balanced/split over ecmp.
3. Planner speed. Wall time of ``ef.plan.plan`` (flows generated beforehand; best of a few calls)
   for ring and hierarchical allreduce up to 65,536 endpoints (8,192 hosts x 8 NICs; the targets at 16,384) and
   all-to-all up to 1,024 endpoints (1,047,552 flows), with the growth factor per size step.
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Optional

import numpy as np

from ..errors import InvalidArgument
from ._util import Progress, Report, load_warnings, machine_info, target_summary

DOCS_SECTION = "bench:plan"
DEFAULT_INSTANCES = 120
DEFAULT_ECMP_SEEDS = 10
NBYTES = float(1 << 30)  # 1 GiB per rank: congestion and completion times scale linearly with it

#: completion-time fabrics: (leaves, hosts per leaf); spines = hosts per leaf (1:1), 1 NIC per host
COMPLETION_SIZES = ((4, 4), (8, 8), (16, 16), (32, 16))
#: planner-speed fabrics: (leaves, spines, hosts per leaf, NICs per host) for ring/hierarchical ...
RING_SPEED_SIZES = ((16, 8, 8, 8), (64, 16, 8, 8), (128, 16, 16, 8), (512, 32, 16, 8))
#: ... and endpoints of the all-to-all (leaf-spine of 8-NIC hosts, 8 hosts per leaf)
ALLTOALL_SPEED_SIZES = (128, 256, 512, 1024)

QUICK = {"instances": 12, "ecmp_seeds": 3, "completion_sizes": ((4, 4), (8, 8)),
         "ring_speed_sizes": ((16, 8, 8, 8), (64, 16, 8, 8)), "alltoall_speed_sizes": (64, 128)}

EXACT_TOL = 1e-9


def _ef():
    from .. import plan as ef_plan

    return ef_plan


# ---- 1. optimality -------------------------------------------------------------------------------

def _random_instance(rng: np.random.Generator, family: str):
    """One randomized instance of ``family`` ("leaf_spine", "strided", "clos", "failures"):
    (description, topology, flows)."""
    ef = _ef()
    if family == "strided":  # ring over every endpoint of a 1:1 leaf-spine, ranks at a stride
        leaves, hosts = int(rng.integers(2, 17)), int(rng.integers(2, 9))
        topo = ef.Topology.leaf_spine(leaves, hosts, hosts)
        n = topo.endpoints
        stride = int(rng.choice([k for k in range(2, n) if math.gcd(k, n) == 1] or [1]))
        flows = ef.collective_flows(topo, "ring_allreduce", NBYTES, placement=[(stride * r) % n for r in range(n)])
        return f"leaf-spine {leaves}x{hosts}, {hosts} hosts/leaf (1:1); ring_allreduce, {n} ranks at stride {stride}", topo, flows
    if family == "clos":
        k = int(rng.choice([4, 6, 8]))
        hosts = int(rng.integers(1, k // 2 + 1))
        topo = ef.Topology.clos(k, hosts_per_leaf=hosts, nics_per_host=int(rng.choice([1, 2])))
        desc = f"clos k={k}, {hosts} hosts/leaf, {topo.nics_per_host} NIC"
    else:
        small = family == "failures"  # the LP optimum is for small instances
        leaves = int(rng.integers(2, 7 if small else 13))
        spines = int(rng.integers(2 if small else 1, 5 if small else 9))
        hosts = int(rng.integers(1, 5 if small else 9))
        nics = int(rng.choice([1, 2] if small else [1, 2, 4]))
        rail = bool(nics > 1 and leaves % nics == 0 and rng.random() < 0.5)
        planes = int(rng.choice([1, 1, 2]))
        uplink = float(rng.choice([100, 200, 400]))
        topo = ef.Topology.leaf_spine(leaves, spines, hosts, nics_per_host=nics, uplink_gbps=uplink,
                                      rail_optimized=rail, planes=planes)
        desc = (f"leaf-spine {leaves}x{spines}, {hosts} hosts/leaf x {nics} NIC, uplink {uplink:g}G"
                + (", rail" if rail else "") + (f", {planes} planes" if planes > 1 else ""))
    pattern = str(rng.choice(ef.PATTERNS))
    endpoints = topo.endpoints
    ranks = int(rng.integers(2, endpoints + 1)) if endpoints > 2 else endpoints
    placement = rng.choice(endpoints, size=ranks, replace=False) if rng.random() < 0.5 else np.arange(ranks)
    if pattern == "hierarchical_allreduce":
        placement = np.arange(endpoints)  # whole hosts: the intra-host phase needs every NIC
    flows = ef.collective_flows(topo, pattern, NBYTES, placement=[int(p) for p in placement])
    desc += f"; {pattern}, {len(placement)} ranks"
    if family == "failures":
        count = int(rng.integers(1, 4))
        try:
            ef.fail_random_links(topo, count, int(rng.integers(1 << 30)), flows)
        except InvalidArgument:  # too few cables can fail without disconnecting a flow: keep it intact
            count = 0
        desc += f", {count} failed cables"
    return desc, topo, flows


def _optimality(args, progress: Progress) -> dict:
    ef = _ef()
    rng = np.random.default_rng(args.seed)
    families = ("leaf_spine", "strided", "clos", "failures")
    rows = []
    for i in range(args.instances):
        family = families[max(i % 5 - 1, 0)]  # 2/5 random leaf-spine, 1/5 each other family
        progress.step(f"optimality: instance {i + 1} ({FAMILY_NAMES[family]})")
        desc, topo, flows = _random_instance(rng, family)
        if flows.total_bytes == 0 or len(flows) == 0:
            continue
        lp = family == "failures"
        bound = ef.lp_bound(topo, flows) if lp else ef.bound(topo, flows)
        if not bound > 0:  # every flow stays inside a host
            continue
        single = max(ef.single_path_bound(topo, flows), bound)
        split = ef.plan(topo, flows, "split")
        balanced = ef.plan(topo, flows, "balanced")
        ecmp = [ef.plan(topo, flows, "ecmp", seed=s).max_congestion / bound for s in range(args.ecmp_seeds)]
        rows.append({"family": family, "instance": desc, "flows": len(flows), "reference": "lp" if lp else "cut",
                     "split": split.max_congestion / bound, "balanced": balanced.max_congestion / bound,
                     "balanced_single": balanced.max_congestion / single, "single_over_bound": single / bound,
                     "ecmp": ecmp, "split_subflows": split.subflows, "connections": len(flows)})
    summary = {}
    for family in families:
        fr = [r for r in rows if r["family"] == family]
        if not fr:
            continue
        e = np.concatenate([r["ecmp"] for r in fr])
        summary[family] = {
            "instances": len(fr),
            "split_max": max(r["split"] for r in fr), "split_mean": float(np.mean([r["split"] for r in fr])),
            "split_exact": int(sum(r["split"] <= 1 + EXACT_TOL for r in fr)),
            "balanced_max": max(r["balanced"] for r in fr),
            "balanced_mean": float(np.mean([r["balanced"] for r in fr])),
            "balanced_single_max": max(r["balanced_single"] for r in fr),
            "balanced_single_mean": float(np.mean([r["balanced_single"] for r in fr])),
            "single_gap": int(sum(r["single_over_bound"] > 1 + EXACT_TOL for r in fr)),
            "ecmp_median": float(np.median(e)), "ecmp_p90": float(np.percentile(e, 90)), "ecmp_max": float(e.max()),
            "ecmp_above_1": float(np.mean(e > 1 + EXACT_TOL)),
            "extra_subflows": float(np.mean([r["split_subflows"] / r["connections"] - 1 for r in fr])),
        }
    return {"instances": rows, "summary": summary}


# ---- 2. completion time --------------------------------------------------------------------------

def _completion(args, progress: Progress) -> list:
    ef = _ef()
    rows = []
    for leaves, hosts in args.completion_sizes:
        for placement in ("linear", "random"):
            progress.step(f"completion time: {leaves} x {hosts} leaf-spine, {placement} placement")
            topo = ef.Topology.leaf_spine(leaves, hosts, hosts)  # spines = hosts per leaf: 1:1
            n = topo.endpoints
            order = (np.random.default_rng(args.seed).permutation(n) if placement == "random" else np.arange(n))
            flows = ef.collective_flows(topo, "ring_allreduce", NBYTES, placement=[int(p) for p in order])
            ecmp = [ef.plan(topo, flows, "ecmp", seed=s).completion_time() for s in range(args.ecmp_seeds)]
            balanced = ef.plan(topo, flows, "balanced").completion_time()
            split = ef.plan(topo, flows, "split").completion_time()
            ideal = ef.bound(topo, flows)
            med = float(np.median(ecmp))
            rows.append({"leaves": leaves, "hosts_per_leaf": hosts, "spines": hosts, "endpoints": n,
                         "placement": placement, "ideal": ideal, "ecmp_median": med, "ecmp_worst": max(ecmp),
                         "balanced": balanced, "split": split, "gain_balanced": med / balanced - 1,
                         "gain_split": med / split - 1})
    return rows


# ---- 3. planner speed ----------------------------------------------------------------------------

def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _speed(args, progress: Progress) -> list:
    ef = _ef()
    rows = []
    cases = [(p, ef.Topology.leaf_spine(L, S, H, nics_per_host=N)) for (L, S, H, N) in args.ring_speed_sizes
             for p in ("ring_allreduce", "hierarchical_allreduce")]
    for endpoints in args.alltoall_speed_sizes:
        hosts = endpoints // 8
        leaves = max(hosts // 8, 1)
        cases.append(("alltoall", ef.Topology.leaf_spine(leaves, 8, hosts // leaves, nics_per_host=8)))
    for pattern, topo in cases:
        t = time.perf_counter()
        flows = ef.collective_flows(topo, pattern, NBYTES)
        flow_time = time.perf_counter() - t
        repeats = 1 if len(flows) > 200_000 else 3
        row = {"pattern": pattern, "endpoints": topo.endpoints, "hosts": topo.hosts, "flows": len(flows),
               "flows_seconds": flow_time}
        for strategy in ef.STRATEGIES:
            progress.step(f"planner speed: {pattern}, {topo.endpoints:,} endpoints, {strategy}")
            row[strategy] = _best_time(lambda s=strategy: ef.plan(topo, flows, s), repeats)
        rows.append(row)
    for i, row in enumerate(rows):  # growth per size step, per pattern
        prev = next((r for r in reversed(rows[:i]) if r["pattern"] == row["pattern"]), None)
        row["growth"] = ({s: row[s] / prev[s] if prev[s] > 0 else None for s in ef.STRATEGIES} if prev else None)
        row["size_growth"] = row["flows"] / prev["flows"] if prev else None
    return rows


# ---- the run -------------------------------------------------------------------------------------

def run(args) -> dict:
    ef = _ef()
    machine = machine_info()
    total = (args.instances + 2 * len(args.completion_sizes)
             + 3 * (2 * len(args.ring_speed_sizes) + len(args.alltoall_speed_sizes)))
    progress = Progress(total, enabled=None if args.progress else False)
    t0 = time.perf_counter()
    opt = _optimality(args, progress)
    completion = _completion(args, progress)
    speed = _speed(args, progress)
    progress.close()
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command_line(args),
              "machine": machine, "seconds": time.perf_counter() - t0, "bytes_per_rank": NBYTES,
              "ecmp_seeds": args.ecmp_seeds, "optimality": opt, "completion": completion, "speed": speed,
              "load_average_end": machine_info().get("load_average")}
    result["targets"] = _targets(result, ef)
    return result


def command_line(args) -> str:
    """The command that reproduces the run: the options that differ from their defaults."""
    base = QUICK if args.quick else {}
    parts = ["efcomm bench plan"] + (["--quick"] if args.quick else [])
    if args.instances != base.get("instances", DEFAULT_INSTANCES):
        parts.append(f"--instances {args.instances}")
    if args.ecmp_seeds != base.get("ecmp_seeds", DEFAULT_ECMP_SEEDS):
        parts.append(f"--ecmp-seeds {args.ecmp_seeds}")
    if args.seed != 0:
        parts.append(f"--seed {args.seed}")
    return " ".join(parts)


def _target(target: str, ok: Optional[bool], shown: str, reason: str = "") -> dict:
    return {"target": target, "status": "SKIP" if ok is None else ("PASS" if ok else "FAIL"), "shown": shown,
            "reason": reason}


def _targets(r: dict, ef) -> list:
    s = r["optimality"]["summary"]
    out = []
    ls = [s[f] for f in ("leaf_spine", "strided") if f in s]
    exact, count = sum(f["split_exact"] for f in ls), sum(f["instances"] for f in ls)
    out.append(_target("split reaches the bound (ratio 1.000) on every leaf-spine instance with equal flows",
                       None if not ls else exact == count,
                       "" if not ls else f"{exact}/{count} intact leaf-spine instances exact, max ratio "
                       f"{max(f['split_max'] for f in ls):.6f}"))
    fams = [f for f in s.values()]
    worst = max((f["balanced_single_max"] for f in fams), default=None)
    n = sum(f["instances"] for f in fams)
    gap = sum(f["single_gap"] for f in fams)
    raw = max((f["balanced_max"] for f in fams), default=None)
    out.append(_target("balanced within 1.5x of the bound on all instances (single-path bound: a flow cannot split)",
                       None if worst is None else worst <= 1.5,
                       "" if worst is None else f"max {worst:.3f} over {n} instances (leaf-spine, Clos, failures); "
                       f"against the splittable bound max {raw:.3f}, where on {gap} instances one flow alone "
                       "exceeds the splittable bound")),
    if fams:
        e = np.concatenate([np.asarray(x["ecmp"]) for x in r["optimality"]["instances"]])
        # Issue 7 asks for the distribution reported: met when every plan's ratio was measured.
        out.append(_target("ecmp's ratio reported (typically well above 1)", bool(e.size) and bool(np.all(np.isfinite(e))),
                           f"median {np.median(e):.2f}, p90 {np.percentile(e, 90):.2f}, max {e.max():.2f} "
                           f"({len(e)} plans: {r['ecmp_seeds']} seeds x {n} instances)"))
    comp = r["completion"]
    if comp:
        gains = [c["gain_balanced"] for c in comp if c["placement"] == "random"]
        # Reported across sizes (issue 7): met when every size's simulated gain is a number.
        out.append(_target("completion-time gain of balanced/split over ecmp, ring allreduce on 1:1 leaf-spine, across sizes",
                           all(math.isfinite(c["gain_balanced"]) and math.isfinite(c["gain_split"]) for c in comp),
                           ", ".join(f"{c['endpoints']} ep {c['placement']}: {100 * c['gain_balanced']:+.0f}%"
                                     for c in comp) + (f" (random placement: mean {100 * np.mean(gains):+.0f}%)" if gains else "")))
    for pattern, limit, size in (("ring_allreduce", 1.0, 16384), ("hierarchical_allreduce", 1.0, 16384), ("alltoall", 5.0, 1024)):
        rows = [x for x in r["speed"] if x["pattern"] == pattern and x["endpoints"] == size]
        if not rows:
            out.append(_target(f"{pattern} over {size:,} endpoints planned in < {limit:g} s", None, "",
                               f"not run ({'--quick' if r['command'].endswith('--quick') else 'size not in the run'})"))
            continue
        x = rows[0]
        worst = max(x[s] for s in ef.STRATEGIES)
        out.append(_target(f"{pattern.replace('_', ' ')} over {size:,} endpoints ({x['flows']:,} flows) planned in < {limit:g} s",
                           worst < limit, ", ".join(f"{s} {x[s]:.3f} s" for s in ef.STRATEGIES)))
    return out


# ---- output --------------------------------------------------------------------------------------

FAMILY_NAMES = {"leaf_spine": "leaf-spine (intact)", "strided": "1:1 leaf-spine, ring at a stride",
                "clos": "3-tier Clos", "failures": "leaf-spine, 1-3 failed cables"}


def _report(r: dict) -> Report:
    s = r["optimality"]["summary"]
    opt_rows = [[FAMILY_NAMES[f], str(v["instances"]), "LP" if f == "failures" else "cut",
                 f"{v['split_max']:.6f}", f"{v['split_exact']}/{v['instances']}", f"{v['extra_subflows']:.3f}",
                 f"{v['balanced_mean']:.3f}", f"{v['balanced_max']:.3f}",
                 f"{v['balanced_single_mean']:.3f} / {v['balanced_single_max']:.3f}", str(v["single_gap"]),
                 f"{v['ecmp_median']:.2f} / {v['ecmp_p90']:.2f} / {v['ecmp_max']:.2f}", f"{100 * v['ecmp_above_1']:.0f}%"]
                for f, v in s.items()]
    comp_rows = [[f"{c['leaves']} x {c['hosts_per_leaf']} ({c['endpoints']})", c["placement"],
                  f"{c['ideal']:.3f}", f"{c['ecmp_median']:.3f}", f"{c['ecmp_worst']:.3f}", f"{c['balanced']:.3f}",
                  f"{c['split']:.3f}", f"{100 * c['gain_balanced']:+.0f}%", f"{100 * c['gain_split']:+.0f}%"]
                 for c in r["completion"]]

    def growth(x, st):
        g = x["growth"]
        return f"{x[st]:.4f}" + (f" ({g[st]:.1f}x)" if g and g[st] else "")

    speed_rows = [[x["pattern"].replace("_allreduce", ""), f"{x['endpoints']:,}", f"{x['flows']:,}",
                   "-" if x["size_growth"] is None else f"{x['size_growth']:.1f}x", f"{x['flows_seconds']:.4f}",
                   growth(x, "ecmp"), growth(x, "balanced"), growth(x, "split")] for x in r["speed"]]
    conditions = [
        f"Every collective moves {r['bytes_per_rank'] / (1 << 30):g} GiB per rank (congestion and times scale "
        "linearly). Ratios are maximum link congestion (bytes / capacity) over the bound: the cut bound, or on "
        "failure instances the LP optimum (scipy HiGHS), whose cut bound need not be tight. ecmp: "
        f"{r['ecmp_seeds']} hash seeds per instance. Completion times: the max-min fair flow-level simulator, "
        "seconds; ideal = the bound (every link at its fair optimum). Planner times: ef.plan.plan wall time, "
        "best of 3 calls (1 above 200k flows), flows generated beforehand (their time listed)."]
    tables = [
        ("Maximum congestion / optimum (randomized instances)",
         ["instances", "n", "optimum", "split max", "split exact", "extra sub-flows per connection", "balanced mean",
          "balanced max", "balanced / single-path bound, mean / max", "instances with single-path bound > optimum",
          "ecmp median / p90 / max", "ecmp plans > optimum"], opt_rows, "lrlrrrrrrrrr"),
        ("Ring allreduce on a 1:1 leaf-spine: simulated completion time (s)",
         ["leaves x hosts (endpoints)", "placement", "ideal", "ecmp median", "ecmp worst", "balanced", "split",
          "balanced gain", "split gain"], comp_rows, "llrrrrrrr"),
        ("Planner speed (s; growth over the previous size)",
         ["pattern", "endpoints", "flows", "flow growth", "flows (s)", "ecmp", "balanced", "split"], speed_rows,
         "lrrrrrrr"),
    ]
    return Report(title="efcomm traffic-planning benchmark", warnings=load_warnings(r), conditions=conditions,
                  skipped=[], tables=tables,
                  targets_table=("Targets (issue 7)", ["target", "measured", "result"],
                                 [[t["target"], t["shown"] or t["reason"], t["status"]] for t in r["targets"]], "llr"),
                  summary=target_summary(r))


def render_text(result: dict) -> str:
    from ._util import render_report_text

    return render_report_text(result, _report(result))


def render_markdown(result: dict, note: Optional[str] = None) -> str:
    from ._util import render_report_markdown

    return render_report_markdown(result, _report(result), note)


def add_arguments(p) -> None:
    from ._util import add_output_arguments, nonnegative_int, positive_int

    g = p.add_argument_group("traffic-planning benchmark")
    g.add_argument("--instances", type=positive_int,
                   help=f"randomized instances drawn (default {DEFAULT_INSTANCES}; degenerate draws, whose flows all "
                        "stay inside a host, are skipped: the tables count those measured)")
    g.add_argument("--ecmp-seeds", type=positive_int, help=f"ecmp hash seeds per instance (default {DEFAULT_ECMP_SEEDS})")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the instances (default 0)")
    g.add_argument("--quick", action="store_true",
                   help="a smoke run: 12 instances drawn, small fabrics (the speed targets are not checked)")
    add_output_arguments(g, DOCS_SECTION)


def main(args) -> int:
    from ._util import check_status, emit

    base = QUICK if args.quick else {}
    args.instances = args.instances or base.get("instances", DEFAULT_INSTANCES)
    args.ecmp_seeds = args.ecmp_seeds or base.get("ecmp_seeds", DEFAULT_ECMP_SEEDS)
    args.completion_sizes = base.get("completion_sizes", COMPLETION_SIZES)
    args.ring_speed_sizes = base.get("ring_speed_sizes", RING_SPEED_SIZES)
    args.alltoall_speed_sizes = base.get("alltoall_speed_sizes", ALLTOALL_SPEED_SIZES)
    result = run(args)
    emit(result, args, render_text, lambda r: render_markdown(r, args.note), DOCS_SECTION)
    return check_status(result, args)
