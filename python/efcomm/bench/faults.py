"""Fault injection into real MPI jobs watched by ``ef.health.Monitor``: one trial launches N ranks
of :mod:`efcomm.bench._fault_rank` under ``mpiexec -disable-auto-cleanup`` (so that a killed rank
does not take the others down with it: each rank ignores the SIGUSR1 that would end the survivors),
injects one fault, and scores what the ranks reported.

A trial's verdict for the injected fault (``kind`` on ``rank``; for a slow link the pair):
- fatal faults (crash, hang, leave): every live rank raised ``CollectiveTimeout`` whose culprits
  are exactly the faulty rank; latency: from the injection to the last live rank's raise;
- the others (straggler, slow_link, nonfinite, mismatch): an anomaly of that kind naming exactly
  the faulty rank(s) on rank 0 (every rank hears the coordinator's findings);
- false alarms: every anomaly (and every CollectiveTimeout) that names another kind or other ranks.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

#: Each rank runs under a shell that ignores SIGUSR1: with -disable-auto-cleanup, MPICH's hydra
#: sends SIGUSR1 to the processes it started when one of them dies, and MPICH's handler then takes
#: the survivors down (they would never report). The shell receives it instead; the rank, its
#: child, does not.
SURVIVE_SIGUSR1 = ("sh", "-c", 'trap "" USR1; "$@"', "efcomm-rank")

#: fault kinds a trial injects (``leave``: a rank whose loop ends early, as an exception out of
#: its ``with Monitor`` block: it closes its monitor while the others go on)
KINDS = ("crash", "hang", "leave", "straggler", "slow_link", "nonfinite", "mismatch")
FATAL = ("crash", "hang", "leave")


def mpiexec() -> Optional[str]:
    """The mpiexec next to this Python (the mpich wheel's) or on PATH."""
    return shutil.which("mpiexec", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent),
                                                         os.environ.get("PATH", "")]))


def _read(path: pathlib.Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def launch(ranks: int, spec: dict, *, env: Optional[dict] = None, timeout: float = 120.0) -> dict:
    """Runs one job of ``ranks`` ranks with ``spec`` (see _fault_rank); returns {"ranks": [the
    reports of the ranks that finished, by rank], "fault": the injection record or None,
    "returncode", "stderr" (tail), "timed_out"}. A rank that stopped itself (SIGSTOP) is killed
    once every other rank has reported, or at the timeout."""
    exe = mpiexec()
    if exe is None:
        raise RuntimeError("mpiexec not found: pip install mpich mpi4py")
    out = pathlib.Path(spec["outdir"])
    cmd = [exe, "-disable-auto-cleanup", "-n", str(ranks), *SURVIVE_SIGUSR1, sys.executable, "-m",
           "efcomm.bench._fault_rank", json.dumps(spec)]
    run_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=run_env,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    expected = ranks - (1 if (spec.get("fault") or {}).get("kind") in FATAL else 0)
    timed_out = False
    while proc.poll() is None:
        done = [p for p in out.glob("rank*.json")]
        if len(done) >= expected and (spec.get("fault") or {}).get("kind") == "hang":
            pid = _read(out / f"pid{spec['fault']['rank']}.json")
            if pid:
                _kill(pid["pid"])
        if time.monotonic() > deadline:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    reports = sorted((r for r in (_read(p) for p in out.glob("rank*.json")) if r), key=lambda r: r["rank"])
    return {"ranks": reports, "fault": _read(out / "fault.json"), "returncode": proc.returncode,
            "stderr": (err or "")[-4000:], "timed_out": timed_out}


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def trial(kind: Optional[str], ranks: int, *, rank: int = 0, step: int = 5, steps: int = 40,
          factor: float = 2.0, delay: float = 0.02, peer: Optional[int] = None, compute_s: float = 0.02,
          compute: str = "sleep", numel: int = 1 << 16, monitor: Optional[dict] = None, timeout: float = 120.0,
          workdir: Optional[str] = None) -> dict:
    """One job with one fault (``kind`` None: fault-free) on ``rank`` at ``step``; returns the raw
    job result plus the score (see :func:`score`). ``compute``: "sleep" or "busy" (see _fault_rank)."""
    fault = None
    env = {}
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}: choose from {', '.join(KINDS)}")
        fault = {"kind": kind, "rank": rank, "step": step, "factor": factor}
        if kind == "slow_link":
            peer = (rank + 1) % ranks if peer is None else peer
            fault["peer"] = peer
            env["EFCOMM_FAULT_LINK_DELAY"] = f"{rank}>{peer}={delay}"
    with tempfile.TemporaryDirectory(prefix="efcomm-fault-", dir=workdir) as out:
        spec = {"outdir": out, "steps": steps, "compute_s": compute_s, "compute": compute, "numel": numel,
                "fault": fault, "monitor": monitor or {}}
        job = launch(ranks, spec, env=env, timeout=timeout)
        job["dumps"] = sorted(p.name for p in pathlib.Path(out).glob("efcomm-flight-rank*.json"))
    job["kind"] = kind
    job["size"] = ranks
    job["injected"] = fault
    job["score"] = score(job)
    return job


