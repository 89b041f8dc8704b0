"""One rank of a fault-injection trial (``efcomm bench faults``, tests/python/test_health_mpi.py):

    mpiexec -disable-auto-cleanup -n N python -m efcomm.bench._fault_rank SPEC_JSON

Every rank watches its communicator with ``ef.health.Monitor`` and runs ``steps`` steps of a
data-parallel loop: compute, then a Reducer allreduce of a fresh gradient. The compute stands in
for the forward and backward pass: ``compute: "sleep"`` sleeps ``compute_s`` (the ranks' timing
is then the monitor's and the network's alone); ``"busy"`` multiplies small matrices until the
thread has used ``compute_s`` of CPU time, so that 8 ranks on 2 cores contend for the cores as a
real oversubscribed job does. The faulty rank injects its fault at ``fault.step``:

- ``crash``: SIGKILL to itself; ``hang``: SIGSTOP to itself (the harness kills it afterwards);
- ``leave``: leaves the loop, closes its monitor and exits, as an exception out of a ``with
  Monitor`` block would;
- ``straggler``: from then on computes ``fault.factor`` times as long;
- ``nonfinite``: a NaN in that step's gradient; ``mismatch``: that step's allreduce under another
  key (a mismatched call order);
- ``slow_link``: nothing here: the harness sets EFCOMM_FAULT_LINK_DELAY for the launch.

The fault's injection time goes to OUTDIR/fault.json just before it happens. Each surviving rank
writes OUTDIR/rank<R>.json: how its run ended (the error class, culprits and when it was raised),
the steps done, and the monitor's anomalies; then it leaves with os._exit, without MPI_Finalize,
which cannot complete with a dead peer.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _write(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def busy(seconds: float) -> None:
    """Computes until this thread has used `seconds` of CPU time."""
    import numpy as np

    a = np.full((48, 48), 1.0 / 48, np.float32)
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        a = a @ a


def run(spec: dict) -> dict:
    import numpy as np

    import efcomm as ef

    out_dir = spec["outdir"]
    comm = ef.Communicator.mpi(timeout=spec.get("collective_timeout", 120.0))
    rank = comm.rank
    _write(os.path.join(out_dir, f"pid{rank}.json"), {"rank": rank, "pid": os.getpid()})
    fault = spec.get("fault") or {}
    mine = fault.get("rank") == rank
    kind = fault.get("kind")
    result = {"rank": rank, "size": comm.size, "steps_done": 0, "error": None, "culprits": None,
              "raised_at": None, "skipped_steps": [], "started": time.time()}
    mon = ef.health.Monitor(comm, dump_dir=out_dir, **spec.get("monitor", {}))
    red = ef.Reducer(comm, spec.get("compressor", "topk:ratio=0.01"), spec.get("feedback", "ef21"),
                     algorithm=spec.get("algorithm", "allgather"))
    compute = float(spec.get("compute_s", 0.02))
    work = busy if spec.get("compute", "sleep") == "busy" else time.sleep
    try:
        for step in range(int(spec["steps"])):
            key = "grad"
            g = np.random.default_rng([rank, step]).standard_normal(int(spec.get("numel", 1 << 16))).astype(np.float32)
            slow = mine and kind == "straggler" and step >= fault["step"]
            work(compute * (float(fault["factor"]) if slow else 1.0))
            if mine and step == fault["step"]:
                _write(os.path.join(out_dir, "fault.json"), {"rank": rank, "kind": kind, "step": step,
                                                             "time": time.time()})
                if kind == "crash":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif kind == "hang":
                    os.kill(os.getpid(), signal.SIGSTOP)
                elif kind == "leave":
                    break
                elif kind == "nonfinite":
                    g[len(g) // 2] = np.nan
                elif kind == "mismatch":
                    key = "grad-out-of-order"
            try:
                red.allreduce(g, key=key)
            except (ef.NonFiniteError, ef.MismatchError) as e:
                # Every rank skips the step (the Reducer's round failed on all alike) and goes on.
                result["skipped_steps"].append({"step": step, "error": type(e).__name__, "message": str(e)})
            result["steps_done"] = step + 1
    except ef.Error as e:
        result.update(error=type(e).__name__, message=str(e), raised_at=time.time(),
                      culprits=list(getattr(e, "culprits", []) or []))
    result["anomalies"] = [{"kind": a.kind, "ranks": a.ranks, "seq": a.seq, "detail": a.detail, "time": a.time}
                           for a in mon.anomalies()]
    mon.close()
    result["finished"] = time.time()
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = run(spec)
    except BaseException as e:  # noqa: BLE001 - reported to the harness, never a silent hang
        from mpi4py import MPI

        result = {"rank": MPI.COMM_WORLD.Get_rank(), "error": type(e).__name__, "message": str(e), "crashed": True}
    _write(os.path.join(spec["outdir"], f"rank{result['rank']}.json"), result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
