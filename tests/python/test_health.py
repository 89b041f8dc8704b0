"""ef.health.Monitor on in-process ranks (threads): the flight record, its dump, the watchdog
naming a rank that never arrives, and the findings the Reducer reports (non-finite, mismatch).
The multi-process faults (a killed or stopped process) are in test_health_mpi.py."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import efcomm as ef

# Short timings so a hang is found in about a second.
FAST = dict(timeout_floor=1.0, timeout_factor=4.0, heartbeat_interval=0.05, heartbeat_timeout=1.0)


def grad(rank: int, step: int, n: int = 4096) -> np.ndarray:
    return np.random.default_rng([rank, step]).standard_normal(n).astype(np.float32)


def test_records_every_collective_with_key_and_algorithm(tmp_path):
    def body(comm):
        with ef.health.Monitor(comm, dump_dir=str(tmp_path), **FAST) as mon:
            red = ef.Reducer(comm, "topk:ratio=0.05", "ef21", algorithm="allgather")
            for step in range(5):
                red.allreduce(grad(comm.rank, step), key="w")
            comm.barrier()
            records = mon.records()
            mon.dump(str(tmp_path / f"demand{comm.rank}.json"))
            return records, mon.anomalies()

    results = ef.testing.run_ranks(3, body)
    for rank, (records, anomalies) in enumerate(results):
        assert anomalies == []
        # Each allreduce: the header agreement and the payload allgather; then the barrier.
        assert [r["seq"] for r in records] == list(range(len(records)))
        assert [r["op"] for r in records[-3:]] == ["allgatherv", "allgatherv", "barrier"]
        reduce_records = records[:-1]
        assert {r["key"] for r in reduce_records} == {"w"}
        assert {r["algorithm"] for r in reduce_records} == {"allgather"}
        assert records[-1]["key"] is None  # the application's own collective carries no label
        assert all(r["status"] == "ok" for r in records)
        assert all(r["enqueue"] <= r["end"] for r in records)
        assert records[0]["gap"] is None and all(r["gap"] >= 0 for r in records[1:])
        demand = json.loads((tmp_path / f"demand{rank}.json").read_text())
        assert demand["format"] == "efcomm-flight-record" and demand["version"] == 1
        assert (demand["rank"], demand["size"]) == (rank, 3)
        closing = json.loads((tmp_path / f"efcomm-flight-rank{rank}.json").read_text())
        assert closing["reason"] == "close"
        assert len(closing["records"]) == len(records)
    # Every rank numbers the same collectives alike, and names the same job (another run: another).
    assert len({tuple((r["seq"], r["op"], r["bytes"] > 0) for r in rec) for rec, _ in results}) == 1
    jobs = {json.loads((tmp_path / f"efcomm-flight-rank{r}.json").read_text())["job"] for r in range(3)}
    assert len(jobs) == 1 and len(next(iter(jobs))) == 16
    ef.testing.run_ranks(3, body)
    again = {json.loads((tmp_path / f"efcomm-flight-rank{r}.json").read_text())["job"] for r in range(3)}
    assert len(again) == 1 and again != jobs


def test_reducers_built_before_the_monitor_are_watched_until_it_closes():
    def body(comm):
        early = ef.Reducer(comm, "topk:ratio=0.05", "ef21", algorithm="allgather")
        early.allreduce(grad(comm.rank, 0), key="early")  # before the monitor: not recorded
        with ef.health.Monitor(comm, **FAST) as mon:
            early.allreduce(grad(comm.rank, 1), key="early")
            late = ef.Reducer(comm, "topk:ratio=0.05", "ef21", algorithm="allgather")
            late.allreduce(grad(comm.rank, 1), key="late")
            records = mon.records()
        # After close both run unwatched again, and go on from their state.
        return records, early.allreduce(grad(comm.rank, 2), key="early"), late.allreduce(grad(comm.rank, 2), key="late")

    results = ef.testing.run_ranks(2, body)
    for records, _, _ in results:
        assert [(r["op"], r["key"]) for r in records] == [("allgatherv", "early")] * 2 + [("allgatherv", "late")] * 2
    assert results[0][1].tobytes() == results[1][1].tobytes() and results[0][2].tobytes() == results[1][2].tobytes()
    other = ef._core._InProcessGroup(3, 5.0)  # a backend of another size is refused
    with pytest.raises(ef.InvalidArgument, match="rank 0 of 3"):
        ef.testing.run_ranks(1, lambda comm: ef.Reducer(comm)._impl.rebind(other.backend(0)))


def test_capacity_keeps_the_newest_records():
    def body(comm):
        with ef.health.Monitor(comm, capacity=4, **FAST) as mon:
            for _ in range(10):
                comm.barrier()
            return mon.records()

    for records in ef.testing.run_ranks(2, body):
        assert [r["seq"] for r in records] == [6, 7, 8, 9]


def test_a_rank_that_never_arrives_is_named_on_every_live_rank():
    def body(comm):
        with ef.health.Monitor(comm, **FAST) as mon:
            red = ef.Reducer(comm, "topk:ratio=0.05", "ef21", algorithm="allgather")
            for step in range(6):
                red.allreduce(grad(comm.rank, step), key="w")
            t0 = time.monotonic()
            try:
                if comm.rank == 2:
                    time.sleep(3.0)  # busy elsewhere: alive (heartbeats go on) but never arrives
                red.allreduce(grad(comm.rank, 6), key="w")
            except ef.CollectiveTimeout as e:
                return "timeout", e.culprits, time.monotonic() - t0, [a.kind for a in mon.anomalies()]
            return "ok", [], time.monotonic() - t0, []

    results = ef.testing.run_ranks(3, body)
    for rank, (outcome, culprits, seconds, kinds) in enumerate(results):
        assert outcome == "timeout", (rank, results)
        assert culprits == [2]
        assert "hang" in kinds
        if rank != 2:
            # found after the floor (1 s), well before rank 2 woke up (3 s)
            assert 0.9 < seconds < 2.9, results


def test_a_rank_without_a_monitor_fails_construction_after_connect_timeout():
    def body(comm):
        if comm.rank == 1:
            time.sleep(2.5)  # never creates its Monitor
            return None
        t0 = time.monotonic()
        with pytest.raises(ef.CollectiveTimeout, match=r"rank\(s\) 1 did not create their Monitor") as info:
            ef.health.Monitor(comm, connect_timeout=0.5)
        return info.value.culprits, time.monotonic() - t0

    culprits, seconds = ef.testing.run_ranks(2, body)[0]
    assert culprits == [1]
    assert 0.4 < seconds < 2.0


def test_a_closed_monitor_records_no_more_whatever_the_close_order():
    # Closed in the order they were made, the first still sits inside the second's chain: it
    # passes the collectives through unrecorded (it went on recording after its close).
    def body(comm):
        m1 = ef.health.Monitor(comm, **FAST)
        m2 = ef.health.Monitor(comm, **FAST)
        comm.barrier()
        m1.close()
        before = len(m1.records())
        comm.barrier()
        m2.close()
        comm.barrier()
        return before, len(m1.records()), len(m2.records())

    for before, after, second in ef.testing.run_ranks(2, body):
        assert after == before and second == 2  # m2: the barriers before its close


def test_nonfinite_gradient_is_attributed_to_its_rank():
    def body(comm):
        with ef.health.Monitor(comm, **FAST) as mon:
            red = ef.Reducer(comm, "topk:ratio=0.05", "ef21")
            x = grad(comm.rank, 0)
            if comm.rank == 1:
                x[7] = np.nan
            # the others name rank 1; rank 1 raises its own error, which says where the NaN is
            with pytest.raises(ef.NonFiniteError, match="NaN" if comm.rank == 1 else "rank 1"):
                red.allreduce(x, key="w")
            # the round was skipped on every rank; the next one works
            red.allreduce(grad(comm.rank, 1), key="w")
            return [(a.kind, a.ranks) for a in mon.anomalies()]

    for anomalies in ef.testing.run_ranks(3, body):
        assert anomalies == [("nonfinite", [1])]


def test_mismatched_call_is_recorded_with_the_odd_rank():
    def body(comm):
        with ef.health.Monitor(comm, **FAST) as mon:
            red = ef.Reducer(comm, "topk:ratio=0.05", "ef21")
            with pytest.raises(ef.MismatchError) as reducer_error:
                red.allreduce(grad(comm.rank, 0, n=4096 if comm.rank == 2 else 2048), key="w")
            # Another collective on rank 1: the backend finds the mismatch, recorded with its ranks too.
            with pytest.raises(ef.MismatchError) as backend_error:
                comm.barrier() if comm.rank == 1 else red.allreduce(grad(comm.rank, 1), key="w")
            return (reducer_error.value.ranks, backend_error.value.ranks,
                    [(a.kind, a.ranks) for a in mon.anomalies()])

    for reducer_ranks, backend_ranks, anomalies in ef.testing.run_ranks(3, body):
        assert (reducer_ranks, backend_ranks) == ([2], [1])
        assert anomalies == [("mismatch", [2]), ("mismatch", [1])]


def test_a_dump_that_cannot_be_written_leaves_nothing_behind(tmp_path):
    # A directory, or a missing one: an ef.Error saying why, and no temporary file left over.
    (tmp_path / "dir").mkdir()

    def body(comm):
        with ef.health.Monitor(comm) as mon:
            for path, why in ((tmp_path / "dir", "Is a directory"), (tmp_path / "no" / "x.json", "No such file")):
                with pytest.raises(ef.Error, match=f"Monitor.dump: cannot write .*{why}"):
                    mon.dump(str(path))

    ef.testing.run_ranks(1, body)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"] and not list((tmp_path / "dir").iterdir())


def test_bad_options_are_rejected():
    def body(comm):
        with pytest.raises(ef.InvalidArgument, match="timeout_floor"):
            ef.health.Monitor(comm, timeout_floor=0)
        with pytest.raises(ef.InvalidArgument, match="heartbeat"):
            ef.health.Monitor(comm, heartbeat_interval=1.0, heartbeat_timeout=1.0)
        for gbps in (0, -1, float("inf"), "1"):
            with pytest.raises(ef.InvalidArgument, match="min_gbps"):
                ef.health.Monitor(comm, min_gbps=gbps)
        with pytest.raises(ef.InvalidArgument, match="Communicator"):
            ef.health.Monitor("not a communicator")
        # Types and bounds: typed errors, never a pybind TypeError or an allocation of a huge window.
        for options, match in ((dict(window=10 ** 9), "window must be in"), (dict(capacity=2 ** 40), "capacity"),
                               (dict(capacity=-1), "capacity"), (dict(timeout_floor="x"), "timeout_floor"),
                               (dict(timeout_floor=None), "timeout_floor"), (dict(capacity="x"), "capacity"),
                               (dict(dump_dir=""), "dump_dir"), (dict(dump_dir=5), "dump_dir"),
                               (dict(dump_dir=__file__), "cannot create dump_dir"),
                               (dict(connect_timeout=0), "connect_timeout"),
                               (dict(connect_timeout=float("nan")), "connect_timeout"),
                               (dict(connect_timeout="60"), "connect_timeout")):
            with pytest.raises(ef.InvalidArgument, match=match):
                ef.health.Monitor(comm, **options)
        with ef.health.Monitor(comm) as mon:
            with pytest.raises(ef.InvalidArgument, match="Monitor.dump"):
                mon.dump(None)

    ef.testing.run_ranks(1, body)


SIGNAL_SCRIPT = r"""
import json, os, pathlib, signal, sys, time
import efcomm as ef

out = pathlib.Path(sys.argv[1])

def body(comm):
    with ef.health.Monitor(comm, dump_dir=str(out)) as mon:
        comm.barrier()
        comm.barrier()
        if comm.rank == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 10
        path = out / f"efcomm-flight-rank{comm.rank}.json"
        while time.monotonic() < deadline:
            if path.exists() and json.loads(path.read_text())["reason"] == "signal":
                break
            time.sleep(0.01)
        dump = json.loads(path.read_text())
        comm.barrier()
    # Closed: a signal no longer overwrites the close dump.
    if comm.rank == 0:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.5)
    comm.barrier()
    return dump["reason"], len(dump["records"]), json.loads(path.read_text())["reason"]

print(json.dumps(ef.testing.run_ranks(2, body)))
"""


def test_sigusr1_dumps_every_rank(tmp_path):
    # In a process of its own: the handler stays installed for the life of the process.
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [["signal", 2, "close"], ["signal", 2, "close"]]
