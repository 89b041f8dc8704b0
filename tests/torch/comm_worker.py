"""ef.Communicator.torch on n gloo ranks (torch.multiprocessing, spawn): every rank writes its
results to OUT/<scenario>-<rank>.pt; used by tests/python/test_torch_hook.py.

    python tests/torch/comm_worker.py SCENARIO N OUT PORT

Scenarios: ``reduce`` (a Reducer per case of CASES, three calls each: the last results and stats),
``blocks`` (the backend's allgatherv and alltoallv under a label, sizes changing from call to
call: whether each rank got the right bytes, and how many torch collectives each call took),
``relearn`` (ranks whose learned block sizes differ: keys that disagree after some rounds, then
rank 1 on a new communicator with its saved state: the error and the results),
``timeout`` (rank 1 never joins rank 0's barrier: rank 0's error), ``monitor`` (a health.Monitor
names rank 1, which hangs: each rank's error and the anomalies).
"""

import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import efcomm as ef

#: (compressor, feedback, algorithm): every algorithm, the allreduce one with payloads that add
CASES = [("identity", "none", "allgather"), ("topk:ratio=0.1", "ef21", "allgather"),
         ("topk:ratio=0.1", "ef21", "reduce_scatter"), ("sign", "ef14", "reduce_scatter"),
         ("identity", "none", "allreduce"), ("randk:ratio=0.1,seed=3", "ef21", "allreduce"),
         ("powersgd:rank=2", "ef14", "allreduce"), ("topk:ratio=0.1", "ef21", "auto")]


def vector(rank: int, step: int) -> np.ndarray:
    return np.random.default_rng([rank, step]).standard_normal((24, 20)).astype(np.float32)


def reduce_all(comm) -> dict:
    """Per case: the third call's aggregate and the reducer's stats."""
    out = {}
    for compressor, feedback, algorithm in CASES:
        red = ef.Reducer(comm, compressor, feedback, algorithm=algorithm)
        for step in range(3):
            y = red.allreduce(vector(comm.rank, step), key="w")
        out[(compressor, feedback, algorithm)] = (y, red.stats["w"])
    return out


#: per labelled call: every rank's allgatherv and alltoallv bytes are about this long
BLOCK_SIZES = [100, 100, 90, 170, 300, 0, 5000, 5000]


def _bytes(*seed, size: int) -> bytes:
    return np.random.default_rng(list(seed)).integers(0, 256, size, dtype=np.uint8).tobytes()


def blocks(rank: int, n: int) -> list:
    """Per call of BLOCK_SIZES (then one unlabelled): (allgatherv right, alltoallv right, torch
    collectives the call took). A call is a 16-byte allgatherv, then rank r's allgatherv of
    size + 7 r bytes and its alltoallv with a chunk of size + 5 r + 3 p bytes for rank p."""
    from efcomm.comm import _TorchBackend

    backend = _TorchBackend(None, 30.0)
    issued = []

    class Counting:  # torch.distributed, counting the collectives the backend issues
        def __getattr__(self, name):
            issued.append(name)
            return getattr(dist, name)

    backend._dist = Counting()
    out = []
    for step, size in enumerate(BLOCK_SIZES + [300]):
        labelled = step < len(BLOCK_SIZES)
        if labelled:
            backend.label("w", "reduce_scatter")
        before = len(issued)
        # A call's first collective has a fixed capacity (a Reducer's header agreement), the
        # later ones learned capacities.
        header = backend.allgatherv(_bytes(2, step, rank, size=16), None)
        assert [bytes(h) for h in header] == [_bytes(2, step, r, size=16) for r in range(n)]
        got = backend.allgatherv(_bytes(0, step, rank, size=size + 7 * rank), None)
        gathered = [bytes(g) for g in got] == [_bytes(0, step, r, size=size + 7 * r) for r in range(n)]
        chunks = [_bytes(1, step, rank, p, size=size + 5 * rank + 3 * p) for p in range(n)]
        got = backend.alltoallv(b"".join(chunks), [len(c) for c in chunks], None)
        exchanged = [bytes(g) for g in got] == [_bytes(1, step, r, rank, size=size + 5 * r + 3 * rank)
                                                for r in range(n)]
        if labelled:
            backend.label("", "")
        out.append((gathered, exchanged, len(issued) - before))
    return out