def _culprits(kind: str, fault: dict) -> list:
    return [fault["rank"], fault["peer"]] if kind == "slow_link" else [fault["rank"]]


def score(job: dict) -> dict:
    """{"detected": bool or None (fault-free), "latency": s or None, "false_alarms": [{"kind" it
    claims, "ranks" it names, "text"}], "problems": [why the trial is not clean: missing ranks,
    time-outs]}."""
    fault, kind = job["injected"], job["kind"]
    reports = job["ranks"]
    problems = []
    live = [r for r in range(job["size"]) if not (fault and kind in FATAL and r == fault["rank"])]
    missing = sorted(set(live) - {r["rank"] for r in reports})
    if missing:
        problems.append(f"rank(s) {missing} did not report")
    if job["timed_out"]:
        problems.append("the job timed out")
    problems += [f"rank {r['rank']} crashed: {r.get('error')}: {r.get('message')}" for r in reports if r.get("crashed")]
    false_alarms, detected, latency = [], None, None
    expected = _culprits(kind, fault) if fault else None
    if fault and kind in FATAL:
        raised = [r for r in reports if r["rank"] in live]
        detected = bool(raised) and not missing and all(
            r.get("error") == "CollectiveTimeout" and r.get("culprits") == expected for r in raised)
        if detected and job["fault"]:
            latency = max(r["raised_at"] for r in raised) - job["fault"]["time"]
    for r in reports:
        # An error where none was due claims a hang of its culprits; one naming the wrong ranks too.
        due = fault and kind in FATAL
        if r.get("error") and (not due or r.get("culprits") != expected):
            false_alarms.append({"kind": "hang", "ranks": r.get("culprits") or [],
                                 "text": f"rank {r['rank']} raised {r['error']}: {r.get('message')}"})
    rank0 = next((r for r in reports if r["rank"] == 0), None)
    if fault and kind not in FATAL:
        found = [a for a in (rank0 or {}).get("anomalies", []) if a["kind"] == kind and a["ranks"] == expected]
        detected = bool(found)
        if found:  # a slow link is there from the start
            since = rank0["started"] if kind == "slow_link" else (job["fault"] or {}).get("time")
            latency = None if since is None else found[0]["time"] - since
    for a in (rank0 or {}).get("anomalies", []):
        if fault and a["ranks"] == expected and (a["kind"] == kind or (kind in FATAL and a["kind"] in FATAL)):
            continue
        false_alarms.append({"kind": a["kind"], "ranks": a["ranks"], "text": f"{a['kind']} {a['ranks']}: {a['detail']}"})
    return {"detected": detected, "latency": latency, "false_alarms": false_alarms, "problems": problems}


# ---- the campaign: efcomm bench faults ----------------------------------------------------------

