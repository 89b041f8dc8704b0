"""Data-parallel training of a small MLP on scikit-learn's digits with torch DDP over gloo: the
part shared by ``efcomm demo`` and ``efcomm bench ddp``.

The parent process splits the data once (stratified, seeded) into a ``.npz`` file and launches one
process per rank, ``python -m efcomm._ddp_train --rank R SPEC``, optionally inside a network
namespace (:mod:`efcomm.bench._netns`). The ranks meet through a file store and talk over gloo on
the loopback. Every method trains the same model from the same initial weights on the same
batches: rank r takes every n-th sample of a seeded permutation per epoch. Rank 0 reports, on its
stdout, a point per epoch (loss on the whole training set, test accuracy, bytes sent so far) and
the result; the parent reads them. The methods of a comparison run in turn in the same ranks; a
rank that fails, or a method over its time, stops them: every rank is killed, the method is
reported with the failing rank's error, and the methods after it run in a fresh launch.

Bytes sent per rank are counted the same way for every method: the messages a rank sends through
its hook (``state.stats`` of efcomm's hook), and for allreduce-based methods (DDP without a hook,
the fp16 hook, PowerSGD's allreduces of P, Q and its uncompressed tensors) a bandwidth-optimal
ring allreduce's ``2(n - 1)/n`` of the payload. Inside a network namespace, rank 0 also reads the
bytes the namespace's loopback carried (IP and TCP headers included), the measure that depends on
no accounting.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .bench._util import ring_factor
from .errors import InvalidArgument

#: rank 0's stdout lines for the parent: a method's start, a point per epoch, its result
_START, _POINT, _RESULT = "@@efcomm-ddp-start ", "@@efcomm-ddp-point ", "@@efcomm-ddp-result "
#: seconds a rank waits in one collective (or at the start for the others) before gloo raises
COLLECTIVE_TIMEOUT_S = 60.0


#: images in scikit-learn's digits (split into training and test sets by test_fraction)
DIGITS = 1797


@dataclass(frozen=True)
class TrainConfig:
    """What every method of a comparison shares: ranks, model, data split, optimizer, seeds."""
    ranks: int = 4
    epochs: int = 30
    batch: int = 32               # samples per rank and step
    hidden: int = 384             # two hidden layers of this width
    lr: float = 0.05              # SGD, cosine-annealed to 0 over the run
    momentum: float = 0.9
    seed: int = 0                 # initial weights, data split and batch order
    test_fraction: float = 0.25
    # Steps sent uncompressed first (efcomm's start_iter, PowerSGD's start_powerSGD_iter): DDP
    # rebuilds its buckets after step 1, and PowerSGD accepts no fewer than 2.
    start_iter: int = 2
    min_compress_numel: int = 1024

    def __post_init__(self):
        # Every rank needs a batch per step: more ranks than the training set feeds would launch
        # processes that train nothing.
        n_train = DIGITS - math.ceil(self.test_fraction * DIGITS)
        if self.ranks < 1 or self.batch < 1:
            raise InvalidArgument(f"ranks and batch must be >= 1, got {self.ranks} and {self.batch}")
        if self.steps_per_epoch(n_train) < 1:
            raise InvalidArgument(f"{self.ranks} ranks x {self.batch} images per step exceed the {n_train} training "
                                  f"images: at most {n_train // self.batch} ranks")

    def steps_per_epoch(self, n_train: int) -> int:
        return n_train // (self.ranks * self.batch)


@dataclass(frozen=True)
class Method:
    """One way of communicating the gradients. kind: ``ddp`` (DDP's own allreduce, no hook),
    ``fp16`` (torch's fp16_compress_hook), ``powersgd`` (torch's PowerSGD hook of rank
    ``rank``), ``efcomm`` (``ef.torch.ddp_hook`` with compressor, feedback and algorithm)."""
    key: str
    label: str
    kind: str
    compressor: Optional[str] = None
    feedback: Optional[str] = None
    rank: Optional[int] = None
    algorithm: str = "allgather"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_model(hidden: int, n_in: int = 64, n_out: int = 10):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, n_out))


def model_bytes(hidden: int) -> int:
    """float32 gradient bytes of build_model(hidden): what uncompressed DDP reduces every step."""
    return 4 * (64 * hidden + hidden + hidden * hidden + hidden + hidden * 10 + 10)


def unavailable_reason() -> Optional[str]:
    """None when torch (with gloo), scikit-learn and matplotlib are importable, else what to install."""
    import importlib.util

    missing = [m for m in ("torch", "sklearn", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        names = {"sklearn": "scikit-learn"}
        return ("needs " + ", ".join(names.get(m, m) for m in missing) + ": pip install "
                + " ".join(names.get(m, m) for m in missing))
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        return "this torch build has no torch.distributed with gloo"
    return None


def prepare_data(path: str, cfg: TrainConfig) -> dict:
    """Writes the digits split (pixels scaled to [0, 1], float32) to path; returns its sizes."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype(np.float32), y.astype(np.int64), test_size=cfg.test_fraction,
        random_state=cfg.seed, stratify=y)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return {"train": len(y_train), "test": len(y_test), "features": x.shape[1], "classes": 10}


