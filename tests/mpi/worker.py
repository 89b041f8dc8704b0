"""One rank of the multi-process tests in tests/python/test_mpi.py:

    mpiexec -n N python tests/mpi/worker.py OUTDIR SCENARIO [ARGS...]

Every rank writes OUTDIR/rank<r>.json, {"rank": r, "size": n, ...}, with what it saw (files, since
mpiexec interleaves the ranks' output); the test compares them. Results are printed as SHA-256 digests of the result bytes, so that bit
identity across processes is checked without shipping arrays around. An efcomm error is
reported as {"error": class name, "message": ..., "culprits": [...]}, not raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import time

import numpy as np
from mpi4py import MPI

import efcomm as ef

# Collectives expected to succeed get a timeout no healthy run reaches, even with 4 ranks
# sharing 2 cores.
TIMEOUT = 60.0


def digest(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def gradient(rank: int, step: int, n: int = 2000, dtype=np.float32) -> np.ndarray:
    """Rank `rank`'s input at `step`: deterministic, so any rank can recompute every rank's."""
    rng = np.random.default_rng([rank, step])
    return (rng.standard_normal(n) * (1.0 + rank)).astype(dtype)


def error_fields(e: ef.Error) -> dict:
    return {"error": type(e).__name__, "message": str(e), "culprits": list(getattr(e, "culprits", []))}


def collectives(comm: ef.Communicator, steps: int) -> dict:
    """Barrier, then the Reducer: identity+none against the float64 mean, and the digests of
    compressed aggregates under every algorithm."""
    n, rank = comm.size, comm.rank
    out = {"mpi_rank": MPI.COMM_WORLD.Get_rank(), "mpi_size": MPI.COMM_WORLD.Get_size()}
    comm.barrier()

    mean = ef.Reducer(comm, compressor="identity", feedback="none", algorithm="allgather")
    y = mean.allreduce(gradient(rank, 0, dtype=np.float64), key="mean")
    want = np.mean([gradient(r, 0, dtype=np.float64) for r in range(n)], axis=0)
    out["mean_max_error"] = float(np.max(np.abs(y - want)))
    out["mean_digest"] = digest(y)

    configs = {
        "allgather/topk+ef21": ("topk:ratio=0.05", "ef21", "allgather"),
        "reduce_scatter/topk+ef21": ("topk:ratio=0.05", "ef21", "reduce_scatter"),
        "allreduce/randk+ef14": ("randk:ratio=0.1,seed=3", "ef14", "allreduce"),
        "auto/topk+ef21": ("topk:ratio=0.05", "ef21", "auto"),
    }
    out["digests"] = {}
    for name, (compressor, feedback, algorithm) in configs.items():
        reducer = ef.Reducer(comm, compressor=compressor, feedback=feedback, algorithm=algorithm)
        out["digests"][name] = [digest(reducer.allreduce(gradient(rank, s), key="g")) for s in range(steps)]
        out["own_digest_" + name] = digest(gradient(rank, steps - 1))

    # The async path runs on the reducer's worker thread, which drives MPI too.
    reducer = ef.Reducer(comm, compressor="topk:ratio=0.05", feedback="ef21", algorithm="allgather")
    works = [reducer.allreduce_async(gradient(rank, s), key=f"async{s % 2}") for s in range(steps)]
    out["async_digests"] = [digest(w.wait()) for w in works]
    out["thread_level"] = ef._core._mpi_thread_level(comm._backend)
    comm.barrier()
    return out


def mismatch(comm: ef.Communicator) -> dict:
    """The last rank disagrees: first on the shape, then on the key."""
    last = comm.rank == comm.size - 1
    out = {}
    for case in ("shape", "key"):
        reducer = ef.Reducer(comm, compressor="topk:ratio=0.1", feedback="ef21", algorithm="allgather")
        x = gradient(comm.rank, 0, n=1001 if last and case == "shape" else 1000)
        key = "other" if last and case == "key" else "g"
        try:
            reducer.allreduce(x, key=key)
            out[case] = {"error": None}
        except ef.Error as e:
            out[case] = error_fields(e)
    # The ranks are still in step after a mismatch.
    y = ef.Reducer(comm, compressor="identity", feedback="none", algorithm="allgather").allreduce(
        np.full(4, float(comm.rank)), key="after")
    out["after"] = y.tolist()
    return out


def timeout(comm: ef.Communicator, late_seconds: float) -> dict:
    """The last rank comes `late_seconds` late to an allreduce whose timeout is shorter."""
    reducer = ef.Reducer(comm, compressor="topk:ratio=0.1", feedback="ef21", algorithm="allgather")
    reducer.allreduce(gradient(comm.rank, 0), key="g")  # a healthy step first
    if comm.rank == comm.size - 1:
        time.sleep(late_seconds)
    t0 = time.monotonic()
    try:
        reducer.allreduce(gradient(comm.rank, 1), key="g")
        out = {"error": None}
    except ef.Error as e:
        out = error_fields(e)
    out["seconds"] = time.monotonic() - t0
    t0 = time.monotonic()
    try:
        comm.barrier()
        out["after"] = None
    except ef.Error as e:
        out["after"] = type(e).__name__
    out["after_seconds"] = time.monotonic() - t0
    return out


def state(comm: ef.Communicator, phase: str, directory: str, k: int, m: int) -> dict:
    """phase "save": k steps, save this rank's state, then m more steps. phase "resume": load
    the saved state into a fresh reducer and run the same m steps."""
    reducer = ef.Reducer(comm, compressor="topk:ratio=0.05", feedback="ef21", algorithm="allgather")
    path = os.path.join(directory, f"rank{comm.rank}.pkl")
    if phase == "save":
        for s in range(k):
            reducer.allreduce(gradient(comm.rank, s), key="g")
        with open(path, "wb") as f:
            pickle.dump(reducer.state_dict(), f)
    else:
        with open(path, "rb") as f:
            reducer.load_state_dict(pickle.load(f))
    return {"digests": [digest(reducer.allreduce(gradient(comm.rank, s), key="g")) for s in range(k, k + m)]}


def derived(comm: ef.Communicator) -> dict:
    """Communicators mpi4py derives (Dup, Split by rank parity): their handles are not
    COMM_WORLD's small ones. Per communicator: its rank and size, and the mean of the ranks' world
    ranks over it (identity + none)."""
    world = MPI.COMM_WORLD
    out = {}
    for name, sub in (("dup", world.Dup()), ("split", world.Split(world.rank % 2, world.rank))):
        c = ef.Communicator.mpi(sub, timeout=TIMEOUT)
        y = ef.Reducer(c, "identity", "none", algorithm="allgather").allreduce(
            np.full(4, float(world.rank)), key="rank")
        out[name] = {"rank": c.rank, "size": c.size, "mean": y.tolist()}
    # An intercommunicator between the two parities' groups, and COMM_NULL: refused.
    local = world.Split(world.rank % 2, world.rank)
    inter = local.Create_intercomm(0, world, 1 - world.rank % 2, tag=7)
    for name, bad in (("inter", inter), ("null", MPI.COMM_NULL)):
        try:
            ef.Communicator.mpi(bad, timeout=TIMEOUT)
            out[name] = None
        except ef.InvalidArgument as e:
            out[name] = str(e)
    return out


def main(argv: list) -> None:
    outdir, scenario, argv = argv[0], argv[1], argv[1:]
    comm = ef.Communicator.mpi(timeout=float(argv[1]) if scenario == "timeout" else TIMEOUT)
    if scenario == "collectives":
        out = collectives(comm, steps=int(argv[1]))
    elif scenario == "mismatch":
        out = mismatch(comm)
    elif scenario == "timeout":
        out = timeout(comm, late_seconds=float(argv[2]))
    elif scenario == "state":
        out = state(comm, argv[1], argv[2], int(argv[3]), int(argv[4]))
    elif scenario == "derived":
        out = derived(comm)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    with open(os.path.join(outdir, f"rank{comm.rank}.json"), "w") as f:
        json.dump({"rank": comm.rank, "size": comm.size, **out}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