DOCS_SECTION = "bench:faults"
DEFAULT_TRIALS = 140         # 20 of each kind, 10 per compute mode
DEFAULT_RANKS = (4, 8)
DEFAULT_FAULT_FREE_STEPS = 200
#: --quick: a smoke run of about a minute
QUICK = {"trials": len(KINDS), "ranks": (3,), "fault_free_steps": 20}
TARGET_LATENCY_S = 5.0
TARGET_PRECISION = TARGET_RECALL = 0.95
STEPS = 40                   # per faulty trial; the fault comes at a step in [3, 8]
#: how a rank computes (_fault_rank): sleeping, and burning CPU (8 ranks on 2 cores contend)
COMPUTE_MODES = ("sleep", "busy")


def plan_trials(trials: int, ranks: tuple, seed: int) -> list:
    """The randomized trials: kinds in turn (so each gets its share), the compute mode alternating
    by round of kinds, the rest drawn from seed:
    the ranks (one of `ranks`), the faulty rank, the step, a straggler's factor in [1.3, 3], a slow
    link's receiver and delay in [10, 50] ms."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(trials):
        kind = KINDS[i % len(KINDS)]
        n = rng.choice(ranks)
        rank = rng.randrange(n)
        t = {"kind": kind, "ranks": n, "rank": rank, "step": rng.randint(3, 8),
             "compute": COMPUTE_MODES[(i // len(KINDS)) % len(COMPUTE_MODES)]}
        if kind == "straggler":
            t["factor"] = round(rng.uniform(1.3, 3.0), 2)
        if kind == "slow_link":
            t["peer"] = rng.choice([p for p in range(n) if p != rank])
            t["delay"] = round(rng.uniform(0.01, 0.05), 3)
        out.append(t)
    return out


OVERHEAD_NUMEL = 1 << 20
OVERHEAD_RANKS = 4
TARGET_OVERHEAD = 0.01


def overhead(numel: int = OVERHEAD_NUMEL, ranks: int = OVERHEAD_RANKS, rounds: int = 15, calls: int = 4) -> dict:
    """What watching costs. (1) Reducer.allreduce (TopK 1% + EF21, `numel` float32, `ranks`
    in-process ranks) through a Monitor and, interleaved, through the same communicator unwatched
    (a Reducer on a second Communicator over the backend the Monitor wraps), `rounds` x `calls` calls each: the wall-time ratio, which
    carries the machine's noise (a few %). (2) The monitor's own work per collective, precisely:
    barriers of a 1-rank group (which cost next to nothing themselves) watched and unwatched,
    batches of 200 alternating, median difference. The cost fraction is (2) x the collectives per
    allreduce / the allreduce's time. Medians, seconds."""
    import statistics

    import numpy as np

    import efcomm as ef

    def timed(fn, repeat: int) -> float:
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) / repeat

    def allreduces(comm):
        g = np.random.default_rng(comm.rank).standard_normal(numel).astype(np.float32)
        with ef.health.Monitor(comm) as mon:
            # The Monitor watches every Reducer on comm: the unwatched one sits on a second
            # Communicator over the backend the Monitor wraps.
            plain = ef.Reducer(ef.Communicator(mon._unwatched), "topk:ratio=0.01", "ef21", algorithm="allgather")
            watched = ef.Reducer(comm, "topk:ratio=0.01", "ef21", algorithm="allgather")
            before = len(mon.records())
            watched.allreduce(g, key="g")  # also the warm-up of both
            plain.allreduce(g, key="g")
            collectives = len(mon.records()) - before
            times = {"plain": [], "watched": []}
            for _ in range(rounds):
                for name, red in (("plain", plain), ("watched", watched)):
                    times[name].append(timed(lambda: red.allreduce(g, key="g"), calls))
        return {k: statistics.median(v) for k, v in times.items()}, collectives

    def barriers(comm):
        raw = comm._backend
        with ef.health.Monitor(comm) as mon:
            assert mon._unwatched is raw
            diffs = [timed(comm.barrier, 200) - timed(lambda: raw.barrier(None), 200) for _ in range(25)]
        return statistics.median(diffs)

    results = ef.testing.run_ranks(ranks, allreduces)
    med = {k: statistics.median(r[0][k] for r in results) for k in results[0][0]}
    collectives = results[0][1]
    # Negative when below the measurement's resolution.
    per_collective = ef.testing.run_ranks(1, barriers)[0]
    return {"numel": numel, "ranks": ranks, "allreduce_s": med["plain"], "watched_allreduce_s": med["watched"],
            "ratio": med["watched"] / med["plain"], "per_collective_s": per_collective,
            "collectives_per_allreduce": collectives,
            "fraction": max(per_collective, 0.0) * collectives / med["plain"]}