# ---- a rank ----------------------------------------------------------------------------------

def _attach(ddp, method: Method, cfg: TrainConfig):
    """Registers the method's hook; returns (a function to call once per step, after it, that
    returns the bytes this rank sent so far; efcomm's hook state or None)."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    ring = ring_factor(cfg.ranks)
    sent = [0.0]
    if method.kind == "ddp":
        per_step = model_bytes(cfg.hidden) * ring

        def count() -> int:
            sent[0] += per_step
            return int(sent[0])
        return count, None

    if method.kind == "efcomm":
        import efcomm as ef

        state, hook = ef.torch.ddp_hook(compressor=method.compressor, feedback=method.feedback,
                                        process_group=None, start_iter=cfg.start_iter,
                                        min_compress_numel=cfg.min_compress_numel, algorithm=method.algorithm)
        ddp.register_comm_hook(state, hook)
        return (lambda: int(state.stats["bytes_sent"])), state

    if method.kind == "fp16":
        def fp16(process_group, bucket):
            sent[0] += bucket.buffer().numel() * 2 * ring
            return default_hooks.fp16_compress_hook(process_group, bucket)

        ddp.register_comm_hook(dist.group.WORLD, fp16)
    elif method.kind == "powersgd":
        ps = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=method.rank,
                                         start_powerSGD_iter=max(2, cfg.start_iter), random_seed=cfg.seed)

        def powersgd(state, bucket):
            # Warm-up steps allreduce the bucket; later ones P, Q and the tensors PowerSGD leaves
            # uncompressed, whose element count the state adds up.
            before = state.total_numel_after_compression
            warm = state.iter < state.start_powerSGD_iter
            fut = powerSGD_hook.powerSGD_hook(state, bucket)
            numel = bucket.buffer().numel() if warm else state.total_numel_after_compression - before
            sent[0] += numel * bucket.buffer().element_size() * ring
            return fut

        ddp.register_comm_hook(ps, powersgd)
    else:
        raise ValueError(f"unknown method kind {method.kind!r}")
    return (lambda: int(sent[0])), None


def _evaluate(model, data) -> tuple:
    """(loss on the whole training set, test accuracy in %)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        loss = F.cross_entropy(model(data["x_train"]), data["y_train"]).item()
        acc = (model(data["x_test"]).argmax(1) == data["y_test"]).double().mean().item() * 100
    return loss, acc


def _train(rank: int, cfg: TrainConfig, method: Method, data: dict, wire: bool, emit) -> dict:
    """One method, from the same initial weights and batches as every other: the result of rank 0."""
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from .bench import _netns

    n = cfg.ranks
    n_train = len(data["y_train"])
    steps = cfg.steps_per_epoch(n_train)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.hidden)
    ddp = DistributedDataParallel(model)
    bytes_sent, state = _attach(ddp, method, cfg)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    # Annealed to 0: the last epoch's accuracy is then the run's, not a snapshot of an oscillation.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps * cfg.epochs)

    dist.barrier()
    wire0 = _netns.lo_tx() if wire else None
    t0 = time.perf_counter()
    sent, loss, acc = 0, None, None  # loss and accuracy: rank 0's evaluations
    if rank == 0:
        loss, acc = _evaluate(model, data)
        emit(_POINT, {"method": method.key, "epoch": 0, "step": 0, "seconds": 0.0, "bytes_sent": 0,
                      "loss": loss, "accuracy": acc})
    for epoch in range(cfg.epochs):
        order = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(n_train))
        mine = order[rank:steps * cfg.batch * n:n]
        for s in range(steps):
            idx = mine[s * cfg.batch:(s + 1) * cfg.batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(data["x_train"][idx]), data["y_train"][idx]).backward()
            opt.step()
            schedule.step()
            sent = bytes_sent()
        if rank == 0:
            loss, acc = _evaluate(model, data)
            emit(_POINT, {"method": method.key, "epoch": epoch + 1, "step": (epoch + 1) * steps,
                          "seconds": time.perf_counter() - t0, "bytes_sent": sent, "loss": loss, "accuracy": acc})
    dist.barrier()
    wall = time.perf_counter() - t0
    wire1 = _netns.lo_tx() if wire else None
    stats = dict(state.stats) if state is not None else None
    per_rank = [None] * n
    dist.all_gather_object(per_rank, {"bytes_sent": sent, "stats": stats})
    result = {"method": method.key, "wall_s": wall, "steps": steps * cfg.epochs, "loss": loss, "accuracy": acc,
              "bytes_sent_per_rank": sum(p["bytes_sent"] for p in per_rank) / n,
              "hook_stats": [p["stats"] for p in per_rank] if stats is not None else None}
    if wire:
        result["wire_bytes_per_rank"] = (wire1[0] - wire0[0]) / n
        result["wire_retransmits"] = wire1[2] - wire0[2]
    return result


