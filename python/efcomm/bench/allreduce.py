"""Compressed allreduce against MPI_Allreduce between real processes: ``efcomm bench allreduce``.

For every rate limit and number of ranks the benchmark launches ``mpiexec -n N python -m
efcomm.bench.allreduce --worker ...``. Every rank holds a random float32 vector (seeded by its
rank) of each size and times, in the same run, ``MPI_Allreduce`` (mpi4py, SUM) of the
uncompressed vector and ``Reducer(comm, compressor, feedback, algorithm).allreduce(x, key=...)``
over ``Communicator.mpi``: one warm-up call (the first call creates the feedback state), then
timed calls, each after a barrier; a call's time is the slowest rank's, and the median is
reported.

MPI runs over TCP (MPICH's ch4:ofi netmod, libfabric's tcp provider, shared memory disabled)
at every rate, unlimited included, so that all rows compare the same transport. With root the
ranks run in a network namespace of the benchmark's own: its loopback carries their traffic
and nothing else, so its counters give the bytes actually on the wire, and a tc token bucket
on it sets the rate (all ranks share it). Without root the limited rates are skipped and wire
bytes are not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

from . import _netns
from ..errors import _one_line
from .compressors import _error_text
from ._util import (Progress, Report, add_output_arguments, check_status, emit, load_warnings, machine_info,
                    nonnegative_int, plot_path, positive_float, positive_int, ranks_arg, render_report_markdown,
                    render_report_text, ring_factor, target_summary)

DEFAULT_SIZES = "1M,16M,64M"
DEFAULT_RANKS = "2,4"
DEFAULT_RATES = "unlimited,10gbit,1gbit"
DEFAULT_CONFIGS = ("topk:ratio=0.01+ef21@allgather", "topk:ratio=0.01+ef21@reduce_scatter",
                   "topk:ratio=0.01+ef21@auto", "identity+none@allreduce")
DEFAULT_SCALING_RANKS = "2,3,4,6,8"
DEFAULT_SCALING_SIZE = "4M"
SCALING_CONFIGS = ("topk:ratio=0.01+ef21@allgather", "topk:ratio=0.01+ef21@reduce_scatter")
DEFAULT_REPEATS = 5
DEFAULT_MAX_SECONDS = 5.0
DEFAULT_SEED = 0
#: --quick: a smoke run of under a minute
QUICK = {"sizes": "1M", "ranks": "2,4", "rates": "unlimited,1gbit", "repeats": 3, "scaling_ranks": "2,3,4",
         "scaling_size": "1M"}
#: forces MPICH onto TCP (no shared memory between ranks on one host), for every rate
TCP_ENV = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "MPIR_CVAR_NOLOCAL": "1"}
DOCS_SECTION = "bench:allreduce"
TOPK = ("topk:ratio=0.01", "ef21")
TARGET_SIZE, TARGET_RANKS, TARGET_RATE, TARGET_SPEEDUP = 64 << 20, 4, 10**9, 10.0
SCALING_TOLERANCE = 0.10
WIRE_TOLERANCE = 0.05
_ROW, _PROGRESS = "@@efcomm-bench-row ", "@@efcomm-bench-progress "


#: The Reducer's algorithms (ef.Reducer's algorithm=).
ALGORITHMS = ("allgather", "reduce_scatter", "allreduce", "auto")


@dataclass(frozen=True)
class Config:
    """One efcomm setting, written ``COMPRESSOR+FEEDBACK@ALGORITHM``."""
    compressor: str
    feedback: str
    algorithm: str

    @classmethod
    def parse(cls, text: str) -> "Config":
        head, at, algorithm = text.rpartition("@")
        compressor, plus, feedback = head.rpartition("+")
        if not (at and plus and compressor and feedback and algorithm):
            raise ValueError(f"config {text!r}: expected COMPRESSOR+FEEDBACK@ALGORITHM, "
                             "e.g. topk:ratio=0.01+ef21@allgather")
        config = cls(compressor.strip(), feedback.strip(), algorithm.strip())
        # Checked here, before any launch: a bad spec is bad input, not a table of failed rows.
        from .. import compressors, feedback as fb

        if config.algorithm not in ALGORITHMS:
            raise ValueError(f"config {text!r}: unknown algorithm {config.algorithm!r}; expected one of "
                             f"{', '.join(ALGORITHMS)}")
        compressors.compressor(config.compressor)
        fb.Aggregate(config.feedback, 1, weights=[1.0], dim=0)  # the method and its parameters
        return config

    @property
    def text(self) -> str:
        return f"{self.compressor}+{self.feedback}@{self.algorithm}"


def parse_size(text: str) -> int:
    """Elements: an integer with an optional K (2^10) or M (2^20) suffix."""
    m = re.fullmatch(r"\s*([0-9]+)\s*([kKmM]?)\s*", text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"size {text!r}: expected a positive element count such as 65536, 64K or 16M")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20}[m.group(2).lower()]


def size_text(n: int) -> str:
    for suffix, shift in (("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def _list(parse):
    def convert(text: str) -> list:
        try:
            values = [parse(item) for item in text.split(",") if item.strip()]
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values
    return convert


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("allreduce benchmark")
    g.add_argument("--sizes", type=_list(parse_size), metavar="LIST",
                   help=f"float32 elements per vector, K = 2^10, M = 2^20 (default {DEFAULT_SIZES})")
    g.add_argument("--ranks", type=_list(ranks_arg), metavar="LIST", help=f"numbers of ranks (default {DEFAULT_RANKS})")
    g.add_argument("--rates", type=_list(_netns.parse_rate), metavar="LIST",
                   help=f"rate limits of the ranks' shared loopback, tc syntax (default {DEFAULT_RATES}); "
                        "limited rates need root")
    g.add_argument("--configs", nargs="+", type=_config_arg, metavar="C+F@A",
                   help="efcomm settings COMPRESSOR+FEEDBACK@ALGORITHM (default: "
                        f"{' '.join(DEFAULT_CONFIGS)})")
    g.add_argument("--repeats", type=positive_int,
                   help=f"timed calls per measurement after the warm-up (default {DEFAULT_REPEATS})")
    g.add_argument("--max-seconds", type=positive_float, default=DEFAULT_MAX_SECONDS, metavar="S",
                   help="fewer timed calls once a measurement's calls have taken this long, at least one "
                        f"(default {DEFAULT_MAX_SECONDS:g}: big vectors at 1 Gbit/s take seconds per call)")
    g.add_argument("--scaling-ranks", type=_list(ranks_arg), metavar="LIST",
                   help=f"ranks of the bytes-per-rank scaling table (default {DEFAULT_SCALING_RANKS}); "
                        "unlimited rate")
    g.add_argument("--scaling-size", type=parse_size_arg, metavar="N",
                   help=f"elements of the scaling table's vector (default {DEFAULT_SCALING_SIZE})")
    g.add_argument("--no-scaling", dest="scaling", action="store_false", help="skip the scaling table")
    g.add_argument("--quick", action="store_true",
                   help="a smoke run of under a minute: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                    for k, v in QUICK.items()))
    g.add_argument("--seed", type=nonnegative_int, default=DEFAULT_SEED,
                   help="rank r's vector uses seed + r (default 0)")
    g.add_argument("--timeout", type=positive_float, metavar="S",
                   help="seconds allowed per mpiexec launch (default: estimated from the sizes and rate)")
    g.add_argument("--mpiexec", help="the mpiexec to use (default: the one next to this Python, else PATH)")
    add_output_arguments(g, DOCS_SECTION)
    g.add_argument("--plot", type=plot_path, metavar="PNG", help="write the scaling part (bytes per rank and time per call against "
                                                 "the number of ranks, per algorithm) to this PNG")


def parse_size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _config_arg(text: str) -> Config:
    try:
        return Config.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(_one_line(e)) from None


def resolve(args) -> None:
    """Fills the options left unset from --quick or the defaults."""
    preset = QUICK if args.quick else {"sizes": DEFAULT_SIZES, "ranks": DEFAULT_RANKS, "rates": DEFAULT_RATES,
                                       "repeats": DEFAULT_REPEATS, "scaling_ranks": DEFAULT_SCALING_RANKS,
                                       "scaling_size": DEFAULT_SCALING_SIZE}
    parsers = {"sizes": _list(parse_size), "ranks": _list(ranks_arg), "rates": _list(_netns.parse_rate),
               "repeats": int, "scaling_ranks": _list(ranks_arg), "scaling_size": parse_size}
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, parsers[key](value) if isinstance(value, str) else value)
    if args.configs is None:
        args.configs = [Config.parse(c) for c in DEFAULT_CONFIGS]


# ---- worker (one per rank, under mpiexec) -----------------------------------------------------

def _measure(comm, fn, repeats: int, max_seconds: float, wire: bool) -> dict:
    """Times fn (already warmed up): calls after a barrier each, a call's time the slowest
    rank's, until `repeats` calls or `max_seconds` in all. With `wire`, rank 0 counts the bytes
    sent on lo around the calls, less those of the same loop with nothing in it (the barriers
    and the time exchange)."""
    from mpi4py import MPI

    def loop(body, count):
        comm.Barrier()
        before = _netns.lo_tx() if wire and comm.rank == 0 else (0, 0, 0)
        samples = []
        while count is None or len(samples) < count:
            comm.Barrier()
            t0 = time.perf_counter()
            body()
            # The max over ranks is the same on every rank, so they all stop together.
            samples.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
            if count is None and (len(samples) >= repeats or sum(samples) >= max_seconds):
                break
        comm.Barrier()
        after = _netns.lo_tx() if wire and comm.rank == 0 else (0, 0, 0)
        return samples, [a - b for a, b in zip(after, before)]

    samples, counts = loop(fn, None)
    out = {"median_s": statistics.median(samples), "samples": samples, "calls": len(samples)}
    if wire:
        _, idle = loop(lambda: None, len(samples))
        out["wire_bytes"], out["wire_packets"], out["wire_retransmits"] = (
            (c - i) / len(samples) for c, i in zip(counts, idle))
    return out


def _stat_totals(stats: dict, key: str) -> dict:
    return {k: stats[key][k] for k in ("bytes_sent", "bytes_received", "control_bytes")}


def _run_config(comm, efc, cfg: Config, x, size: int, spec: dict, mean) -> dict:
    """One efcomm row; a configuration that cannot run is a row with its reason."""
    import numpy as np

    import efcomm as ef

    row = {"kind": "efcomm", "size": size, "config": cfg.text, "compressor": cfg.compressor,
           "feedback": cfg.feedback, "algorithm": cfg.algorithm, "status": "ok", "reason": None}
    if isinstance(efc, str):
        row.update(status="unavailable", reason=efc)
        return row
    try:
        reducer = ef.Reducer(efc, compressor=cfg.compressor, feedback=cfg.feedback, algorithm=cfg.algorithm)
    except ef.InvalidArgument as e:
        row.update(status="unavailable", reason=_error_text(e))
        return row
    key = f"bench/{size}"
    last = [None]

    def call():
        last[0] = reducer.allreduce(x, key=key)

    try:
        call()
        before = _stat_totals(reducer.stats, key)
        m = _measure(comm, call, spec["repeats"], spec["max_seconds"], spec["wire"])
        after = _stat_totals(reducer.stats, key)
    except ef.Error as e:
        row.update(status="error", reason=_error_text(e))
        return row
    delta = {k: (after[k] - before[k]) / m["calls"] for k in after}
    per_rank = comm.gather(delta)
    if comm.rank != 0:
        return row
    n = comm.size
    row.update(m)
    row["chosen"] = reducer.stats[key]["algorithm"]  # auto's choice
    row["bytes_sent_per_rank"] = sum(d["bytes_sent"] for d in per_rank) / n
    row["bytes_received_per_rank"] = sum(d["bytes_received"] for d in per_rank) / n
    row["control_bytes_per_rank"] = sum(d["control_bytes"] for d in per_rank) / n
    # Every byte a rank receives crossed lo once; the header agreement is an allgather, so each
    # rank's control bytes reach the n - 1 others.
    row["payload_bytes"] = sum(d["bytes_received"] + (n - 1) * d["control_bytes"] for d in per_rank)
    if "wire_bytes" in row and row["payload_bytes"] > 0:
        row["wire_ratio"] = row["wire_bytes"] / row["payload_bytes"]
    if mean is not None:
        est = np.asarray(last[0], dtype=np.float64)
        row["rel_err_vs_mean"] = float(np.linalg.norm(est - mean) / max(np.linalg.norm(mean), 1e-30))
    return row


def worker(spec: dict) -> int:
    """A rank's part: rows and progress lines on rank 0's stdout, for the parent to read."""
    import numpy as np
    from mpi4py import MPI

    import efcomm as ef

    comm = MPI.COMM_WORLD

    def send(prefix: str, payload) -> None:
        if comm.rank == 0:
            print(prefix + (payload if isinstance(payload, str) else json.dumps(payload)), flush=True)

    library = " ".join(MPI.Get_library_version().replace("Version:", "").split()[:2])  # "MPICH 5.0.2"
    send(_ROW, {"kind": "info", "ranks": comm.size, "mpi_library": library, "thread_level": MPI.Query_thread()})
    try:
        efc = ef.Communicator.mpi(comm)
    except ef.Error as e:
        efc = _error_text(e)  # every efcomm row reports it
    configs = [Config.parse(c) for c in spec["configs"]]
    for size in spec["sizes"]:
        x = np.random.default_rng(spec["seed"] + comm.rank).standard_normal(size, dtype=np.float32)
        mean = None
        if spec["baseline"]:
            send(_PROGRESS, f"{size_text(size)} MPI_Allreduce")
            y = np.zeros_like(x)
            comm.Allreduce(x, y, op=MPI.SUM)
            m = _measure(comm, lambda: comm.Allreduce(x, y, op=MPI.SUM), spec["repeats"], spec["max_seconds"],
                         spec["wire"])
            send(_ROW, {"kind": "mpi", "size": size, **m})
            if comm.rank == 0:
                mean = y.astype(np.float64) / comm.size
            del y
        for cfg in configs:
            send(_PROGRESS, f"{size_text(size)} {cfg.text}")
            send(_ROW, _run_config(comm, efc, cfg, x, size, spec, mean))
    return 0


# ---- parent -----------------------------------------------------------------------------------

@dataclass
class Launch:
    """One mpiexec run: every size and config at one rate and number of ranks."""
    part: str  # "main" or "scaling"
    rate: Optional[int]
    ranks: int
    sizes: list
    configs: list
    baseline: bool

    @property
    def steps(self) -> int:
        return len(self.sizes) * (len(self.configs) + self.baseline)


def find_mpiexec(explicit: Optional[str]) -> Optional[str]:
    if explicit:
        return shutil.which(explicit)
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")


def mpi_unavailable_reason(mpiexec: Optional[str]) -> Optional[str]:
    """None when mpiexec and mpi4py are there, else what to install."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install mpi4py mpich)"
    if mpiexec is None:
        return "mpiexec not found (pip install mpich, or put an MPI's mpiexec on PATH, or pass --mpiexec)"
    return None