def run_campaign(args) -> dict:
    import datetime

    from ._util import Progress, machine_info

    machine = machine_info()
    plans = plan_trials(args.trials, args.ranks, args.seed)
    progress = Progress(total=len(plans) + len(args.ranks) * len(COMPUTE_MODES) + 1,
                        enabled=None if args.progress else False)
    rows, fault_free = [], []
    try:
        progress.step(f"overhead: allreduce of {OVERHEAD_NUMEL} float32 watched and not")
        cost = overhead()
        for n in args.ranks:
            for mode in COMPUTE_MODES:
                progress.step(f"fault-free, {n} ranks, {args.fault_free_steps} steps, compute: {mode}")
                job = trial(None, n, steps=args.fault_free_steps, compute=mode,
                            timeout=120 + 0.5 * args.fault_free_steps * n)
                fault_free.append({"ranks": n, "compute": mode, "steps": args.fault_free_steps, **_row(job)})
        for t in plans:
            progress.step(f"{t['kind']} on rank {t['rank']} of {t['ranks']}, compute: {t['compute']}")
            extra = {k: t[k] for k in ("factor", "delay", "peer", "compute") if k in t}
            job = trial(t["kind"], t["ranks"], rank=t["rank"], step=t["step"], steps=STEPS, **extra)
            rows.append({**t, **_row(job)})
    finally:
        progress.close()
    result = {"benchmark": "faults",
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": command_line(args), "machine": machine,
              "config": {"trials": args.trials, "ranks": list(args.ranks), "seed": args.seed, "steps": STEPS,
                         "fault_free_steps": args.fault_free_steps},
              "overhead": cost, "fault_free": fault_free, "trials": rows}
    result["summary"] = summarize(result)
    result["targets"] = evaluate(result)
    return result


def _row(job: dict) -> dict:
    s = job["score"]
    return {"detected": s["detected"], "latency": s["latency"], "false_alarms": s["false_alarms"],
            "problems": s["problems"], "dumps": len(job["dumps"])}


def summarize(result: dict) -> list:
    """Per kind: trials, true positives, recall, precision (a false alarm in a trial of this kind,
    or an alarm of this kind elsewhere, counts against it), detection latency median and max."""
    import statistics

    out = []
    all_alarms = [(r, a) for r in result["trials"] for a in r["false_alarms"]]
    all_alarms += [(r, a) for r in result["fault_free"] for a in r["false_alarms"]]
    for kind in KINDS:
        rows = [r for r in result["trials"] if r["kind"] == kind]
        tp = sum(1 for r in rows if r["detected"])
        wrong = sum(1 for _, a in all_alarms if a["kind"] == kind)
        lat = [r["latency"] for r in rows if r["detected"] and r["latency"] is not None]
        out.append({"kind": kind, "trials": len(rows), "detected": tp,
                    "recall": tp / len(rows) if rows else None,
                    "precision": tp / (tp + wrong) if tp + wrong else None,
                    "latency_median": statistics.median(lat) if lat else None,
                    "latency_max": max(lat) if lat else None,
                    "problems": sum(len(r["problems"]) for r in rows)})
    return out