def worker(rank: int, spec: dict) -> None:
    """One rank: trains every method of the spec in turn; rank 0 prints the points and results
    for the parent. Exits without the interpreter's teardown, which takes seconds with torch's
    modules loaded and several ranks on few cores: everything is printed and flushed by then."""
    import datetime

    import numpy as np
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # the ranks share the machine's cores
    cfg = TrainConfig(**spec["config"])
    dist.init_process_group("gloo", init_method="file://" + spec["store"], rank=rank, world_size=cfg.ranks,
                            timeout=datetime.timedelta(seconds=spec["collective_timeout"]))

    def emit(prefix: str, payload: dict) -> None:
        if rank == 0:
            print(prefix + json.dumps(payload), flush=True)

    with np.load(spec["data"]) as f:
        data = {k: torch.from_numpy(f[k]) for k in f.files}
    for m in spec["methods"]:
        emit(_START, {"method": m["key"]})
        emit(_RESULT, _train(rank, cfg, Method(**m), data, spec["wire"] and rank == 0, emit))
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


# ---- the parent ------------------------------------------------------------------------------

def _death_signal():
    """For Popen's preexec_fn: a function that has the child SIGKILLed when its parent dies, so
    that no rank outlives a killed demo (else it would wait out its collective timeout); None
    where prctl is missing. Looked up here, in the parent: the child calls it between fork and
    exec, where loading a library could deadlock."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def rank_env() -> dict:
    import efcomm

    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(efcomm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    # gloo picks the interface of the host name unless told; in a network namespace only lo is there.
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def estimate_seconds(cfg: TrainConfig, n_train: int, rate_bits: Optional[float] = None) -> float:
    """A generous bound on one run's time: start-up, and per step compute plus an uncompressed
    allreduce of every rank's gradients over a link of rate_bits (4 Gbit/s when unlimited)."""
    steps = cfg.steps_per_epoch(n_train) * cfg.epochs
    traffic = model_bytes(cfg.hidden) * ring_factor(cfg.ranks) * cfg.ranks * 8 / (rate_bits or 4e9)
    return 60 + 4 * steps * (0.02 * cfg.ranks / 2 + traffic) + 0.1 * cfg.epochs


def run(methods: list, cfg: TrainConfig, data_path: str, *, timeout: float,
        on_point: Callable[[dict], None] = lambda p: None, wrap: Callable[[list], list] = lambda argv: argv,
        wire: bool = False) -> list:
    """Trains every method with cfg.ranks processes; returns a row per method: status ok with the
    result and its per-epoch points, or failed / timeout with the reason. One launch trains the
    methods in turn (starting torch in every rank takes seconds); a method that fails, or takes
    longer than timeout seconds, stops it: every rank is killed, the method's row says why, and
    the methods after it run in a fresh launch. wrap turns a rank's argv into the command to run
    (e.g. inside a network namespace); wire makes rank 0 read the loopback's counters (only
    meaningful in a namespace of the run's own)."""
    rows, todo = [], list(methods)
    while todo:
        done = _launch(todo, cfg, data_path, timeout, on_point, wrap, wire)
        rows += done
        todo = todo[len(done):]
    return rows