def estimate_seconds(launch: Launch, repeats: int, max_seconds: float) -> float:
    """A generous bound on a launch's time: every call moved like an allgather of the whole
    vectors (the most any configuration sends), at the rate or 4 Gbit/s, plus compute."""
    n, total = launch.ranks, 0.0
    link = launch.rate or 4e9
    for size in launch.sizes:
        per_call = n * (n - 1) * 4 * size * 8 / link + 0.5 + 3e-8 * size * n
        calls = 2 + min(repeats, 1 + max_seconds / per_call)  # warm-up, timed, idle loop is cheap
        total += (len(launch.configs) + launch.baseline) * calls * per_call + 1e-7 * size * n
    return 120 + 3 * total


def _stat(pid: int) -> Optional[tuple]:
    """(parent pid, start time) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(pid: int) -> list:
    """(pid, start time) of every process below pid."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        st = _stat(int(entry))
        if st is not None:
            children.setdefault(st[0], []).append((int(entry), st[1]))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def _terminate(proc: subprocess.Popen) -> None:
    """Stops mpiexec and the ranks it started (they run in sessions of their own, so a process
    group signal would miss them): SIGTERM to mpiexec, which passes it on, then SIGKILL to
    whatever of its tree is left."""
    if proc.poll() is not None:
        return
    tree = _descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid, start in tree:
        st = _stat(pid)
        if st is not None and st[1] == start:  # still that process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def launch_worker(cmd: list, env: dict, timeout: float, on_line) -> tuple:
    """Runs cmd, passing stdout lines to on_line; returns (status, detail): ("ok", None),
    ("failed", stderr tail) or ("timeout", stderr tail)."""
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True,
                                start_new_session=True)
        lines: queue.Queue = queue.Queue()

        def pump():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        status = "ok"
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    status = "timeout"
                    break
                if line is None:
                    break
                on_line(line.rstrip("\n"))
            if status == "ok":
                try:
                    rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                    status = "ok" if rc == 0 else "failed"
                except subprocess.TimeoutExpired:
                    status = "timeout"
        finally:
            _terminate(proc)
        if status == "ok":
            return status, None
        err.seek(0)
        tail = err.read()[-2000:].strip()
        if status == "timeout":
            return status, f"no result within {timeout:.0f} s (--timeout); stderr: {tail or '(empty)'}"
        return status, f"mpiexec exited with status {proc.returncode}; stderr: {tail or '(empty)'}"