def relearn(rank: int) -> dict:
    """Three rounds of key "w", then rank 1 calls key "v" (its learned sizes are not rank 0's: the
    header agreement must still work), then rank 1 continues on a new communicator (no learned
    sizes) with its reducer's state while rank 0 keeps its own: the next rounds' results."""
    red = ef.Reducer(ef.Communicator.torch(timeout=30.0), "topk:ratio=0.1", "ef21", algorithm="reduce_scatter")
    for step in range(3):
        red.allreduce(vector(rank, step), key="w")
    try:
        red.allreduce(vector(rank, 3), key="w" if rank == 0 else "v")
        error = None
    except ef.Error as e:
        error = type(e).__name__
    if rank == 1:
        fresh = ef.Reducer(ef.Communicator.torch(timeout=30.0), "topk:ratio=0.1", "ef21", algorithm="reduce_scatter")
        fresh.load_state_dict(red.state_dict())
        red = fresh
    return {"error": error, "after": [red.allreduce(vector(rank, step), key="w") for step in range(4, 7)]}


def run(rank, n, scenario, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=n)
    result = {}
    if scenario == "reduce":
        result = reduce_all(ef.Communicator.torch())
        dist.barrier()
    elif scenario == "blocks":
        result = blocks(rank, n)
    elif scenario == "relearn":
        result = relearn(rank)
    elif scenario == "timeout":
        comm = ef.Communicator.torch(timeout=2.0)
        if rank == 0:
            t0 = time.monotonic()
            try:
                comm.barrier()
            except ef.Error as e:
                result = {"error": type(e).__name__, "message": str(e), "seconds": time.monotonic() - t0}
            # The group is unusable: later calls raise the same at once, issuing nothing (a new
            # gloo collective would pair with rank 1's late one, and gloo aborts the process).
            later = []
            red = ef.Reducer(comm, "identity", "none")
            for call in (comm.barrier, lambda: red.allreduce(np.ones(5, np.float32), key="x")):
                t0 = time.monotonic()
                try:
                    call()
                    later.append(None)
                except ef.Error as e:
                    later.append((type(e).__name__, str(e) == result["message"], time.monotonic() - t0))
            result["later"] = later
        else:
            time.sleep(6)  # past rank 0's timeout, then gone without joining
    elif scenario == "monitor":
        # rank 1 hangs before a collective: a health.Monitor names it, and rank 0's pending torch
        # collective ends with that verdict at once (not when rank 1 comes back or torch times out).
        comm = ef.Communicator.torch(timeout=30.0)
        monitor = ef.health.Monitor(comm, timeout_floor=2.0)
        red = ef.Reducer(comm, "topk:ratio=0.1", "ef21", algorithm="allgather")
        for step in range(3):
            red.allreduce(vector(rank, step), key="w")
        if rank == 1:
            time.sleep(10)
        t0 = time.monotonic()
        try:
            red.allreduce(vector(rank, 3), key="w")
            result = {"error": None}
        except ef.Error as e:
            result = {"error": type(e).__name__, "culprits": list(getattr(e, "culprits", [])),
                      "seconds": time.monotonic() - t0}
        result["anomalies"] = [(a.kind, list(a.ranks)) for a in monitor.anomalies()]
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    torch.save(result, os.path.join(out, f"{scenario}-{rank}.pt"))
    os._exit(0)  # no teardown: the timeout scenario leaves the process group broken


if __name__ == "__main__":
    scenario, n, out, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    mp.start_processes(run, args=(n, scenario, out, port), nprocs=n, start_method="spawn")