def _launch(methods: list, cfg: TrainConfig, data_path: str, timeout: float, on_point, wrap, wire: bool) -> list:
    """One launch of the ranks for methods; the rows of those it got to (at least one)."""
    lines: queue.Queue = queue.Queue()
    procs, errs = [], []
    with tempfile.TemporaryDirectory(prefix="efcomm-ddp-") as tmp:
        spec = {"config": dataclasses.asdict(cfg), "methods": [m.to_dict() for m in methods], "data": data_path,
                "store": os.path.join(tmp, "store"), "collective_timeout": COLLECTIVE_TIMEOUT_S, "wire": wire}
        env, die = rank_env(), _death_signal()
        try:
            for r in range(cfg.ranks):
                errs.append(open(os.path.join(tmp, f"rank{r}.err"), "w+"))
                argv = [sys.executable, "-m", "efcomm._ddp_train", "--rank", str(r), json.dumps(spec)]
                procs.append(subprocess.Popen(wrap(argv), stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                                              stderr=errs[r], env=env, text=True, preexec_fn=die))

            def pump(stream=procs[0].stdout):
                for line in stream:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            rows, failure = _follow(methods, procs, lines, timeout, on_point)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait()
        if failure is not None:
            status, reason, started = failure
            reason += _error_tail(procs, errs)
            # A launch that fails before its first method starts fails for a reason of its own
            # (torch, gloo, the store) that would fail the other methods the same way.
            failed = [methods[len(rows)]] if rows or started else methods
            rows += [_row(m, status=status, reason=reason) for m in failed]
        for f in errs:
            f.close()
    return rows


def _row(method: Method, **fields) -> dict:
    return {"method": method.key, "label": method.label, "status": "ok", "reason": None, "points": [], **fields}


def _follow(methods: list, procs: list, lines: queue.Queue, timeout: float, on_point) -> tuple:
    """Reads rank 0's lines until every method is done: (rows, None), or at the first rank that
    fails or the first method over its time, (rows so far, (status, reason, whether the method
    had started))."""
    rows, points, eof, started, gone = [], [], False, False, {}
    # The first method's time also covers the start-up: importing torch in every rank.
    deadline = time.monotonic() + timeout + 60
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            line = ""
        if line is None:
            eof = True
        elif line.startswith(_START):
            started = True
        elif line.startswith(_POINT):
            point = json.loads(line[len(_POINT):])
            points.append(point)
            on_point(point)
        elif line.startswith(_RESULT):
            result = json.loads(line[len(_RESULT):])
            rows.append(_row(methods[len(rows)], **{k: v for k, v in result.items() if k != "method"}, points=points))
            points, started = [], False
            deadline = time.monotonic() + timeout
        for r, p in enumerate(procs):
            if p.poll() not in (None, 0):
                gone.setdefault(r, p.returncode)  # in the order seen: the first is the likely cause
        # Every result is in: a rank failing or lingering while the processes wind down loses
        # nothing (the caller stops them).
        done = len(rows) == len(methods)
        # Only once the lines rank 0 printed are all read, so that no result is lost to a rank
        # failing right after it.
        if gone and not line:
            if done:
                return rows, None
            where = f"during {methods[len(rows)].label}" if started else "before training started"
            return rows, ("failed", "; ".join(_exit_text(r, rc) for r, rc in gone.items()) + f" {where}", started)
        if eof and all(p.poll() == 0 for p in procs):
            if not done:
                return rows, ("failed", f"rank 0 exited before the result of {methods[len(rows)].label}", started)
            return rows, None
        if time.monotonic() > deadline:
            if done:
                return rows, None
            return rows, ("timeout", f"{methods[len(rows)].label} not done within {timeout:.3g} s", started)


def _exit_text(rank: int, returncode: int) -> str:
    if returncode < 0:
        try:
            return f"rank {rank} was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"rank {rank} exited with status {returncode}"


def _error_tail(procs: list, errs: list) -> str:
    """The last line of stderr (a Python exception's message) of the first rank that wrote any,
    the ranks that failed on their own first."""
    order = sorted(range(len(procs)), key=lambda r: (procs[r].returncode in (0, -signal.SIGKILL), r))
    for r in order:
        errs[r].seek(0)
        lines = errs[r].read().strip().splitlines()
        if lines:
            last = lines[-1].removeprefix(f"[rank{r}]: ")  # torch's prefix of a rank's traceback
            return f"; rank {r}: {last[-1000:]}"
    return "; no rank wrote to stderr"


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m efcomm._ddp_train", description="one rank (started by the parent)")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("spec", help="the JSON spec the parent passes to every rank")
    a = p.parse_args()
    worker(a.rank, json.loads(a.spec))