def _plan(args) -> list:
    plans = [Launch("main", rate, n, args.sizes, args.configs, True) for rate in args.rates for n in args.ranks]
    if args.scaling:
        cfgs = [Config.parse(c) for c in SCALING_CONFIGS]
        plans += [Launch("scaling", None, n, [args.scaling_size], cfgs, False) for n in args.scaling_ranks]
    return plans


def _worker_env(ranks: int) -> dict:
    import efcomm

    env = dict(os.environ, **TCP_ENV)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(efcomm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
    # Ranks share this machine's cores: one OpenMP team per rank of its share, not a team of
    # every core per rank spinning against the others.
    env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // ranks)))
    return env


def _run_launches(args, launches: list, ns: Optional[_netns.Namespace], ns_reason: Optional[str],
                  mpiexec: str, progress: Progress) -> dict:
    """Runs every launch; a launch that fails or times out is recorded and the rest still run."""
    rows, runs, info, qdiscs = [], [], {}, {}
    for launch in launches:
        entry = {"part": launch.part, "rate": launch.rate, "ranks": launch.ranks, "status": "ok", "reason": None}
        runs.append(entry)
        end = progress.done + launch.steps
        where = f"{_netns.rate_text(launch.rate)}, {launch.ranks} ranks"
        if launch.rate is not None and ns is None:
            entry.update(status="skipped", reason=ns_reason)
            progress.done = end
            continue
        if ns is not None:
            try:
                ns.set_rate(launch.rate)
            except RuntimeError as e:  # e.g. a kernel without the tbf qdisc
                entry.update(status="skipped", reason=str(e))
                progress.done = end
                continue
            qdiscs[_netns.rate_text(launch.rate)] = ns.qdisc()
        spec = {"sizes": launch.sizes, "configs": [c.text for c in launch.configs], "seed": args.seed,
                "repeats": args.repeats, "max_seconds": args.max_seconds, "baseline": launch.baseline,
                "wire": ns is not None}
        cmd = [mpiexec, "-n", str(launch.ranks), sys.executable, "-m", "efcomm.bench.allreduce",
               "--worker", json.dumps(spec)]
        if ns is not None:
            cmd = ns.command(cmd)

        def on_line(line, launch=launch, where=where):
            if line.startswith(_PROGRESS):
                progress.step(f"{where}: {line[len(_PROGRESS):]}")
            elif line.startswith(_ROW):
                row = json.loads(line[len(_ROW):])
                if row["kind"] == "info":
                    info.update(row)
                else:
                    rows.append({"part": launch.part, "rate": launch.rate, "ranks": launch.ranks, **row})

        timeout = args.timeout or estimate_seconds(launch, args.repeats, args.max_seconds)
        env = _worker_env(launch.ranks)
        status, detail = launch_worker(cmd, env, timeout, on_line)
        entry.update(status=status, reason=detail, timeout_s=timeout, omp_num_threads=env["OMP_NUM_THREADS"])
        progress.done = end
    return {"rows": rows, "runs": runs, "info": info, "qdiscs": qdiscs}


def run(args) -> dict:
    resolve(args)
    mpiexec = find_mpiexec(args.mpiexec)
    reason = mpi_unavailable_reason(mpiexec)
    if reason:
        raise SystemExit(f"efcomm bench allreduce: {reason}")
    machine = machine_info()
    launches = _plan(args)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the namespace goes too
    try:
        with contextlib.ExitStack() as stack:
            ns, ns_reason = _netns.enter(stack, f"efcomm-bench-{os.getpid()}",
                                         any(launch.rate is not None for launch in launches), "efcomm bench allreduce")
            progress = Progress(total=sum(p.steps for p in launches), enabled=None if args.progress else False)
            try:
                done = _run_launches(args, launches, ns, ns_reason, mpiexec, progress)
            finally:
                progress.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    result = {
        "benchmark": "allreduce",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(args),
        "machine": machine,
        "config": {"sizes": args.sizes, "ranks": args.ranks, "rates": args.rates,
                   "configs": [c.text for c in args.configs], "repeats": args.repeats,
                   "max_seconds": args.max_seconds, "seed": args.seed, "dtype": "float32",
                   "scaling": {"ranks": args.scaling_ranks, "size": args.scaling_size,
                               "configs": list(SCALING_CONFIGS)} if args.scaling else None},
        "transport": {"mpi_library": done["info"].get("mpi_library"), "env": TCP_ENV,
                      "namespace": ns_reason is None, "namespace_unavailable": ns_reason,
                      "qdisc": done["qdiscs"] if ns_reason is None else None,
                      "burst_seconds": _netns.BURST_SECONDS, "min_burst_bytes": _netns.MIN_BURST_BYTES,
                      "latency": _netns.LATENCY},
        "load_average_end": os.getloadavg()[0],
        "load_average_own": max([*args.ranks, *(args.scaling_ranks if args.scaling else [])]),
        "runs": done["runs"],
        "rows": done["rows"],
    }
    _derive(result)
    result["targets"] = evaluate(result)
    return result


def _derive(result: dict) -> None:
    """Speedups against the MPI row of the same rate, ranks and size, and MPI's throughput."""
    mpi = {(r["rate"], r["ranks"], r["size"]): r for r in result["rows"] if r["kind"] == "mpi"}
    for r in result["rows"]:
        if r["kind"] == "mpi" and "wire_bytes" in r:
            r["wire_gbps"] = r["wire_bytes"] * 8 / r["median_s"] / 1e9
        elif r["kind"] == "efcomm" and r["status"] == "ok":
            base = mpi.get((r["rate"], r["ranks"], r["size"]))
            if base is not None:
                r["mpi_median_s"] = base["median_s"]
                r["speedup"] = base["median_s"] / r["median_s"]


def command_line(args) -> str:
    parts = ["efcomm bench allreduce"]
    if args.quick:
        parts.append("--quick")
    base = QUICK if args.quick else {}
    for key, default, text in (("sizes", base.get("sizes", DEFAULT_SIZES), lambda v: ",".join(map(size_text, v))),
                               ("ranks", base.get("ranks", DEFAULT_RANKS), lambda v: ",".join(map(str, v))),
                               ("rates", base.get("rates", DEFAULT_RATES),
                                lambda v: ",".join(_netns.rate_arg(b) for b in v)),
                               ("scaling_ranks", base.get("scaling_ranks", DEFAULT_SCALING_RANKS),
                                lambda v: ",".join(map(str, v))),
                               ("scaling_size", base.get("scaling_size", DEFAULT_SCALING_SIZE), size_text)):
        value = text(getattr(args, key))
        if value != default:
            parts.append(f"--{key.replace('_', '-')} {value}")
    if args.repeats != base.get("repeats", DEFAULT_REPEATS):
        parts.append(f"--repeats {args.repeats}")
    if args.max_seconds != DEFAULT_MAX_SECONDS:
        parts.append(f"--max-seconds {args.max_seconds:g}")
    configs = [c.text for c in args.configs]
    if configs != list(DEFAULT_CONFIGS):
        parts.append("--configs " + " ".join(f"'{c}'" for c in configs))
    if not args.scaling:
        parts.append("--no-scaling")
    if args.seed != DEFAULT_SEED:
        parts.append(f"--seed {args.seed}")
    return " ".join(parts)


# ---- targets ----------------------------------------------------------------------------------

def _target(text, value, threshold, status, reason=None, shown=None) -> dict:
    return {"target": text, "value": value, "threshold": threshold, "status": status, "reason": reason,
            "shown": shown}


def _run_status(result, part, rate, ranks) -> Optional[dict]:
    return next((r for r in result["runs"] if r["part"] == part and r["rate"] == rate and r["ranks"] == ranks), None)


def _speed_targets(result: dict) -> list:
    out = []
    algorithms = [c.rpartition("@")[2] for c in result["config"]["configs"]
                  if c.rpartition("@")[0] == "+".join(TOPK)] or ["allgather"]
    for algorithm in algorithms:
        text = (f"{size_text(TARGET_SIZE)} float32, {TARGET_RANKS} ranks, 1 Gbit/s: TopK 1% + EF21 "
                f"({algorithm}) >= {TARGET_SPEEDUP:g}x faster than MPI_Allreduce")
        row = next((r for r in result["rows"] if r["kind"] == "efcomm" and r["size"] == TARGET_SIZE
                    and r["ranks"] == TARGET_RANKS and r["rate"] == TARGET_RATE
                    and (r["compressor"], r["feedback"], r["algorithm"]) == (*TOPK, algorithm)), None)
        run = _run_status(result, "main", TARGET_RATE, TARGET_RANKS)
        if row is None:
            if run is not None and run["status"] != "ok":  # skipped (no root), failed or timed out
                out.append(_target(text, None, TARGET_SPEEDUP, "SKIP" if run["status"] == "skipped" else "ERROR",
                                   run["reason"]))
            else:
                out.append(_target(text, None, TARGET_SPEEDUP, "SKIP",
                                   "not in this run (needs --sizes 64M --ranks 4 --rates 1gbit)"))
        elif row["status"] != "ok":
            out.append(_target(text, None, TARGET_SPEEDUP, "SKIP" if row["status"] == "unavailable" else "ERROR",
                               row["reason"]))
        elif "speedup" not in row:
            out.append(_target(text, None, TARGET_SPEEDUP, "ERROR", "no MPI_Allreduce row to compare with"))
        else:
            v = row["speedup"]
            out.append(_target(text, v, TARGET_SPEEDUP, "PASS" if v >= TARGET_SPEEDUP else "FAIL",
                               shown=f"{v:.1f}x"))
    return out


def per_rank_bytes(row: dict) -> float:
    """Bytes a rank sends per call: the lo counter shared out over the ranks where it was
    measured, else Reducer.stats' bytes_sent."""
    if "wire_bytes" in row:
        return row["wire_bytes"] / row["ranks"]
    return row["bytes_sent_per_rank"]


def _scaling_target(result: dict) -> dict:
    text = (f"reduce_scatter per-rank bytes within {SCALING_TOLERANCE:.0%} from 2 to 8 ranks "
            f"(TopK 1% + EF21, {size_text(result['config']['scaling']['size'])} float32)"
            if result["config"]["scaling"] else "reduce_scatter per-rank bytes within 10% from 2 to 8 ranks")
    rows = [r for r in result["rows"] if r["part"] == "scaling" and r["algorithm"] == "reduce_scatter"]
    ok = [r for r in rows if r["status"] == "ok"]
    if not rows or not ok:
        why = rows[0]["reason"] if rows else "no scaling run (drop --no-scaling)"
        return _target(text, None, SCALING_TOLERANCE, "SKIP", why)
    values = {r["ranks"]: per_rank_bytes(r) for r in ok}
    spread = max(values.values()) / min(values.values()) - 1
    shown = f"+{spread:.1%} ({min(values)}-{max(values)} ranks)"
    if not {2, 8} <= set(values):
        return _target(text, spread, SCALING_TOLERANCE, "SKIP", "needs --scaling-ranks spanning 2 to 8", shown)
    return _target(text, spread, SCALING_TOLERANCE, "PASS" if spread <= SCALING_TOLERANCE else "FAIL", shown=shown)


def _scaling_bound_target(result: dict) -> dict:
    text = (f"reduce_scatter per-rank bytes within {SCALING_TOLERANCE:.0%} of the 2(n-1)/n lower bound, "
            "2 to 8 ranks (bytes / 2(n-1)/n constant; never above 2 messages)")
    ok = [r for r in result["rows"] if r["part"] == "scaling" and r["algorithm"] == "reduce_scatter"
          and r["status"] == "ok"]
    values = {r["ranks"]: per_rank_bytes(r) / ring_factor(r["ranks"]) for r in ok}
    if not {2, 8} <= set(values):
        return _target(text, None, SCALING_TOLERANCE, "SKIP", "needs --scaling-ranks spanning 2 to 8")
    spread = max(values.values()) / min(values.values()) - 1
    shown = f"+{spread:.1%} ({min(values)}-{max(values)} ranks)"
    return _target(text, spread, SCALING_TOLERANCE, "PASS" if spread <= SCALING_TOLERANCE else "FAIL", shown=shown)


def _wire_target(result: dict) -> dict:
    text = f"bytes on the wire within {WIRE_TOLERANCE:.0%} of the payload sum (every efcomm row)"
    rows = [r for r in result["rows"] if r["kind"] == "efcomm" and "wire_ratio" in r]
    if not rows:
        why = result["transport"]["namespace_unavailable"] or "no efcomm row ran"
        return _target(text, None, WIRE_TOLERANCE, "SKIP", why)
    worst = max(rows, key=lambda r: abs(r["wire_ratio"] - 1))
    dev = abs(worst["wire_ratio"] - 1)
    shown = (f"worst {worst['wire_ratio']:.3f}x ({size_text(worst['size'])}, {worst['ranks']} ranks, "
             f"{worst['config']})")
    return _target(text, dev, WIRE_TOLERANCE, "PASS" if dev <= WIRE_TOLERANCE else "FAIL", shown=shown)


def evaluate(result: dict) -> list:
    return [*_speed_targets(result), _scaling_target(result), _scaling_bound_target(result), _wire_target(result)]


# ---- rendering --------------------------------------------------------------------------------

def _ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _ratio(v: Optional[float], fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _config_name(row: dict) -> str:
    return f"{row['compressor']} + {row['feedback']}"


def _tables(result: dict) -> list:
    """(title, headers, rows, align) of every table."""
    tables = []
    mpi_rows = [r for r in result["rows"] if r["kind"] == "mpi"]
    if mpi_rows:
        body = [[_netns.rate_text(r["rate"]), str(r["ranks"]), size_text(r["size"]), _ms(r["median_s"]),
                 str(r["calls"]), _bytes(r["wire_bytes"] / r["ranks"]) if "wire_bytes" in r else "-",
                 _ratio(r.get("wire_gbps"), ".2f")] for r in mpi_rows]
        tables.append(("MPI_Allreduce of the uncompressed float32 vector (the baseline)",
                       ["rate", "ranks", "elements", "ms", "calls", "wire/rank", "Gbit/s on lo"], body, "lrrrrrr"))
    rates = []
    for r in result["rows"]:
        if r["part"] == "main" and r["rate"] not in rates:
            rates.append(r["rate"])
    for rate in rates:
        body = []
        for r in result["rows"]:
            if r["part"] != "main" or r["kind"] != "efcomm" or r["rate"] != rate:
                continue
            ok = r["status"] == "ok"
            notes = [] if ok else [f"{r['status']}: {r['reason']}"]
            if ok and r["algorithm"] == "auto" and r.get("chosen"):
                notes.append(f"chose {r['chosen']}")
            if r.get("wire_retransmits", 0) > 0:
                notes.append(f"{r['wire_retransmits']:.2g} TCP retransmissions/call")
            if ok and r.get("rel_err_vs_mean") is not None and r["compressor"] == "identity":
                notes.append(f"rel err vs MPI mean {r['rel_err_vs_mean']:.1e}")
            note = "; ".join(notes)
            body.append([str(r["ranks"]), size_text(r["size"]), _config_name(r), r["algorithm"],
                         _ms(r.get("median_s")), _ms(r.get("mpi_median_s")),
                         _ratio(r.get("speedup"), ".1f") + ("x" if "speedup" in r else ""),
                         _bytes(r.get("bytes_sent_per_rank")), _bytes(r.get("payload_bytes")),
                         _bytes(r.get("wire_bytes")), _ratio(r.get("wire_ratio")), note])
        tables.append((f"efcomm Reducer.allreduce, {_netns.rate_text(rate)}",
                       ["ranks", "elements", "compressor + feedback", "algorithm", "ms", "MPI ms", "speedup",
                        "sent/rank", "payload", "wire", "wire/payload", "note"], body, "rrllrrrrrrrl"))
    scaling = [r for r in result["rows"] if r["part"] == "scaling"]
    if scaling:
        algorithms = list(dict.fromkeys(r["algorithm"] for r in scaling))
        ranks = sorted({r["ranks"] for r in scaling})
        by = {(r["ranks"], r["algorithm"]): r for r in scaling}
        first = {a: next((per_rank_bytes(by[(n, a)]) for n in ranks
                          if (n, a) in by and by[(n, a)]["status"] == "ok"), None) for a in algorithms}
        body = []
        for n in ranks:
            cells = [str(n)]
            for a in algorithms:
                r = by.get((n, a))
                if r is None or r["status"] != "ok":
                    cells += ["-", "-", r["status"] if r else "-"]
                    continue
                cells += [_bytes(r["bytes_sent_per_rank"]), _bytes(r["wire_bytes"] / n) if "wire_bytes" in r
                          else "-", f"{per_rank_bytes(r) / first[a]:.2f}x"]
            bound = by.get((n, "reduce_scatter"))
            ok = bound is not None and bound["status"] == "ok" and first.get("reduce_scatter")
            if ok:
                growth = per_rank_bytes(bound) / first["reduce_scatter"]
                cells.append(f"{growth / (ring_factor(n) / ring_factor(ranks[0])):.2f}x")
            else:
                cells.append("-")
            body.append(cells)
        headers = ["ranks"] + [h for a in algorithms for h in (f"{a} sent/rank", f"{a} wire/rank",
                                                              f"{a} vs {ranks[0]} ranks")]
        headers.append("reduce_scatter vs 2(n-1)/n bound")
        size = result["config"]["scaling"]["size"]
        tables.append((f"Bytes per rank and call against the number of ranks: TopK 1% + EF21, {size_text(size)} "
                       "float32, unlimited rate", headers, body, "r" * len(headers)))
    return tables


def _targets_table(result: dict) -> tuple:
    rows = [[t["target"], t["shown"] or "-", _target_need(t), t["status"], t["reason"] or ""]
            for t in result["targets"]]
    return "Targets (issue 4)", ["target", "measured", "needed", "result", "why"], rows, "llrll"


def _target_need(t: dict) -> str:
    if "faster" in t["target"]:
        return f">= {t['threshold']:g}x"
    return f"<= {t['threshold']:.0%}"


def _skipped_lines(result: dict) -> list:
    out = []
    for r in result["runs"]:
        if r["status"] != "ok":
            out.append(f"{r['part']} run at {_netns.rate_text(r['rate'])}, {r['ranks']} ranks: "
                       f"{r['status']}: {r['reason']}")
    return out


def _conditions(result: dict) -> list:
    t, cfg = result["transport"], result["config"]
    lines = [f"Transport: {t['mpi_library'] or 'MPI'} over TCP at every rate "
             f"({' '.join(f'{k}={v}' for k, v in t['env'].items())}), "
             + ("in a network namespace of the benchmark's own, whose loopback carries only the ranks' traffic; "
                f"limits are a tc tbf qdisc on that loopback, shared by all ranks (burst "
                f"{t['burst_seconds'] * 1e3:g} ms of traffic, at least {_bytes(t['min_burst_bytes'])}; latency "
                f"{t['latency']})." if t["namespace"] else
                f"on the host's loopback (no namespace: {t['namespace_unavailable']}); wire bytes not measured.")]
    wire = (", wire = bytes sent on the namespace's lo (IP and TCP headers included) less those of the barriers"
            if t["namespace"] else "")
    threads = sorted({r["omp_num_threads"] for r in result["runs"] if "omp_num_threads" in r})
    if threads:
        lines.append(f"OpenMP threads per rank: {', '.join(threads)} (OMP_NUM_THREADS; by default the usable "
                     "cores divided by the ranks, at least 1).")
    lines.append(f"Timing: one warm-up call, then up to {cfg['repeats']} calls (fewer once they took "
                 f"{cfg['max_seconds']:g} s), each after a barrier; a call's time is the slowest rank's, the "
                 "median is shown. Bytes are per call: sent/rank and payload from Reducer.stats (payload = "
                 f"message bytes received by all ranks, header agreement included){wire}.")
    return lines


def _report(result: dict) -> Report:
    return Report("efcomm allreduce benchmark", load_warnings(result), _conditions(result), _skipped_lines(result),
                  _tables(result), _targets_table(result), target_summary(result))


def render_text(result: dict) -> str:
    return render_report_text(result, _report(result))


def render_markdown(result: dict, note: Optional[str] = None) -> str:
    return render_report_markdown(result, _report(result), note)


def plot(result: dict, path: str) -> Optional[str]:
    """The scaling part as a picture: bytes a rank sends per call and milliseconds per call against
    the number of ranks, one line per algorithm (MPI_Allreduce's time beside them), with the
    2(n-1)/n growth that bounds any allreduce dotted from reduce_scatter's first point. Returns
    path, or None without scaling rows."""
    rows = [r for r in result["rows"] if r["part"] == "scaling" and r.get("status", "ok") == "ok"]
    mine = [r for r in rows if r["kind"] == "efcomm"]
    if not mine:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    bytes_ax, time_ax = fig.subplots(1, 2)
    for algorithm in dict.fromkeys(r["algorithm"] for r in mine):
        pts = sorted((r["ranks"], per_rank_bytes(r), r["median_s"]) for r in mine if r["algorithm"] == algorithm)
        n = [p[0] for p in pts]
        bytes_ax.plot(n, [p[1] / 2**10 for p in pts], marker="o", label=algorithm)
        time_ax.plot(n, [p[2] * 1e3 for p in pts], marker="o", label=algorithm)
        if algorithm == "reduce_scatter":
            bytes_ax.plot(n, [pts[0][1] / 2**10 * ring_factor(k) / ring_factor(n[0]) for k in n], color="gray",
                          linestyle=":", label="2(n-1)/n from the first point")
    mpi = sorted((r["ranks"], r["median_s"]) for r in rows if r["kind"] == "mpi")
    if mpi:
        time_ax.plot([p[0] for p in mpi], [p[1] * 1e3 for p in mpi], marker="s", color="black",
                     label="MPI_Allreduce (uncompressed)")
    bytes_ax.set_ylabel("KiB sent per rank and call")
    time_ax.set_ylabel("ms per call (median)")
    for ax in (bytes_ax, time_ax):
        ax.set_xticks(sorted({r["ranks"] for r in mine}))
        ax.set_xlabel("ranks")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    size = result["config"]["scaling"]["size"]
    fig.suptitle(f"efcomm bench allreduce: TopK 1% + EF21 on {size_text(size)} float32, unlimited rate",
                 fontsize="medium")
    fig.savefig(path, dpi=110)
    return os.path.abspath(path)


def main(args) -> int:
    result = run(args)
    if args.plot:
        result["plot"] = plot(result, args.plot)
    emit(result, args, render_text, lambda r: render_markdown(r, args.note), DOCS_SECTION)
    if args.plot and not args.json:
        print(f"wrote {result['plot']}" if result["plot"] else "no plot: the run has no scaling part (--no-scaling)")
    return check_status(result, args)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m efcomm.bench.allreduce")
    p.add_argument("--worker", required=True, help="the JSON spec a parent passes to each rank")
    sys.exit(worker(json.loads(p.parse_args().worker)))
