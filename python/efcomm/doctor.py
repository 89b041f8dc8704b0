"""``efcomm doctor DIR``: merges the flight records of every rank (``efcomm-flight-rank<R>.json``,
written by :class:`efcomm.health.Monitor`) into one verdict: missing ranks, the first sequence number
where the ranks diverge (a rank that never arrived, or mismatched call order), ranks stuck inside a
collective, failed collectives, the monitor's anomalies, the slowest rank and the slowest link.

Exit status: 0 when no fault was found, 1 when one was, 2 for bad input (no readable dump, dumps
that disagree on the number of ranks or hold one rank twice). A dump that cannot be read (not a
flight record, an unknown version, malformed JSON) is left out with a warning and its rank counts
as missing; so are dumps of another run (the dumps' ``job``) found beside this run's.

Statistics are robust (medians and MADs) and paired by sequence number: at each collective a rank's
compute time (``gap``) or a link's transfer time (``peer_seconds``) is compared with the median over
the ranks or links at that same collective, which cancels what every rank shares (step length,
message size). A rank or link is named only past three margins at once (see the constants below): a
ratio to the median, an absolute floor, and a significance test, so noise does not raise alarms.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .bench._util import Progress, format_table, json_safe
from .errors import InvalidArgument, _one_line

__all__ = ["DumpError", "Dump", "load_dump", "find_dumps", "diagnose", "render_text", "write_plots",
           "add_arguments", "main"]

#: The ``efcomm doctor --help`` description.
DESCRIPTION = ("Merges the flight records of every rank (efcomm-flight-rank<R>.json, written by ef.health.Monitor) "
               "into one verdict: missing ranks, the first sequence number where the ranks diverge, ranks stuck "
               "inside a collective, mismatched calls, failures, anomalies, the slowest rank and the slowest link.")
FORMAT = "efcomm-flight-record"
VERSION = 1
DUMP_PATTERN = "efcomm-flight-rank*.json"

#: A straggler computes (time outside collectives, ``gap``) at least this many times as long as the
#: other ranks' median at the same collective (median over collectives).
STRAGGLER_RATIO = 1.25
#: A straggler's median extra compute per collective is at least this many seconds: scheduling noise
#: on a busy host reaches a few milliseconds.
STRAGGLER_FLOOR_S = 0.005
#: A slow link delivers (``peer_seconds``) at least this many times as late as the other links' median
#: at the same collective (median over collectives).
SLOW_LINK_RATIO = 1.25
#: A slow link's median extra delivery time is at least this many seconds.
SLOW_LINK_FLOOR_S = 0.002
#: The median excess of a named rank or link lies at least this many standard errors above zero; the
#: standard error of a median of n samples is 1.2533 x 1.4826 x MAD / sqrt(n), the MAD of every rank's
#: (link's) excesses around its own median, pooled, so a persistently slow one does not widen it.
SIGNIFICANCE = 5.0
#: Ranks and links are judged only over at least this many collectives.
MIN_SAMPLES = 5
#: Collectives at which every rank's gap is below this many seconds were issued back to back inside
#: one step (no compute before them); ratios of such tiny gaps are noise, so they are left out. A
#: collective carries compute when some rank's gap reaches it, as the live monitor counts
#: (docs/reliability.md): a straggler whose peers do not compute at all still counts.
COMPUTE_FLOOR_S = 0.001
#: A pending collective older than this many seconds when its rank dumped is stuck (the dump's own
#: ``timeout_floor`` is used when it has one).
STUCK_AFTER_S = 5.0
#: Ops whose byte count must be equal on every rank (allgatherv and alltoallv contributions vary).
EQUAL_BYTES_OPS = frozenset({"broadcast", "allreduceSum", "barrier"})

#: Up to this many ranks (or links), each one's reference excludes itself (see _others_median).
LEAVE_ONE_OUT_MAX = 64
#: A dump claiming more ranks than this is corrupt: no job is that large, and the doctor's work grows
#: with the size (a list of the missing ranks, the link analysis below).
MAX_SIZE = 1 << 20
#: The link analysis compares size x size pairs: past this many ranks it is skipped, with a note (its
#: table alone would hold size^2 cells, its statistics a Python loop per pair).
LINKS_MAX_RANKS = 256
#: It holds at most this many delivery times (32 MiB of float64; its statistics take a few times
#: that): the latest collectives that fit, so a job's ring of thousands of records stays affordable.
LINKS_MAX_VALUES = 1 << 22

MAD_TO_SIGMA = 1.4826      # MAD -> standard deviation, normal data
MEDIAN_SE = 1.2533         # standard error of a median / of a mean, normal data: sqrt(pi / 2)
SEVERITY = ("hang", "crash", "left", "missing", "mismatch", "nonfinite", "failed", "straggler", "slow_link")
CLOCK_NOTE = ("enqueue times are epoch clocks: exact between ranks of one host, across hosts only as "
              "good as their NTP synchronization (typically a millisecond or worse)")


class DumpError(InvalidArgument):
    """A file that is not a readable flight record of a version this doctor knows."""


# ---- reading ------------------------------------------------------------------------------------

@dataclass
class Record:
    """One collective as a rank recorded it; times in epoch seconds, NaN when unknown."""
    seq: int
    op: str
    key: Optional[str]
    algorithm: Optional[str]
    bytes: int
    enqueue: float
    start: float
    end: float
    status: str
    error: Optional[str]
    gap: float
    peer_seconds: Optional[List[float]]

    def call(self) -> dict:
        return {"op": self.op, "key": self.key, "algorithm": self.algorithm, "bytes": self.bytes}


@dataclass
class Dump:
    """One rank's flight record."""
    path: str
    rank: int
    size: int
    job: Optional[str]  # the Monitor's job token (None in dumps of builds before it)
    host: str
    pid: Optional[int]
    reason: str
    written: float
    options: dict
    dropped: int
    records: Dict[int, Record] = field(default_factory=dict)
    anomalies: List[dict] = field(default_factory=list)


def _num(v, where: str, path: str) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DumpError(f"{path}: {where} should be a number or null, got {v!r}")
    return float(v)