def evaluate(result: dict) -> list:
    by = {s["kind"]: s for s in result["summary"]}
    targets = []

    def add(text, ok, shown):
        targets.append({"target": text, "status": "PASS" if ok else "FAIL", "shown": shown, "reason": None})

    for kind in FATAL:
        s = by[kind]
        rows = [r for r in result["trials"] if r["kind"] == kind]
        ok = bool(rows) and all(r["detected"] and r["latency"] is not None and r["latency"] <= TARGET_LATENCY_S
                                for r in rows)
        add(f"{kind} named on every live rank within {TARGET_LATENCY_S:g} s (every trial)", ok,
            f"{s['detected']}/{s['trials']} named, max {_s(s['latency_max'])}")
    for kind in ("straggler", "slow_link"):
        s = by[kind]
        ok = (s["recall"] or 0) >= TARGET_RECALL and (s["precision"] or 0) >= TARGET_PRECISION
        add(f"{kind} localized with precision and recall >= {TARGET_PRECISION}", ok,
            f"precision {_f(s['precision'])}, recall {_f(s['recall'])}")
    o = result["overhead"]
    add(f"monitor and flight recorder cost < {TARGET_OVERHEAD:.0%} of a {o['numel']:,}-element allreduce",
        o["fraction"] < TARGET_OVERHEAD,
        f"{o['per_collective_s'] * 1e6:.1f} us per collective x {o['collectives_per_allreduce']} = "
        f"{o['fraction']:.2%} of {o['allreduce_s'] * 1e3:.2f} ms ({o['ranks']} ranks); wall time watched / "
        f"unwatched: {o['ratio']:.3f} (noise: a few %)")
    alarms = sum(len(r["false_alarms"]) for r in result["fault_free"])
    steps = sum(r["steps"] for r in result["fault_free"])
    add("no false alarm in the fault-free iterations", alarms == 0 and steps >= 1,
        f"{alarms} in {steps} iterations ({', '.join(sorted({str(r['ranks']) for r in result['fault_free']}))} ranks, "
        f"sleeping and busy compute)")
    return targets


def _s(v) -> str:
    return "-" if v is None else f"{v:.2f} s"


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _report(result: dict):
    from ._util import Report, load_warnings, target_summary

    headers = ["fault", "trials", "named", "recall", "precision", "latency median", "latency max"]
    rows = [[s["kind"], str(s["trials"]), str(s["detected"]), _f(s["recall"]), _f(s["precision"]),
             _s(s["latency_median"]), _s(s["latency_max"])] for s in result["summary"]]
    ff = [[str(r["ranks"]), r["compute"], str(r["steps"]), str(len(r["false_alarms"])),
           "; ".join([a["text"] for a in r["false_alarms"]] + r["problems"]) or "-"] for r in result["fault_free"]]
    missed = [[r["kind"], str(r["ranks"]), str(r["rank"]), r["compute"],
               "; ".join(r["problems"] + [a["text"] for a in r["false_alarms"]]) or "not named"]
              for r in result["trials"] if not r["detected"] or r["false_alarms"] or r["problems"]]
    tables = [("Faults injected: detection per kind", headers, rows, "lrrrrrr"),
              ("Fault-free runs", ["ranks", "compute", "iterations", "false alarms", "details"], ff, "rlrrl")]
    if missed:
        tables.append(("Trials not detected cleanly", ["fault", "ranks", "rank", "compute", "what happened"], missed,
                       "lrrll"))
    c = result["config"]
    cores = result.get("machine", {}).get("usable_cores") or os.cpu_count() or 1
    conditions = [
        f"{len(result['trials'])} randomized trials over {', '.join(map(str, c['ranks']))} ranks (MPI processes on this "
        f"machine, mpiexec -disable-auto-cleanup), {c['steps']} steps each: 20 ms of compute (alternately a sleep, and "
        f"CPU work of 20 ms of CPU time, with which {max(c['ranks'])} ranks oversubscribe the {cores} cores "
        f"{max(c['ranks']) / cores:.3g}x) then a Reducer allreduce (TopK 1% + EF21, allgather) of 65,536 float32, watched by ef.health.Monitor with its default "
        "settings; the fault at a random step in [3, 8]: SIGKILL (crash), SIGSTOP (hang), the loop left early and "
        "the monitor closed (leave), a 1.3-3x longer compute "
        "(straggler), a 10-50 ms delay on one directed link (slow_link, EFCOMM_FAULT_LINK_DELAY), a NaN in one "
        "gradient (nonfinite), one allreduce under another key (mismatch). Seed " + str(c["seed"]) + ".",
        "Named: every live rank raised CollectiveTimeout with exactly the faulty rank as culprit (crash, hang, leave), or "
        "rank 0's monitor reported an anomaly of that kind naming exactly the faulty rank(s). Latency: from the "
        "injection (the slow link: the job's start) to the last live rank's error, or to the anomaly. A false "
        "alarm: any anomaly or error naming another kind or other ranks; precision counts them against the kind "
        "they claim.",
    ]
    r = Report(title="efcomm fault-injection campaign", warnings=load_warnings(result), conditions=conditions,
               skipped=[], tables=tables,
               targets_table=("Targets (issue 6)", ["target", "measured", "result"],
                              [[t["target"], t["shown"], t["status"]] for t in result["targets"]], "llr"),
               summary=target_summary(result))
    return r