def _int(v, where: str, path: str, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise DumpError(f"{path}: {where} should be an integer >= {minimum}, got {v!r}")
    return v


def _str(v, where: str, path: str, optional: bool = False) -> Optional[str]:
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise DumpError(f"{path}: {where} should be a string{' or null' if optional else ''}, got {v!r}")
    return v


def _field(obj: dict, name: str, where: str, path: str):
    if name not in obj:
        raise DumpError(f"{path}: {where} lacks the field {name!r}")
    return obj[name]


def load_dump(path: str) -> Dump:
    """Reads and validates one flight record; :class:`DumpError` names the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DumpError(f"{path}: cannot read: {e}") from None
    try:
        top = json.loads(text)
    except json.JSONDecodeError as e:
        raise DumpError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
                        "not an efcomm flight record, or a truncated one") from None
    if not isinstance(top, dict) or top.get("format") != FORMAT:
        got = top.get("format") if isinstance(top, dict) else type(top).__name__
        raise DumpError(f"{path}: not an efcomm flight record (format {got!r}, expected {FORMAT!r})")
    version = top.get("version")
    if version != VERSION:
        raise DumpError(f"{path}: flight-record version {version!r}; this efcomm doctor reads version {VERSION} "
                        "(use the efcomm release that wrote the dumps)")
    g = lambda name: _field(top, name, "the record", path)  # noqa: E731
    size = _int(g("size"), "size", path, 1)
    if size > MAX_SIZE:
        raise DumpError(f"{path}: size {size} is not a number of ranks a job has (at most {MAX_SIZE}): a corrupt "
                        "dump")
    rank = _int(g("rank"), "rank", path)
    if rank >= size:
        raise DumpError(f"{path}: rank {rank} is not below size {size}")
    options = top.get("options") or {}
    if not isinstance(options, dict):
        raise DumpError(f"{path}: options should be an object, got {options!r}")
    pid = top.get("pid")
    dump = Dump(path=path, rank=rank, size=size, job=_str(top.get("job"), "job", path, True) or None,
                host=_str(top.get("host", ""), "host", path) or "",
                pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                reason=_str(top.get("reason", "?"), "reason", path) or "?",
                written=_num(top.get("written"), "written", path), options=options,
                dropped=_int(top.get("dropped", 0), "dropped", path))
    records = g("records")
    if not isinstance(records, list):
        raise DumpError(f"{path}: records should be a list")
    for i, r in enumerate(records):
        where = f"records[{i}]"
        if not isinstance(r, dict):
            raise DumpError(f"{path}: {where} should be an object")
        f = lambda name: _field(r, name, where, path)  # noqa: E731
        peers = r.get("peer_seconds")
        if peers is not None:
            if not isinstance(peers, list) or len(peers) != size:
                raise DumpError(f"{path}: {where}.peer_seconds should be null or a list of {size} entries")
            peers = [_num(p, f"{where}.peer_seconds", path) for p in peers]
        status = _str(f("status"), f"{where}.status", path)
        if status not in ("ok", "pending", "failed"):
            raise DumpError(f"{path}: {where}.status should be ok, pending or failed, got {status!r}")
        rec = Record(seq=_int(f("seq"), f"{where}.seq", path), op=_str(f("op"), f"{where}.op", path),
                     key=_str(r.get("key"), f"{where}.key", path, True),
                     algorithm=_str(r.get("algorithm"), f"{where}.algorithm", path, True),
                     bytes=_int(r.get("bytes", 0), f"{where}.bytes", path),
                     enqueue=_num(f("enqueue"), f"{where}.enqueue", path),
                     start=_num(r.get("start"), f"{where}.start", path),
                     end=_num(r.get("end"), f"{where}.end", path), status=status,
                     error=_str(r.get("error"), f"{where}.error", path, True),
                     gap=_num(r.get("gap"), f"{where}.gap", path), peer_seconds=peers)
        if rec.seq in dump.records:
            raise DumpError(f"{path}: sequence number {rec.seq} recorded twice")
        dump.records[rec.seq] = rec
    anomalies = top.get("anomalies") or []
    if not isinstance(anomalies, list):
        raise DumpError(f"{path}: anomalies should be a list")
    for i, a in enumerate(anomalies):
        where = f"anomalies[{i}]"
        if not isinstance(a, dict) or not isinstance(a.get("ranks", []), list):
            raise DumpError(f"{path}: {where} should be an object with a list of ranks")
        ranks = [_int(x, f"{where}.ranks", path) for x in a.get("ranks", [])]
        if any(x >= size for x in ranks):
            raise DumpError(f"{path}: {where} names rank {max(ranks)} of a job of {size}")
        dump.anomalies.append({"kind": _str(_field(a, "kind", where, path), f"{where}.kind", path),
                               "ranks": ranks,
                               "seq": _int(a.get("seq", 0), f"{where}.seq", path),
                               "detail": _str(a.get("detail", ""), f"{where}.detail", path) or "",
                               "time": _num(a.get("time"), f"{where}.time", path)})
    return dump


def find_dumps(paths: Sequence[str]) -> List[str]:
    """The dump files named by paths: a directory stands for its ``efcomm-flight-rank*.json``."""
    if not paths:
        raise DumpError("no directory or dump file given")
    out, seen = [], set()
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(glob.escape(p), DUMP_PATTERN)))
            if not found:
                raise DumpError(f"{p}: no {DUMP_PATTERN} in this directory (the Monitor writes them into "
                                "its dump_dir on a timeout, on SIGUSR1 and at close)")
        elif os.path.exists(p):
            found = [p]
        else:
            raise DumpError(f"{p}: no such file or directory")
        for f in found:
            real = os.path.realpath(f)
            if real not in seen:
                seen.add(real)
                out.append(f)
    return out


# ---- statistics ---------------------------------------------------------------------------------

def _column_median(x: np.ndarray) -> np.ndarray:
    """Median of each column over its finite entries; NaN where fewer than two."""
    out = np.full(x.shape[1], np.nan)
    cols = np.isfinite(x).sum(axis=0) >= 2
    if cols.any():
        out[cols] = np.nanmedian(x[:, cols], axis=0)
    return out


def _others_median(x: np.ndarray) -> np.ndarray:
    """The reference of each unit (row) at each collective (column): the median over the other units,
    so that a faulty unit does not pull its own reference (with two ranks: the other rank). Past
    LEAVE_ONE_OUT_MAX units one unit barely moves the median, and the plain column median is used."""
    if x.shape[0] > LEAVE_ONE_OUT_MAX:
        return np.broadcast_to(_column_median(x), x.shape)
    ref = np.full(x.shape, np.nan)
    for u in range(x.shape[0]):
        others = np.delete(x, u, axis=0)
        cols = np.isfinite(others).any(axis=0)
        if cols.any():
            ref[u, cols] = np.nanmedian(others[:, cols], axis=0)
    return ref


def _paired(x: np.ndarray) -> tuple:
    """x: units (ranks, links) by collectives, NaN where unknown. Per unit: samples, median ratio and
    median excess over the other units at the same collective (:func:`_others_median`), and the
    excess's significance z: over its standard error 1.2533 x sigma / sqrt(samples), sigma = 1.4826 x
    the MAD of every unit's excesses around its own median. Returns (the per-unit dicts, the excess
    matrix)."""
    ref = _others_median(x)
    ok = np.isfinite(x) & np.isfinite(ref)
    excess = np.where(ok, x - ref, np.nan)
    shift = np.array([np.median(excess[u, ok[u]]) if ok[u].any() else np.nan for u in range(x.shape[0])])
    # The noise: each unit's deviations from its own median excess, pooled, so that a unit that is
    # persistently slow (the fault looked for) does not widen it.
    spread = np.abs(excess - shift[:, None])[ok]
    sigma = MAD_TO_SIGMA * float(np.median(spread)) if spread.size else math.nan
    out = []
    for u in range(x.shape[0]):
        m = ok[u]
        n = int(m.sum())
        if n == 0:
            out.append({"samples": 0, "ratio": math.nan, "excess_s": math.nan, "z": math.nan})
            continue
        e = float(shift[u])
        rm = m & (ref[u] > 0)
        ratio = float(np.median(x[u, rm] / ref[u, rm])) if rm.any() else math.nan
        se = MEDIAN_SE * sigma / math.sqrt(n)
        z = e / se if se > 0 else (math.inf if e > 0 else 0.0)
        out.append({"samples": n, "ratio": ratio, "excess_s": e, "z": z})
    return out, excess


def _passes(t: dict, ratio: Optional[float], floor: float) -> bool:
    return (t["samples"] >= MIN_SAMPLES and t["excess_s"] >= floor and t["z"] >= SIGNIFICANCE
            and (ratio is None or t["ratio"] >= ratio))


# ---- the diagnosis ------------------------------------------------------------------------------

def _ranks_text(ranks: Sequence[int]) -> str:
    ranks = list(ranks)
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _call_text(c: dict, with_bytes: bool = True) -> str:
    parts = [f"key {c['key']!r}" if c.get("key") is not None else None,
             f"algorithm {c['algorithm']!r}" if c.get("algorithm") is not None else None,
             f"{c['bytes']} bytes" if with_bytes and c.get("bytes") is not None else None]
    parts = [p for p in parts if p]
    return c["op"] + (f" ({', '.join(parts)})" if parts else "")


def _ms(s: float) -> str:
    return "-" if s is None or not math.isfinite(s) else f"{s * 1e3:.1f} ms"


def _signature(r: Record) -> tuple:
    return (r.op, r.key, r.algorithm, r.bytes if r.op in EQUAL_BYTES_OPS else None)


def _group_calls(recs: Dict[int, Record]) -> List[dict]:
    """The ranks grouped by what they called; the largest group first (ties: lowest rank first)."""
    groups: Dict[tuple, List[int]] = {}
    for r in sorted(recs):
        groups.setdefault(_signature(recs[r]), []).append(r)
    out = []
    for sig, ranks in groups.items():
        c = recs[ranks[0]].call()
        if sig[3] is None:
            c["bytes"] = None
        out.append({"ranks": ranks, **c})
    return sorted(out, key=lambda g: (-len(g["ranks"]), g["ranks"][0]))


def _stuck_after(d: Dump) -> float:
    v = d.options.get("timeout_floor")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else STUCK_AFTER_S


def _one_job(dumps: Sequence[Dump], warnings: List[str]) -> List[Dump]:
    """The dumps of one run: where a directory holds dumps of several (a rank that crashed left its
    dump of an earlier run in place; an earlier run of more ranks), the latest run, whose newest
    dump is the newest (ties: the one with more dumps); the others' are left out, with a warning,
    so that their ranks count as missing."""
    jobs = sorted({d.job for d in dumps if d.job})
    if len(jobs) <= 1:
        return list(dumps)
    latest = {j: max((d.written for d in dumps if d.job == j and math.isfinite(d.written)), default=-math.inf)
              for j in jobs}
    main = max(jobs, key=lambda j: (latest[j], sum(d.job == j for d in dumps)))
    foreign = [d for d in dumps if d.job not in (main, None)]
    warnings.append(f"{len(foreign)} dump(s) of another run left out ({', '.join(d.path for d in foreign)}: job "
                    f"{'/'.join(sorted({d.job for d in foreign}))}, this run is job {main}); a rank without a "
                    "dump of this run counts as missing")
    return [d for d in dumps if d.job in (main, None)]


def diagnose(dumps: Sequence[Dump], unreadable: Sequence[Tuple[str, str]] = ()) -> dict:
    """Merges the dumps (at most one per rank) into the doctor's findings; see :func:`main`.
    ``unreadable``: (path, why) of dump files that could not be read (warned about; their ranks
    count as missing)."""
    if not dumps:
        raise DumpError("no dump to read")
    warnings = [f"{path} was left out: {why}" for path, why in unreadable]
    dumps = _one_job(dumps, warnings)
    by_rank: Dict[int, Dump] = {}
    for d in dumps:
        if d.rank in by_rank:
            raise DumpError(f"two dumps of rank {d.rank}: {by_rank[d.rank].path} and {d.path} (from two runs?): "
                            "name the files of one run")
        by_rank[d.rank] = d
    ranks = sorted(by_rank)
    sizes = sorted({d.size for d in dumps})
    if len(sizes) > 1:
        raise DumpError("the dumps disagree on the number of ranks: " + "; ".join(
            f"{_ranks_text(of)} {'says' if len(of) == 1 else 'say'} {s}"
            for s, of in ((s, [r for r in ranks if by_rank[r].size == s]) for s in sizes))
            + " (dumps of different jobs?): name the files of one run")
    size = sizes[0]
    missing = [r for r in range(size) if r not in by_rank]
    recs = {r: by_rank[r].records for r in ranks}
    for r in ranks:
        if by_rank[r].dropped:
            warnings.append(f"rank {r}'s ring dropped its {by_rank[r].dropped} oldest records (capacity "
                            f"{by_rank[r].options.get('capacity', '?')})")
    hosts = sorted({by_rank[r].host for r in ranks})

    seqs = sorted(set().union(*[set(recs[r]) for r in ranks]))
    with_records = [r for r in ranks if recs[r]]
    first = max((min(recs[r]) for r in with_records), default=0)
    last_of = {r: (max(recs[r]) if recs[r] else None) for r in ranks}
    last_all = max((v for v in last_of.values() if v is not None), default=None)

    # Pending collectives: old ones (past the rank's timeout floor when it dumped, or dumped on a
    # timeout) are stuck; so are those waiting for a rank that never arrived (below).
    pending = []
    for r in ranks:
        d = by_rank[r]
        for s, rec in sorted(recs[r].items()):
            if rec.status == "pending":
                age = d.written - rec.enqueue
                old = d.reason == "timeout" or (math.isfinite(age) and age >= _stuck_after(d))
                pending.append({"rank": r, "seq": s, **rec.call(), "age_s": age, "stuck": bool(old)})

    # Ranks whose records end before the others'. A dump written before the others issued the next
    # collective is merely older (stale), and one written less than a timeout floor after it was
    # issued elsewhere (a dump taken while running: SIGUSR1, on demand) merely behind; neither is
    # evidence of a rank that never arrived.
    stale, behind, early, left = [], [], {}, []
    for r in ranks:
        last = last_of[r]
        if last_all is None or (last is not None and last >= last_all):
            continue
        nxt = [s for s in seqs if s > (last if last is not None else -1) and s >= first]
        if not nxt:
            continue
        # A rank that closed its monitor (dumped at close) while the others' next collective
        # failed or hangs without it left the job early (an exception out of its loop).
        if by_rank[r].reason == "close" and any(nxt[0] in recs[o] and recs[o][nxt[0]].status != "ok"
                                                 for o in ranks if o != r):
            early[r] = nxt[0]
            left.append(r)
            continue
        issued = min(recs[o][nxt[0]].enqueue for o in ranks if nxt[0] in recs[o])
        lag = by_rank[r].written - issued
        waited = any(p["stuck"] and p["seq"] >= nxt[0] for p in pending)
        if math.isfinite(lag) and lag < 0:
            stale.append(r)
            warnings.append(f"rank {r}'s dump ({by_rank[r].reason}) was written before the others issued seq "
                            f"{nxt[0]}: it is older, not evidence that rank {r} stopped")
        elif (math.isfinite(lag) and lag < _stuck_after(by_rank[r]) and not waited
              and by_rank[r].reason != "timeout"):
            behind.append(r)
            warnings.append(f"rank {r} had not reached seq {nxt[0]} {lag:.2f} s after another rank issued it, "
                            f"when it dumped ({by_rank[r].reason}): behind, not stuck")
        else:
            early[r] = nxt[0]
    for p in pending:
        p["stuck"] = p["stuck"] or any(p["seq"] >= s for s in early.values())

    # Walk the collectives every rank should hold: the first divergence, every mismatch.
    divergence, mismatches = None, []
    for s in (q for q in seqs if q >= first):
        present = {r: recs[r][s] for r in ranks if s in recs[r]}
        absent = [r for r in ranks if s not in recs[r] and r not in stale and r not in behind]
        groups = _group_calls(present)
        if len(groups) > 1:
            mismatches.append({"seq": s, "calls": groups})
        if divergence is None and (absent or len(groups) > 1):
            kind = "absent" if absent and len(groups) <= 1 else "mismatch" if not absent else "both"
            divergence = {"seq": s, "kind": kind, "absent": absent, "present": sorted(present), "calls": groups}

    failed_groups: Dict[tuple, dict] = {}
    for r in ranks:
        for s, rec in sorted(recs[r].items()):
            if rec.status == "failed":
                g = failed_groups.setdefault((s, rec.op, rec.error or ""),
                                             {"seq": s, "op": rec.op, "key": rec.key, "error": rec.error, "ranks": []})
                g["ranks"].append(r)
    failed = sorted(failed_groups.values(), key=lambda g: (g["seq"], g["ranks"]))

    anomalies: Dict[tuple, dict] = {}
    for r in ranks:
        for a in by_rank[r].anomalies:
            k = (a["kind"], tuple(a["ranks"]), a["seq"])
            if k not in anomalies:
                anomalies[k] = {**a, "reported_by": []}
            anomalies[k]["reported_by"].append(r)
    anomaly_list = sorted(anomalies.values(), key=lambda a: (a["seq"], a["kind"], a["ranks"]))

    complete = [s for s in seqs if s >= first and all(s in recs[r] for r in ranks)]
    stragglers = _stragglers(ranks, recs, complete, len(hosts) <= 1)
    links = _links(size, ranks, recs, seqs)
    result = {
        "format": "efcomm-doctor", "version": 1,
        "inputs": [{"path": by_rank[r].path, "rank": r, "size": by_rank[r].size, "host": by_rank[r].host,
                    "pid": by_rank[r].pid, "reason": by_rank[r].reason, "written": by_rank[r].written,
                    "records": len(recs[r]), "first_seq": min(recs[r]) if recs[r] else None,
                    "last_seq": last_of[r], "dropped": by_rank[r].dropped,
                    "last_call": ({"seq": last_of[r], **recs[r][last_of[r]].call(),
                                   "status": recs[r][last_of[r]].status} if recs[r] else None)}
                   for r in ranks],
        "size": size, "ranks": ranks, "missing_ranks": missing, "hosts": hosts,
        "seq_range": [first, last_all] if last_all is not None else None,
        "complete_seqs": len(complete),
        "divergence": divergence, "ends_early": [{"rank": r, "seq": s} for r, s in sorted(early.items())],
        "left": left,
        "stale_dumps": stale, "behind": behind, "mismatches": mismatches[:20], "mismatch_count": len(mismatches),
        "window": _window(divergence, seqs, ranks, recs),
        "pending": pending, "failed": failed, "anomalies": anomaly_list,
        "stragglers": stragglers, "links": links, "warnings": warnings,
        "thresholds": {"straggler_ratio": STRAGGLER_RATIO, "straggler_floor_s": STRAGGLER_FLOOR_S,
                       "slow_link_ratio": SLOW_LINK_RATIO, "slow_link_floor_s": SLOW_LINK_FLOOR_S,
                       "significance": SIGNIFICANCE, "min_samples": MIN_SAMPLES,
                       "compute_floor_s": COMPUTE_FLOOR_S},
        "clock_note": CLOCK_NOTE,
    }
    result["faults"] = _faults(result, by_rank, recs, early)
    result["fault"] = bool(result["faults"])
    result["exit_code"] = 1 if result["faults"] else 0
    result["verdict"] = _verdict(result)
    return result


def _window(divergence, seqs, ranks, recs) -> list:
    """Who recorded what around the first divergence (a few collectives either side)."""
    if divergence is None:
        return []
    i = seqs.index(divergence["seq"])
    out = []
    for s in seqs[max(0, i - 3):i + 3]:
        out.append({"seq": s, "ranks": [({"rank": r, "op": recs[r][s].op, "key": recs[r][s].key,
                                          "status": recs[r][s].status} if s in recs[r] else None) for r in ranks]})
    return out


def _stragglers(ranks, recs, complete, one_host: bool) -> dict:
    """Per rank: compute gap (median, mean, ratio to the median of the other ranks at the same
    collective) and arrival lateness (enqueue minus the other ranks' median enqueue of the same
    collective)."""
    empty = {"rows": [], "compute_seqs": 0, "flagged": [], "slowest": None, "period_s": math.nan, "notes": []}
    if len(ranks) < 2 or not complete:
        return empty
    gap = np.array([[recs[r][s].gap for s in complete] for r in ranks])
    enq = np.array([[recs[r][s].enqueue for s in complete] for r in ranks])
    compute = (np.where(np.isfinite(gap), gap, -np.inf).max(axis=0) >= COMPUTE_FLOOR_S) & (
        np.isfinite(gap).sum(axis=0) >= 2)
    gtests, _ = _paired(gap[:, compute])
    # A slowdown that began late (a node degrading mid-run) is diluted in medians over the whole
    # record: the latest third of the compute collectives (at least 2 x MIN_SAMPLES) is tested too.
    cols = np.flatnonzero(compute)
    tail = cols[-max(2 * MIN_SAMPLES, len(cols) // 3):]
    rtests = _paired(gap[:, tail])[0] if len(tail) < len(cols) else None
    # Lateness over the compute collectives (a step's first; the later ones inherit the previous end);
    # over all when there are too few.
    lcols = compute if compute.sum() >= MIN_SAMPLES else np.ones(len(complete), bool)
    eref = _column_median(enq[:, lcols])
    ltests, late = _paired(enq[:, lcols])
    period = float(np.median(np.diff(eref[np.isfinite(eref)]))) if np.isfinite(eref).sum() >= 3 else math.nan
    late_floor = max(STRAGGLER_FLOOR_S, (STRAGGLER_RATIO - 1) * period if math.isfinite(period) else 0.0)
    rows, flagged, notes = [], [], []
    for i, r in enumerate(ranks):
        g = gap[i, compute]
        g = g[np.isfinite(g)]
        lt = late[i][np.isfinite(late[i])]
        last_share = (float(np.mean(np.nanargmax(np.where(np.isfinite(late), late, -np.inf), axis=0) == i))
                      if late.shape[1] else math.nan)
        row = {"rank": r, "gap_median_s": float(np.median(g)) if g.size else math.nan,
               "gap_mean_s": float(np.mean(g)) if g.size else math.nan,
               "gap_ratio": gtests[i]["ratio"], "gap_excess_s": gtests[i]["excess_s"], "gap_z": gtests[i]["z"],
               "gap_samples": gtests[i]["samples"],
               "late_median_s": float(np.median(lt)) if lt.size else math.nan,
               "late_mean_s": float(np.mean(lt)) if lt.size else math.nan,
               "late_z": ltests[i]["z"], "late_samples": ltests[i]["samples"], "last_share": last_share}
        gap_flag = _passes(gtests[i], STRAGGLER_RATIO, STRAGGLER_FLOOR_S)
        late_flag = _passes(ltests[i], None, late_floor)
        if not gap_flag and rtests is not None and _passes(rtests[i], STRAGGLER_RATIO, STRAGGLER_FLOOR_S):
            gap_flag = True
            row.update(since_seq=complete[int(tail[0])], recent_seqs=len(tail), recent_ratio=rtests[i]["ratio"],
                       recent_excess_s=rtests[i]["excess_s"], recent_z=rtests[i]["z"])
        if gap_flag or (late_flag and gtests[i]["samples"] < MIN_SAMPLES and one_host):
            row["straggler"] = True
            flagged.append(r)
        else:
            row["straggler"] = False
            if late_flag:
                notes.append(f"rank {r} arrives {_ms(row['late_median_s'])} late at the median collective but "
                             "computes like the others: a delay outside its compute (a slow receive before it, "
                             "waiting on something outside efcomm) or, across hosts, a clock offset")
        rows.append(row)
    by_ratio = [row for row in rows if math.isfinite(row["gap_ratio"])]
    slowest = (max(by_ratio, key=lambda row: row["gap_ratio"])["rank"] if by_ratio else
               max(rows, key=lambda row: -math.inf if not math.isfinite(row["late_median_s"])
                   else row["late_median_s"])["rank"])
    return {"rows": rows, "compute_seqs": int(compute.sum()), "lateness_seqs": int(lcols.sum()),
            "seqs": [complete[j] for j in np.flatnonzero(lcols)],
            "lateness_s": [[float(v) for v in late[i]] for i in range(len(ranks))],
            "flagged": flagged, "slowest": slowest, "period_s": period, "late_floor_s": late_floor, "notes": notes}


def _links(size, ranks, recs, seqs) -> dict:
    """The per-pair delivery matrix: [src][dst] = median over collectives of rank dst's
    peer_seconds[src]; slow cells, and rows (a rank's send side) or columns (its receive side).
    ``note`` says why no matrix was computed past LINKS_MAX_RANKS ranks, or over how few of the
    collectives it was (LINKS_MAX_VALUES)."""
    none = {"matrix_s": None, "reference_s": math.nan, "cells": [], "flagged": [], "slow_send": [],
            "slow_recv": [], "slowest": None, "seqs": 0, "note": None}
    if size > LINKS_MAX_RANKS:
        return {**none, "note": f"links were not compared: {size} ranks are more than the {LINKS_MAX_RANKS} "
                                f"the per-pair analysis takes ({size * size} pairs)"}
    timed = [s for s in seqs if any(s in recs[r] and recs[r][s].peer_seconds is not None for r in ranks)]
    keep = LINKS_MAX_VALUES // (size * size)
    note = None
    if len(timed) > keep:
        note = (f"links judged over the latest {keep} of the {len(timed)} collectives with per-peer times "
                f"(the analysis holds at most {LINKS_MAX_VALUES} delivery times)")
        timed = timed[-keep:]
    cube = np.full((len(timed), size, size), np.nan)
    for j, s in enumerate(timed):
        for dst in ranks:
            rec = recs[dst].get(s)
            if rec is not None and rec.peer_seconds is not None:
                cube[j, :len(rec.peer_seconds), dst] = rec.peer_seconds  # shorter: a dump of a smaller job
    for r in range(size):
        cube[:, r, r] = np.nan
    have = np.isfinite(cube).any(axis=0)
    if not have.any():
        return none
    matrix = np.full((size, size), np.nan)
    matrix[have] = np.nanmedian(cube[:, have], axis=0)
    flat = cube.reshape(len(timed), size * size).T
    tests, _ = _paired(flat)
    cells, flagged = [], []
    for src in range(size):
        for dst in range(size):
            t = tests[src * size + dst]
            if src == dst or not t["samples"]:
                continue
            cell = {"src": src, "dst": dst, "seconds": float(matrix[src, dst]), **t,
                    "slow": _passes(t, SLOW_LINK_RATIO, SLOW_LINK_FLOOR_S)}
            cells.append(cell)
            if cell["slow"]:
                flagged.append((src, dst))
    slow_send, slow_recv = [], []
    if size >= 3:
        for r in range(size):
            if all((r, d) in flagged for d in range(size) if d != r):
                slow_send.append(r)
            if all((s, r) in flagged for s in range(size) if s != r):
                slow_recv.append(r)
    judged = [c for c in cells if c["samples"] >= MIN_SAMPLES and math.isfinite(c["ratio"])]
    slowest = max(judged or cells, key=lambda c: (c["ratio"] if math.isfinite(c["ratio"]) else -math.inf),
                  default=None)
    return {"matrix_s": [[float(v) for v in row] for row in matrix],
            "reference_s": float(np.nanmedian(matrix)) if np.isfinite(matrix).any() else math.nan,
            "cells": cells, "flagged": [list(f) for f in flagged], "slow_send": slow_send, "slow_recv": slow_recv,
            "slowest": ({k: slowest[k] for k in ("src", "dst", "seconds", "ratio", "excess_s", "z", "samples")}
                        if slowest else None),
            "seqs": int(np.isfinite(flat).any(axis=0).sum()), "note": note}


def _faults(res: dict, by_rank, recs, early) -> List[dict]:
    faults = []
    anomalies = res["anomalies"]
    stuck = [p for p in res["pending"] if p["stuck"]]
    stuck_seqs = sorted({p["seq"] for p in stuck})

    # -- hang / crash: ranks that never arrived, ranks without a dump, ranks stuck inside a collective
    monitor = [a for a in anomalies if a["kind"] in ("hang", "crash")]
    culprits = sorted(set(early) | set(res["missing_ranks"]) | {r for a in monitor for r in a["ranks"]})
    mismatched = {m["seq"] for m in res["mismatches"]}
    # Every rank stuck where they called different collectives: the mismatch explains the hang.
    stuck_on_mismatch = bool(stuck) and not culprits and set(stuck_seqs) <= mismatched
    if (culprits or stuck) and not stuck_on_mismatch:
        parts = []
        for r, s in sorted(early.items(), key=lambda kv: (kv[1], kv[0])):
            last = res["inputs"][res["ranks"].index(r)]["last_call"]
            was = (f"its last collective was seq {last['seq']}, {_call_text(last, False)}, {last['status']}"
                   if last else "it recorded no collective")
            if r in res["left"]:
                parts.append(f"rank {r} left the job: it closed its monitor ({was}) and the other ranks' seq {s} "
                             "could not complete without it")
            else:
                parts.append(f"rank {r} never reached seq {s} ({was}; dump reason {by_rank[r].reason!r})")
        first_failed = min((g["seq"] for g in res["failed"]), default=None)
        if res["missing_ranks"]:
            where = (f" and never reached seq {stuck_seqs[0]}" if stuck_seqs else
                     f"; the other ranks' seq {first_failed} failed without it" if first_failed is not None else "")
            parts.append(f"{_ranks_text(res['missing_ranks'])} wrote no dump (killed, stopped, or its dump "
                         f"directory is elsewhere){where}")
        for s in stuck_seqs:
            here = [p for p in stuck if p["seq"] == s]
            ages = [p["age_s"] for p in here if math.isfinite(p["age_s"])]
            age = f", pending for up to {max(ages):.1f} s when dumped" if ages else ""
            verb = "is" if len(here) == 1 else "are"
            parts.append(f"{_ranks_text([p['rank'] for p in here])} {verb} stuck inside seq {s} "
                         f"({_call_text(here[0], False)}{age})")
        for a in monitor:
            parts.append(f"the monitor reported a {a['kind']} of {_ranks_text(a['ranks'])} at seq {a['seq']}: "
                         f"{a['detail']}")
        # Where it happened: the records' first collective a culprit never reached, the first one
        # ranks are stuck in, or else the first one that failed; the monitor's seq is only the last
        # arrival the coordinator had heard of (arrivals travel in batches), so it counts only
        # without such records.
        from_records = list(early.values()) + stuck_seqs or ([first_failed] if first_failed is not None else [])
        seq = min(from_records) if from_records else min((a["seq"] for a in monitor), default=None)
        kind = "crash" if any(a["kind"] == "crash" for a in monitor) else "hang"
        if culprits and set(culprits) <= set(res["left"]):
            kind = "left"
            head = f"{_ranks_text(culprits).capitalize()} left the job early"
            head += f" at seq {seq}: " if seq is not None else ": "
        elif culprits:
            head = f"{'Crash' if kind == 'crash' else 'Hang or crash'} of {_ranks_text(culprits)}"
            head += f" at seq {seq}: " if seq is not None else ": "
        else:
            head = (f"Hang at seq {seq} on every rank, none missing or late: the transport (a link or the "
                    "network) rather than a rank: ")
        if not early and not stuck and not monitor:
            kind = "missing"
            head = f"Missing dump of {_ranks_text(culprits)}, nothing else points at it: "
        faults.append({"kind": kind, "ranks": culprits, "seq": seq, "summary": head + "; ".join(parts) + "."})

    # -- mismatched call order
    monitor_mm = [a for a in anomalies if a["kind"] == "mismatch"]
    if res["mismatches"]:
        m = res["mismatches"][0]
        major, minor = m["calls"][0], m["calls"][1:]
        odd = sorted(r for g in minor for r in g["ranks"])
        text = (f"Mismatched call order at seq {m['seq']}: " +
                "; ".join(f"{_ranks_text(g['ranks'])} called {_call_text(g)}" for g in minor) +
                f", while {_ranks_text(major['ranks'])} called {_call_text(major)}")
        if res["mismatch_count"] > 1:
            text += f"; {res['mismatch_count'] - 1} later collectives disagree too"
        if stuck_on_mismatch:
            text += f"; every rank is stuck inside seq {stuck_seqs[0]} (a hang caused by the mismatch)"
        faults.append({"kind": "mismatch", "ranks": odd, "seq": m["seq"], "summary": text + "."})
    elif monitor_mm:
        a = monitor_mm[0]
        faults.append({"kind": "mismatch", "ranks": a["ranks"], "seq": a["seq"],
                       "summary": f"Mismatch reported at seq {a['seq']} by {_ranks_text(a['reported_by'])}: "
                                  f"{a['detail']}."})

    # -- non-finite values
    for a in (a for a in anomalies if a["kind"] == "nonfinite"):
        faults.append({"kind": "nonfinite", "ranks": a["ranks"], "seq": a["seq"],
                       "summary": f"Non-finite values from {_ranks_text(a['ranks']) if a['ranks'] else 'a rank'} "
                                  f"at seq {a['seq']}: {a['detail']}."})

    # -- failures nothing above explains
    if res["failed"] and not any(f["kind"] in ("hang", "crash", "left", "mismatch") for f in faults):
        g = res["failed"][0]
        more = f" ({len(res['failed']) - 1} more failures)" if len(res["failed"]) > 1 else ""
        faults.append({"kind": "failed", "ranks": g["ranks"], "seq": g["seq"],
                       "summary": f"{g['op']} at seq {g['seq']} failed on {_ranks_text(g['ranks'])}: "
                                  f"{g['error']}{more}."})

    # -- stragglers: the doctor's statistics, and the monitor's windowed findings
    st = res["stragglers"]
    for r in st["flagged"]:
        row = next(x for x in st["rows"] if x["rank"] == r)
        if "since_seq" in row:
            text = (f"Straggler: rank {r} computes {row['recent_ratio']:.2f}x as long as the other ranks between "
                    f"the latest {row['recent_seqs']} compute collectives, from seq {row['since_seq']} on "
                    f"(+{_ms(row['recent_excess_s'])} per collective, {row['recent_z']:.0f} standard errors; "
                    f"{row['gap_ratio']:.2f}x over the whole record: it began late and lasts to the end)")
        elif row["gap_samples"] >= MIN_SAMPLES:
            text = (f"Straggler: rank {r} computes {row['gap_ratio']:.2f}x as long as the other ranks between "
                    f"collectives (+{_ms(row['gap_excess_s'])} per collective, {row['gap_z']:.0f} standard errors, "
                    f"median gap {_ms(row['gap_median_s'])}) and arrives {_ms(row['late_median_s'])} late at "
                    "the median collective")
        else:
            text = (f"Straggler: rank {r} arrives {_ms(row['late_median_s'])} late at the median collective "
                    f"({row['late_z']:.0f} standard errors; no compute gaps recorded)")
        faults.append({"kind": "straggler", "ranks": [r], "seq": None, "summary": text + "."})
    for a in (a for a in anomalies if a["kind"] == "straggler"):
        if not set(a["ranks"]) <= set(st["flagged"]):
            faults.append({"kind": "straggler", "ranks": a["ranks"], "seq": a["seq"],
                           "summary": f"The monitor reported {_ranks_text(a['ranks'])} as a straggler at seq "
                                      f"{a['seq']} ({a['detail']}); the dumps' medians do not confirm it "
                                      "(a passing slowdown?)."})

    # -- slow links: a row is a rank's send side, a column its receive side, else single links
    ln = res["links"]
    covered = set()
    for r in sorted(set(ln["slow_send"]) | set(ln["slow_recv"])):
        sides = [w for w, lst in (("send", ln["slow_send"]), ("receive", ln["slow_recv"])) if r in lst]
        cells = [c for c in ln["cells"] if c["slow"] and ((c["src"] == r and "send" in sides)
                                                          or (c["dst"] == r and "receive" in sides))]
        covered |= {(c["src"], c["dst"]) for c in cells}
        ratio = float(np.median([c["ratio"] for c in cells]))
        faults.append({"kind": "slow_link", "ranks": [r], "seq": None,
                       "summary": f"Slow network at rank {r}'s {' and '.join(sides)} side: every link "
                                  f"{'from' if sides == ['send'] else 'to' if sides == ['receive'] else 'of'} it "
                                  f"is slow, {ratio:.2f}x the other links (its NIC, cable or switch port)."})
    for c in ln["cells"]:
        if c["slow"] and (c["src"], c["dst"]) not in covered:
            faults.append({"kind": "slow_link", "ranks": [c["src"], c["dst"]], "seq": None,
                           "summary": f"Slow link {c['src']} -> {c['dst']}: rank {c['dst']} receives rank "
                                      f"{c['src']}'s data after {_ms(c['seconds'])}, {c['ratio']:.2f}x the other "
                                      f"links at the same collective (+{_ms(c['excess_s'])}, {c['z']:.0f} standard "
                                      "errors)."})
    flagged_links = {tuple(f) for f in ln["flagged"]}
    slow_sides = set(ln["slow_send"]) | set(ln["slow_recv"])
    for a in (a for a in anomalies if a["kind"] == "slow_link"):
        # Confirmed: the link the monitor named, or (one rank) a side the dumps find slow.
        confirmed = (tuple(a["ranks"]) in flagged_links if len(a["ranks"]) == 2
                     else len(a["ranks"]) == 1 and a["ranks"][0] in slow_sides)
        if not confirmed:
            faults.append({"kind": "slow_link", "ranks": a["ranks"], "seq": a["seq"],
                           "summary": f"The monitor reported a slow link ({' -> '.join(map(str, a['ranks']))}) at "
                                      f"seq {a['seq']} ({a['detail']}); the dumps' medians do not confirm it."})
    for a in anomalies:
        if a["kind"] not in SEVERITY:
            faults.append({"kind": a["kind"], "ranks": a["ranks"], "seq": a["seq"],
                           "summary": f"The monitor reported {a['kind']} at seq {a['seq']}: {a['detail']}."})
    order = {k: i for i, k in enumerate(SEVERITY)}
    return sorted(faults, key=lambda f: order.get(f["kind"], len(order)))


def _verdict(res: dict) -> str:
    st, ln = res["stragglers"], res["links"]
    tail = []
    if res["divergence"] is not None:
        tail.append(f"The ranks first diverge at seq {res['divergence']['seq']}.")
    tail += [w[0].upper() + w[1:] + "." for w in res["warnings"]]
    if res["faults"]:
        return " ".join(["Fault found."] + [f["summary"] for f in res["faults"]] + tail)
    lo, hi = res["seq_range"] or (None, None)
    parts = [f"No fault found: {len(res['ranks'])} of {res['size']} ranks dumped"]
    parts.append(f"{res['complete_seqs']} collectives (seq {lo}..{hi}) agree on op, key and algorithm on every rank"
                 if hi is not None else "no collective recorded")
    inflight = [p for p in res["pending"] if not p["stuck"]]
    parts.append("none stuck or failed" + (f" ({len(inflight)} in flight when dumped)" if inflight else "")
                 + ", no anomalies")
    if st["rows"] and st["slowest"] is not None:
        row = next(x for x in st["rows"] if x["rank"] == st["slowest"])
        if math.isfinite(row["gap_ratio"]):
            parts.append(f"the slowest rank, {row['rank']}, computes {row['gap_ratio']:.2f}x the other ranks' median "
                         f"(+{_ms(row['gap_excess_s'])}, {row['gap_z']:.1f} standard errors; a straggler needs "
                         f">= {STRAGGLER_RATIO}x, +{_ms(STRAGGLER_FLOOR_S)} and {SIGNIFICANCE:.0f} standard errors)")
        else:
            parts.append(f"the latest rank, {row['rank']}, arrives {_ms(row['late_median_s'])} late at the median "
                         "collective")
    else:
        parts.append("too few complete collectives to compare ranks")
    if ln["slowest"] is not None:
        c = ln["slowest"]
        parts.append(f"the slowest link, {c['src']} -> {c['dst']}, is {c['ratio']:.2f}x the other links' median "
                     f"(+{_ms(c['excess_s'])}; a slow link needs >= {SLOW_LINK_RATIO}x, +{_ms(SLOW_LINK_FLOOR_S)} "
                     f"and {SIGNIFICANCE:.0f} standard errors)")
    else:
        parts.append(ln["note"] or "no per-peer times in the dumps, so links were not compared")
    return " ".join(["; ".join(parts) + "."] + tail)


# ---- output -------------------------------------------------------------------------------------

def _f(v, fmt="{:.2f}"):
    return "-" if v is None or not math.isfinite(v) else fmt.format(v)


def render_text(res: dict) -> str:
    """The doctor's readable report: verdict first, then the tables that support it."""
    ranks = res["ranks"]
    lo, hi = res["seq_range"] or ("-", "-")
    lines = [f"efcomm doctor: {len(ranks)} dump(s), ranks {', '.join(map(str, ranks))} of {res['size']}"
             f"{' (missing: ' + ', '.join(map(str, res['missing_ranks'])) + ')' if res['missing_ranks'] else ''}"
             f", seq {lo}..{hi}, hosts {', '.join(h or '?' for h in res['hosts'])}", "",
             "VERDICT: " + res["verdict"], ""]
    rows = []
    for i in res["inputs"]:
        lc = i["last_call"]
        npend = sum(1 for p in res["pending"] if p["rank"] == i["rank"])
        nfail = sum(1 for g in res["failed"] if i["rank"] in g["ranks"])
        rows.append([str(i["rank"]), i["host"] or "?", str(i["pid"] if i["pid"] is not None else "-"), i["reason"],
                     str(i["records"]), f"{i['first_seq']}..{i['last_seq']}" if lc else "-",
                     f"{lc['op']} {lc['status']}" if lc else "-", str(npend), str(nfail), str(i["dropped"])])
    lines += ["Dumps", format_table(["rank", "host", "pid", "reason", "records", "seqs", "last call", "pending",
                                     "failed", "dropped"], rows, "lllrrllrrr"), ""]
    if res["window"]:
        d = res["divergence"]
        lines.append(f"Around the first divergence (seq {d['seq']}; '-' = no record)")
        body = []
        for w in res["window"]:
            body.append([str(w["seq"])] + [f"{c['op']}{' ' + c['key'] if c['key'] else ''} {c['status']}" if c else "-"
                                           for c in w["ranks"]])
        lines += [format_table(["seq"] + [f"rank {r}" for r in ranks], body, "r" + "l" * len(ranks)), ""]
    stuck = [p for p in res["pending"] if p["stuck"]]
    if res["pending"]:
        body = [[str(p["rank"]), str(p["seq"]), _call_text(p, False), _f(p["age_s"], "{:.1f} s"),
                 "stuck" if p["stuck"] else "in flight"] for p in res["pending"]]
        lines += [f"Pending collectives ({len(stuck)} stuck)",
                  format_table(["rank", "seq", "call", "age at dump", "state"], body, "rrlrl"), ""]
    if res["failed"]:
        body = [[str(g["seq"]), g["op"], ", ".join(map(str, g["ranks"])), g["error"] or ""] for g in res["failed"]]
        lines += ["Failed collectives", format_table(["seq", "op", "ranks", "error"], body, "rlll"), ""]
    if res["anomalies"]:
        body = [[a["kind"], ", ".join(map(str, a["ranks"])), str(a["seq"]), ", ".join(map(str, a["reported_by"])),
                 a["detail"]] for a in res["anomalies"]]
        lines += ["Anomalies reported by the monitor",
                  format_table(["kind", "ranks", "seq", "reported by", "detail"], body, "llrll"), ""]
    st = res["stragglers"]
    if st["rows"] and st["compute_seqs"] == 0:
        lines += ["No collective carried compute (every gap under the floor: collectives back to back), so no "
                  "rank can be told a straggler.", ""]
    elif st["rows"]:
        body = [[str(r["rank"]), _ms(r["gap_median_s"]), _ms(r["gap_mean_s"]), _f(r["gap_ratio"]) + "x",
                 _f(r["gap_z"], "{:.1f}"), _ms(r["late_median_s"]), _ms(r["late_mean_s"]),
                 _f(100 * r["last_share"], "{:.0f}%"), "STRAGGLER" if r["straggler"] else ""] for r in st["rows"]]
        lines += [f"Compute between collectives (gap) and arrival lateness per rank, over {st['compute_seqs']} "
                  f"compute collectives; ratio, z and lateness against the other ranks' median at each collective",
                  format_table(["rank", "gap median", "gap mean", "ratio", "z", "late median", "late mean",
                                "arrived last", "flag"], body, "rrrrrrrrl"),
                  f"({CLOCK_NOTE})"]
        lines += st["notes"] + [""]
    ln = res["links"]
    if ln["matrix_s"] is not None:
        n = res["size"]
        flagged = {tuple(f) for f in ln["flagged"]}
        body = [[str(s)] + [("-" if s == d else _f(1e3 * ln["matrix_s"][s][d] if ln["matrix_s"][s][d] is not None
                                                     else math.nan, "{:.2f}") + ("*" if (s, d) in flagged else ""))
                            for d in range(n)] for s in range(n)]
        lines += [f"Per-pair delivery time (ms, median over {ln['seqs']} collectives of rank dst's peer_seconds[src]; "
                  "* = slow)", format_table(["src\\dst"] + [str(d) for d in range(n)], body, "r" * (n + 1))]
        c = ln["slowest"]
        if c:
            lines.append(f"slowest link {c['src']} -> {c['dst']}: {_ms(c['seconds'])}, {_f(c['ratio'])}x the other "
                         f"links' median (median cell {_ms(ln['reference_s'])}), z {_f(c['z'], '{:.1f}')}")
        if ln["note"]:
            lines.append(f"({ln['note']})")
        lines.append("")
    elif ln["note"]:
        lines += [ln["note"][0].upper() + ln["note"][1:] + ".", ""]
    else:
        lines += ["No per-peer delivery times in the dumps (the backend does not measure them).", ""]
    t = res["thresholds"]
    lines.append(f"Thresholds: straggler >= {t['straggler_ratio']}x and +{_ms(t['straggler_floor_s'])}; slow link >= "
                 f"{t['slow_link_ratio']}x and +{_ms(t['slow_link_floor_s'])}; both {t['significance']:.0f} standard "
                 f"errors (pooled MAD) over >= {t['min_samples']} collectives.")
    p = res.get("plots")
    if p:
        if p.get("skipped"):
            lines.append(f"Plots skipped: {p['skipped']}")
        else:
            lines.append("Plots: " + ", ".join(v for k, v in p.items() if k in ("links", "lateness") and v))
        lines += [f"NOTE: {m}" for m in p.get("notes", [])]
    return "\n".join(lines)


def write_plots(res: dict, out_dir: str) -> dict:
    """efcomm-doctor-links.png (the delivery matrix as a heatmap) and efcomm-doctor-lateness.png (each
    rank's lateness over the sequence numbers) in out_dir; returns their paths, or why not."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError:
        return {"links": None, "lateness": None, "skipped": "matplotlib is not installed (pip install matplotlib)"}
    os.makedirs(out_dir, exist_ok=True)
    out = {"links": None, "lateness": None, "skipped": None, "notes": []}
    ln = res["links"]
    if ln["matrix_s"] is not None:
        m = np.array([[math.nan if v is None else v for v in row] for row in ln["matrix_s"]], float) * 1e3
        fig = Figure(figsize=(5.6, 4.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        img = ax.imshow(np.ma.masked_invalid(m), cmap="viridis")
        fig.colorbar(img, ax=ax, label="ms")
        n = m.shape[0]
        if n <= 16:
            hi = np.nanmax(m) if np.isfinite(m).any() else 0
            for s in range(n):
                for d in range(n):
                    if math.isfinite(m[s, d]):
                        ax.text(d, s, f"{m[s, d]:.2f}", ha="center", va="center", fontsize=8,
                                color="black" if m[s, d] > 0.6 * hi else "white")
        for s, d in ln["flagged"]:
            ax.add_patch(Rectangle((d - 0.5, s - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xlabel("receiving rank (dst)")
        ax.set_ylabel("sending rank (src)")
        ax.set_title("efcomm doctor: median delivery time per pair\n(red: slow link)", fontsize=10)
        out["links"] = os.path.abspath(os.path.join(out_dir, "efcomm-doctor-links.png"))
        fig.savefig(out["links"], dpi=110)
    else:
        out["notes"].append(f"no latency matrix plot: {ln['note'] or 'the dumps hold no per-peer times'}")
    st = res["stragglers"]
    if st["rows"] and st.get("seqs"):
        fig = Figure(figsize=(8, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        many = len(st["rows"]) > 12  # then only the stragglers in colour and in the legend
        for row, late in zip(st["rows"], st["lateness_s"]):
            label = f"rank {row['rank']}" + (" (straggler)" if row["straggler"] else "")
            if many and not row["straggler"]:
                ax.plot(st["seqs"], np.array(late) * 1e3, color="0.7", linewidth=0.6)
            else:
                ax.plot(st["seqs"], np.array(late) * 1e3, marker=".", markersize=3, linewidth=1, label=label)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xlabel("sequence number" + (" (grey: ranks found on time)" if many else ""))
        ax.set_ylabel("lateness (ms): enqueue - others' median")
        ax.set_title("efcomm doctor: arrival lateness per rank (epoch clocks; across hosts as good as NTP)",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        out["lateness"] = os.path.abspath(os.path.join(out_dir, "efcomm-doctor-lateness.png"))
        fig.savefig(out["lateness"], dpi=110)
    else:
        out["notes"].append("no lateness plot: no collective recorded by every rank")
    return out


# ---- command line -------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="DIR",
                   help=f"a directory of dumps ({DUMP_PATTERN}) or dump files")
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")
    plots = p.add_mutually_exclusive_group()
    plots.add_argument("--plots", metavar="DIR", default=None,
                       help="where the PNGs go (default: the dumps' directory)")
    plots.add_argument("--no-plots", dest="no_plots", action="store_true", help="write no PNG")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(paths: Sequence[str], plots_dir: Optional[str] = None, plots: bool = True, progress: bool = False) -> dict:
    """Reads the dumps under paths and diagnoses them (plots into plots_dir, default the dumps'
    directory); raises :class:`DumpError` on bad input."""
    files = find_dumps(paths)
    bar = Progress(len(files), enabled=None if progress else False)
    dumps, unreadable = [], []
    try:
        for f in files:
            bar.step(f"reading {os.path.basename(f)}")
            try:
                dumps.append(load_dump(f))
            except DumpError as e:  # one damaged dump (a rank killed mid-write) does not hide the others'
                unreadable.append((f, str(e)[len(f) + 2:] if str(e).startswith(f"{f}: ") else str(e)))
    finally:
        bar.close()
    if not dumps:
        raise DumpError("no readable dump: " + "; ".join(f"{f}: {why}" for f, why in unreadable))
    res = diagnose(dumps, unreadable)
    if plots:
        target = plots_dir or (paths[0] if os.path.isdir(paths[0]) else os.path.dirname(files[0]) or ".")
        try:
            res["plots"] = write_plots(res, target)
        except OSError as e:
            res["plots"] = {"links": None, "lateness": None, "skipped": f"cannot write into {target}: {e}"}
    else:
        res["plots"] = {"links": None, "lateness": None, "skipped": "--no-plots"}
    return res


def main(args) -> int:
    """``efcomm doctor``: 0 when no fault was found, 1 when one was, 2 for bad input."""
    try:
        res = run(args.paths, args.plots, not args.no_plots, args.progress)
    except DumpError as e:
        print(f"efcomm doctor: error: {_one_line(e)}", file=sys.stderr)
        if args.json:  # a script reading stdout gets an object too
            print(json.dumps({"format": "efcomm-doctor", "version": 1, "error": _one_line(e), "exit_code": 2}))
        return 2
    if args.json:
        print(json.dumps(json_safe(res), indent=2))
    else:
        print(render_text(res))
    return res["exit_code"]