def render_text(result: dict) -> str:
    from ._util import render_report_text

    return render_report_text(result, _report(result))


def render_markdown(result: dict, note: Optional[str] = None) -> str:
    from ._util import render_report_markdown

    return render_report_markdown(result, _report(result), note)


def command_line(args) -> str:
    parts = ["efcomm bench faults"]
    if args.quick:
        parts.append("--quick")
    base = QUICK if args.quick else {"trials": DEFAULT_TRIALS, "ranks": DEFAULT_RANKS,
                                     "fault_free_steps": DEFAULT_FAULT_FREE_STEPS}
    if args.trials != base["trials"]:
        parts.append(f"--trials {args.trials}")
    if tuple(args.ranks) != tuple(base["ranks"]):
        parts.append("--ranks " + ",".join(map(str, args.ranks)))
    if args.fault_free_steps != base["fault_free_steps"]:
        parts.append(f"--fault-free-steps {args.fault_free_steps}")
    if args.seed != 0:
        parts.append(f"--seed {args.seed}")
    return " ".join(parts)


def _ranks_list(text: str) -> tuple:
    import argparse

    try:
        v = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers of ranks, got {text!r}") from None
    if not v or min(v) < 2:
        raise argparse.ArgumentTypeError(f"every size needs at least 2 ranks, got {text!r}")
    return v


def add_arguments(p) -> None:
    from ._util import add_output_arguments, nonnegative_int, positive_int

    g = p.add_argument_group("fault-injection campaign")
    g.add_argument("--trials", type=positive_int, help=f"randomized faulty trials (default {DEFAULT_TRIALS})")
    g.add_argument("--ranks", type=_ranks_list, metavar="LIST",
                   help=f"numbers of ranks drawn from (default {','.join(map(str, DEFAULT_RANKS))})")
    g.add_argument("--fault-free-steps", type=positive_int, metavar="N",
                   help=f"fault-free iterations per number of ranks and compute mode (default {DEFAULT_FAULT_FREE_STEPS})")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the trial plan (default 0)")
    g.add_argument("--quick", action="store_true",
                   help=f"a smoke run: {QUICK['trials']} trials (one of each kind) on 3 ranks, 20 fault-free steps")
    add_output_arguments(g, DOCS_SECTION)


def main(args) -> int:
    from ._util import check_status, emit

    base = QUICK if args.quick else {}
    args.trials = args.trials or base.get("trials", DEFAULT_TRIALS)
    args.ranks = args.ranks or base.get("ranks", DEFAULT_RANKS)
    args.fault_free_steps = args.fault_free_steps or base.get("fault_free_steps", DEFAULT_FAULT_FREE_STEPS)
    if mpiexec() is None:
        raise SystemExit("efcomm bench faults: mpiexec not found: pip install mpich mpi4py")
    result = run_campaign(args)
    emit(result, args, render_text, lambda r: render_markdown(r, args.note), DOCS_SECTION)
    return check_status(result, args)
