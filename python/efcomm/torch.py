"""PyTorch integration (docs/quickstart.md): a DistributedDataParallel communication hook that
compresses gradient buckets with error feedback.

    state, hook = ef.torch.ddp_hook(compressor="topk:ratio=0.01", feedback="ef21")
    ddp_model.register_comm_hook(state, hook)

Pure Python over efcomm's native kernels: the compressed messages travel through the DDP process
group's own collectives (gloo on CPU, NCCL on GPU), so the hook runs wherever DDP runs; no
compiled code depends on torch.

Per bucket and step: the gradient of each parameter with at least ``min_compress_numel``
elements and two or more dimensions is compressed by this rank's error-feedback worker for that
parameter, and every rank's messages are gathered in two collectives: one allreduce carries the
bucket's other gradients (biases, norms, small layers: averaged uncompressed) together with every
rank's message sizes, then one all_gather the messages of the bucket concatenated and padded to
the longest (torch's all_gather needs equal sizes). On a small cluster the collectives' latency,
not their bytes, is most of the hook's time, hence the sizes ride along. Every rank folds the
messages in rank order into its mirror of the workers' estimates (``ef.feedback.Aggregate``), so
the result is the same on every rank. Every bucket of the first ``start_iter`` iterations is
averaged uncompressed with one allreduce; with an ``init=full`` method (EF21's default) the last
warm-up step also starts the estimates, so the first compressed step already sends compressed
messages. With ``algorithm`` reduce_scatter, allreduce or auto (CPU gradients), each compressed
parameter goes instead through an ``ef.Reducer`` over the process group (``ef.Communicator.torch``),
whose state the hook's checkpoint holds. Error-feedback state is per parameter, keyed by the
parameter's place in DDP's initial bucket layout (the same in every process of one model) and
its shape, so it survives DDP's bucket rebuild and a restart from a checkpoint resumes
bit-identically whatever the layout at the time.

On GPUs (CUDA gradients, NCCL) the workers step on the gradients in device memory (efcomm's
CUDA kernels, one fused pass per step) and the mirrors decode and add the messages straight from
the all_gather's output buffer; what passes through the host is each rank's compressed message
on its way into the all_gather buffer and the message sizes. The checkpoint format is the same
on CPUs and GPUs.

A rank whose vector to compress is not finite takes no part in that round (its estimate stays,
as an absent worker under partial participation); the round completes on every rank (the others'
estimates move as usual), and the bucket's compressed gradients become NaN on every rank, as
DDP's own allreduce of a NaN leaves them: ``torch.amp.GradScaler`` (or a ``torch.isfinite``
check) skips the step, and training goes on. ``stats["nonfinite_rounds"]`` counts such rounds, and
a ``RuntimeWarning`` names the ranks. (The hook does not raise: an exception from a comm hook
leaves DDP's reducer unusable.)
"""

import hashlib
import math
import re
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from . import _args, _core
from . import feedback as _feedback
from .comm import _ALGORITHMS
from .compressors import Message, _cuda_stream, _device_ctx
from .errors import Error, InvalidArgument, MismatchError, NonFiniteError, _one_line

__all__ = ["DDPHookState", "ddp_hook"]

# Marks a rank that could not compress, in the size exchange (a message is never empty).
_FAILED = -1
# Message sizes travel in a float32 allreduce as (size >> 16, size & 0xFFFF), each rank writing
# only its own slots: one nonzero addend per slot and values below 2**24, so the sums are exact.
_SIZE_SPLIT = 1 << 16


class _Slot:
    """One compressed parameter: this rank's worker and its mirror of every rank's worker.

    On CUDA gradients the worker's state lives in device memory (ef.feedback's GPU path) and so
    does the mirror's estimate (``device_g``, authoritative once set; ``aggregate`` then keeps
    the spec, weights and checkpoint format, and its own estimate is stale)."""

    def __init__(self, feedback: str, compressor: str, n: int, shape: list, dtype: str = "float32",
                 weights: Optional[list] = None, rank: int = 0):
        if weights is None:  # every method but ef21w
            self.worker = _feedback.make(feedback, compressor)
            self.aggregate = _feedback.Aggregate(feedback, n, shape=shape, dtype=dtype)
        else:  # ef21w: this rank's worker scales by 1 / (n w_rank), the mirror weighs by w_i
            init = feedback.split(":", 1)[1]
            self.worker = _feedback.make(f"ef21w:weight={weights[rank]!r},n={n},{init}", compressor)
            self.aggregate = _feedback.Aggregate(feedback, n, weights=weights, shape=shape, dtype=dtype)
        self.dtype = dtype
        self.shape = list(shape)
        self.step = 0
        self.device_g = None
        self._spare = None  # device_g's double buffer: an update is written here, then swapped in

    def update(self, messages: list) -> torch.Tensor:
        """Folds in one round (per rank a message, or None for a rank that sat it out) and
        returns the estimate. Host messages go through ``aggregate``; CUDA byte arrays (slices of
        the gathered buffer) are decoded and added in device memory. Either way every message is
        checked before the estimate changes."""
        if not any(isinstance(m, torch.Tensor) for m in messages):
            return torch.from_numpy(self.aggregate.update(messages))
        device = next(m.device for m in messages if m is not None)
        if self.device_g is None:
            self.device_g = torch.from_numpy(self.aggregate.estimate.copy()).to(device)
        if self._spare is None:
            self._spare = torch.empty_like(self.device_g)
        work = self._spare
        if self.aggregate.additive:
            work.copy_(self.device_g)
        else:
            work.zero_()
        with _device_ctx(work):
            stream = _cuda_stream(work)
            for weight, m in zip(self.aggregate.weights, messages):
                if m is not None:
                    _core.accumulate_cuda(m, work, weight, stream)
        self.device_g, self._spare = work, self.device_g
        return self.device_g

    def start_mirror(self, mean: torch.Tensor) -> None:
        """Sets the mirror's estimate to ``mean`` (the warm-up's last average)."""
        if mean.is_cuda:
            self.device_g = _array(mean).clone()
            return
        state = self.aggregate.state_dict()
        state["tensors"]["g"] = _array(mean).copy()
        self.aggregate.load_state_dict(state)

    def aggregate_state(self) -> dict:
        """The mirror's state in ``ef.feedback.Aggregate``'s format (a GPU run's continues on CPUs)."""
        state = self.aggregate.state_dict()
        if self.device_g is not None:
            state["tensors"]["g"] = self.device_g.cpu().numpy()
        return state


class DDPHookState:
    """The hook's state: configuration, per-parameter error feedback, iteration count and counters.

    ``stats``: ``bytes_sent`` / ``bytes_received`` by this rank through the hook (gathered
    messages as sent, padding and size exchange included; an uncompressed allreduce counted as a
    ring allreduce's 2 (n-1)/n of its bytes), ``calls`` (buckets), ``compressed_calls``,
    ``nonfinite_rounds`` (compressed buckets a rank's non-finite gradient turned to NaN).
    Save it with ``torch.save(state.state_dict(), path)`` and restore with
    ``state.load_state_dict(torch.load(path))``: training resumes bit-identically. The dict holds
    only strings, numbers and CPU tensors, so ``torch.load``'s default ``weights_only=True`` reads
    it; ``torch.save(state, path)`` pickles the object as that dict, and ``torch.load(path)``
    (importing ``efcomm.torch`` allowlists the class) gives a state without a process group (the
    default group's) to pass to ``register_comm_hook``.
    """

    def __init__(self, compressor: str = "topk:ratio=0.01", feedback: str = "ef21", process_group=None,
                 start_iter: int = 10, min_compress_numel: int = 1024, weights: Optional[Sequence[float]] = None,
                 algorithm: str = "allgather"):
        if algorithm not in _ALGORITHMS:
            raise InvalidArgument(f"ddp_hook: unknown algorithm {algorithm!r}; expected one of {_ALGORITHMS}")
        compressor = getattr(compressor, "spec", compressor)
        feedback = getattr(feedback, "spec", feedback)
        if not isinstance(compressor, str) or not isinstance(feedback, str):
            raise InvalidArgument("ddp_hook: compressor and feedback must be spec strings")
        self.weights = _ef21w_weights(feedback, weights)
        if self.weights is not None:  # the method and init are common; each rank's weight comes from weights
            feedback = _feedback.Aggregate(feedback, 1, weights=[1.0], dim=0).spec
            probe = _feedback.make(f"ef21w:weight=1,n=1,{feedback.split(':', 1)[1]}", compressor)
        else:
            probe = _feedback.make(feedback, compressor)  # validates both specs now, not at the first bucket
        start_iter = _args.integer(start_iter, "ddp_hook: start_iter", 0)
        min_compress_numel = _args.integer(min_compress_numel, "ddp_hook: min_compress_numel", 0)
        self.compressor = probe.compressor.spec
        self.feedback = feedback if self.weights is not None else probe.spec
        why = _core._allreduce_unsupported(self.compressor) if algorithm == "allreduce" else ""
        if why:  # now, not at the first compressed bucket (DDP does not recover from a hook's error)
            raise InvalidArgument(f"ddp_hook: {why}")
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise InvalidArgument(f"ddp_hook: process_group must be a torch.distributed ProcessGroup (or None for the "
                                  f"default group), got {type(process_group).__name__}")
        self.process_group = process_group
        self.start_iter = start_iter
        self.min_compress_numel = min_compress_numel
        self.algorithm = algorithm
        self.iter = 0
        self.stats = {"bytes_sent": 0, "bytes_received": 0, "calls": 0, "compressed_calls": 0, "nonfinite_rounds": 0}
        self._slots: dict = {}
        self._order: dict = {}  # id(parameter) -> its place in the first iteration seen
        self._agreed = False  # the ranks' configurations compared (at this process's first bucket)
        self._saved_rank = 0  # the rank a loaded state was saved by (this process's, outside a process group)
        self._saved_world = 1  # and the ranks it was saved by
        # algorithm != "allgather": an ef.Reducer over the process group (made at the first
        # compressed bucket, or when a state is loaded under the group) holds the error feedback
        # instead of the slots; a state loaded before the group existed waits here until the first
        # bucket (_agree).
        self._reducer = None
        self._reducer_state = None

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"compressor": self.compressor, "feedback": self.feedback,
                "weights": None if self.weights is None else list(self.weights),
                "world": self._world() if dist.is_initialized() else self._saved_world, "rank": self._rank(),
                "start_iter": self.start_iter, "algorithm": self.algorithm,
                "min_compress_numel": self.min_compress_numel, "iter": self.iter, "stats": dict(self.stats),
                "reducer": self._reducer_state_dict(),
                "slots": {key: {"shape": list(s.shape), "dtype": s.dtype, "step": s.step,
                                "worker": _torch_state(s.worker.state_dict()),
                                "aggregate": _torch_state(s.aggregate_state())} for key, s in self._slots.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restores a state_dict() of a hook with the same compressor and feedback."""
        if not isinstance(state, dict):
            raise InvalidArgument(f"DDPHookState.load_state_dict: expected a dict, got {type(state).__name__}")
        missing = [k for k in ("compressor", "feedback", "world", "start_iter", "min_compress_numel", "iter", "stats",
                               "slots") if k not in state]
        if missing:
            raise InvalidArgument(f"DDPHookState.load_state_dict: not a hook state (no {', '.join(missing)}); "
                                  "pass what DDPHookState.state_dict() returned")
        for name in ("compressor", "feedback", "weights", "algorithm"):
            if state.get(name, "allgather" if name == "algorithm" else None) != getattr(self, name):
                raise InvalidArgument(f"DDPHookState.load_state_dict: saved {name} {state.get(name)!r}, "
                                      f"this hook uses {getattr(self, name)!r}")
        where = "DDPHookState.load_state_dict"

        def count(value, name, low=0):
            return _args.integer(value, f"{where}: {name}", low)

        def table(value, name):
            if not isinstance(value, dict):
                raise InvalidArgument(f"{where}: {name} must be a dict, got {type(value).__name__}; pass what "
                                      "DDPHookState.state_dict() returned")
            return value

        n = count(state["world"], "world", 1)
        if dist.is_initialized() and n != self._world():
            raise InvalidArgument(f"{where}: saved by {n} ranks, the process group has {self._world()}")
        rank = count(state.get("rank", 0), "rank")
        if dist.is_initialized() and rank != self._rank():
            raise InvalidArgument(f"{where}: saved by rank {rank}, this is rank {self._rank()}: each rank loads the "
                                  "state it saved (its error feedback is its own)")
        start_iter = count(state["start_iter"], "start_iter")
        min_compress_numel = count(state["min_compress_numel"], "min_compress_numel")
        iteration = count(state["iter"], "iter")
        stats = dict(table(state["stats"], "stats"))
        reducer, made = state.get("reducer"), None
        if reducer is not None:
            table(reducer, "reducer")
            for part in ("meta", "tensors"):
                table(reducer.get(part), f"reducer[{part!r}]")
            reducer = _copied_state(reducer)  # the caller's dict may change; the hook's state does not
            if dist.is_initialized() and n > 1:
                made = self._make_reducer(reducer)  # checked now: a typed error here, not in backward
                reducer = None
        slots = {}
        for key, saved in table(state["slots"], "slots").items():
            saved = table(saved, f"slots[{key!r}]")
            missing = [k for k in ("worker", "aggregate", "step") if k not in saved]
            if missing:
                raise InvalidArgument(f"{where}: slots[{key!r}] has no {', '.join(missing)}")
            shape = saved.get("shape", [saved.get("numel")])  # states saved before 0.1.0's shapes: flat
            if not isinstance(shape, (list, tuple)):
                raise InvalidArgument(f"{where}: slots[{key!r}]['shape'] must be a list, got {shape!r}")
            slot = self._new_slot(n, [count(x, f"slots[{key!r}] shape") for x in shape], saved.get("dtype", "float32"),
                                  rank)
            slot.worker.load_state_dict(saved["worker"])
            slot.aggregate.load_state_dict(saved["aggregate"])
            slot.step = count(saved["step"], f"slots[{key!r}] step")
            slots[key] = slot
        # Everything read: nothing changed on a throw above.
        self._saved_rank, self._saved_world = rank, n
        self._slots = slots
        self._reducer, self._reducer_state = made, reducer
        self.start_iter = start_iter
        self.min_compress_numel = min_compress_numel
        self.iter = iteration
        self._agreed = False  # compared again: every rank must have loaded its checkpoint
        self.stats = stats

    def __getstate__(self):  # torch.save(state): the process group does not pickle
        return self.state_dict()

    def __setstate__(self, state):
        self.__init__(state["compressor"], state["feedback"], None, state["start_iter"], state["min_compress_numel"],
                      state.get("weights") or None,  # [] is ef21w's 1/n each: no weights given
                      state.get("algorithm", "allgather"))
        self.load_state_dict(state)

    def __repr__(self) -> str:
        return (f"DDPHookState(compressor={self.compressor!r}, feedback={self.feedback!r}, "
                f"algorithm={self.algorithm!r}, iter={self.iter}, compressed parameters={self._compressed_count()})")

    def _compressed_count(self) -> int:
        if self._reducer is not None:
            return len(self._reducer.stats)
        if self._reducer_state is not None:
            keys = str(self._reducer_state["meta"].get("reducer.keys", ""))
            return int(keys) if keys.isdigit() else 0  # checked when it loads
        return len(self._slots)

    def _reducer_state_dict(self) -> Optional[dict]:
        if self._reducer is None:
            return None if self._reducer_state is None else _copied_state(self._reducer_state)
        return _torch_state(self._reducer.state_dict())

    def _make_reducer(self, state: Optional[dict]):
        """The ef.Reducer of algorithm reduce_scatter, allreduce or auto over the process group,
        with ``state`` (a loaded checkpoint's) restored."""
        from .comm import Communicator, Reducer

        red = Reducer(Communicator.torch(self.process_group), self.compressor, self.feedback,
                      algorithm=self.algorithm, weights=self.weights or None)
        if state is not None:
            red.load_state_dict(state)  # CPU tensors load as numpy arrays do
        return red

    # ---- the hook's work -----------------------------------------------------------------------
    def _world(self) -> int:
        return dist.get_world_size(self.process_group) if dist.is_initialized() else 1

    def _rank(self) -> int:
        return dist.get_rank(self.process_group) if dist.is_initialized() else self._saved_rank

    def _allreduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        n = self._world()
        dist.all_reduce(flat, group=self.process_group)
        ring = 2 * (n - 1) * flat.numel() * flat.element_size() // n
        self.stats["bytes_sent"] += ring
        self.stats["bytes_received"] += ring
        return flat

    def _allreduce_mean(self, flat: torch.Tensor) -> torch.Tensor:
        return self._allreduce_sum(flat).div_(self._world())

    def _slot(self, key: str, grad: torch.Tensor) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self._new_slot(self._world(), list(grad.shape), _dtype(grad))
        return slot

    def _new_slot(self, n: int, shape: list, dtype: str, rank: Optional[int] = None) -> _Slot:
        """A slot for this rank (``rank``: the one a state being loaded was saved by)."""
        if self.weights is None:
            return _Slot(self.feedback, self.compressor, n, shape, dtype)
        self._check_weights(n)
        return _Slot(self.feedback, self.compressor, n, shape, dtype, self.weights or [1.0 / n] * n,
                     self._rank() if rank is None else rank)

    def _check_weights(self, n: int) -> None:
        """EF21-W's weights (when given) are one per rank of the ``n``-rank group."""
        if self.weights and len(self.weights) != n:
            raise InvalidArgument(f"efcomm DDP hook: {len(self.weights)} EF21-W weights for a process group of {n} "
                                  "ranks: give one weight per rank")

    def _compressed_mean(self, keyed: list, small: list) -> None:
        """Replaces each gradient of ``keyed`` ((key, gradient) pairs) by the aggregate of every
        rank's compressed gradient (one worker and one mirror per parameter), and each of
        ``small`` by the mean over ranks."""
        n = self._world()
        slots = [self._slot(key, g) for key, g in keyed]
        payloads, sizes = [], []
        for slot, (_, g) in zip(slots, keyed):
            try:
                msg = slot.worker.step(_array(g), step=slot.step)
                payloads.append(np.frombuffer(msg, dtype=np.uint8))
                sizes.append(len(payloads[-1]))
            except NonFiniteError:
                sizes.append(_FAILED)
            slot.step += 1
        device = keyed[0][1].device
        # Round 1: the small gradients' sum and every rank's message sizes (one per parameter), in
        # one float32 allreduce (float64 for a float64 model); round 2: the messages, concatenated
        # and padded to the longest concatenation (all_gather needs equal sizes).
        m = len(keyed)
        numel_small = sum(g.numel() for g in small)
        wide = any(g.dtype == torch.float64 for g in small)
        head = torch.zeros(numel_small + 2 * n * m, dtype=torch.float64 if wide else torch.float32, device=device)
        if small:
            head[:numel_small] = torch.cat([g.reshape(-1) for g in small])
        codes = []
        for size in sizes:
            codes += [-1, 0] if size == _FAILED else [size // _SIZE_SPLIT, size % _SIZE_SPLIT]
        at = numel_small + 2 * m * dist.get_rank(self.process_group)
        head[at:at + 2 * m] = torch.tensor(codes, dtype=head.dtype)
        self._allreduce_sum(head)
        if small:
            _scatter(head[:numel_small].div_(n), small)
        codes = head[numel_small:].view(n, m, 2).to(torch.int64).tolist()
        all_sizes = [[_FAILED if hi < 0 else hi * _SIZE_SPLIT + lo for hi, lo in rank] for rank in codes]
        width = max(max(sum(max(x, 0) for x in s) for s in all_sizes), 1)
        padded = torch.zeros(width, dtype=torch.uint8)
        if payloads:
            joined = torch.from_numpy(np.concatenate(payloads))
            padded[:joined.numel()] = joined
        padded = padded.to(device)
        gathered = [torch.empty_like(padded) for _ in range(n)]
        dist.all_gather(gathered, padded, group=self.process_group)
        traffic = (n - 1) * width
        self.stats["bytes_sent"] += traffic
        self.stats["bytes_received"] += traffic
        # On GPUs the messages are decoded from the gathered buffers where they lie.
        on_device = padded.is_cuda
        blocks = gathered if on_device else [g.cpu().numpy() for g in gathered]
        offsets = [0] * n
        failed = set()
        for j, (slot, (_, grad)) in enumerate(zip(slots, keyed)):
            messages = []
            for r in range(n):
                size = all_sizes[r][j]
                if size == _FAILED:
                    failed.add(r)
                    messages.append(None)
                    continue
                part = blocks[r][offsets[r]:offsets[r] + size]
                messages.append(part if on_device else Message.from_bytes(part))
                offsets[r] += size
            grad.copy_(slot.update(messages).view_as(grad))
        self.stats["compressed_calls"] += 1
        if failed:
            self._nonfinite(keyed, f"rank(s) {sorted(failed)} had non-finite gradients and sat the round out "
                                   "(their error-feedback estimates stay)")

    def _reduced_mean(self, keyed: list) -> None:
        """``_compressed_mean``'s compressed part through an ef.Reducer over the process group
        (``algorithm`` reduce_scatter, allreduce or auto): one Reducer call per parameter, keyed as
        the slots."""
        if keyed[0][1].is_cuda:
            raise InvalidArgument(f"ddp_hook: algorithm={self.algorithm!r} runs on CPU gradients over gloo; on GPUs "
                                  "use algorithm='allgather'")
        red = self._reducer
        if red is None:
            red = self._reducer = self._make_reducer(self._reducer_state)
            self._reducer_state = None
        before = _reducer_bytes(red)
        failed = []
        for key, grad in keyed:
            try:
                grad.copy_(torch.from_numpy(red.allreduce(_array(grad), key=key)))
            except NonFiniteError as e:  # raised on every rank, after a round that kept the estimates
                failed.append(e)
        after = _reducer_bytes(red)
        self.stats["bytes_sent"] += after[0] - before[0]
        self.stats["bytes_received"] += after[1] - before[1]
        self.stats["compressed_calls"] += 1
        if failed:
            more = f" (and {len(failed) - 1} more parameters of the bucket)" if len(failed) > 1 else ""
            self._nonfinite(keyed, f"on rank {self._rank()}: {_one_line(failed[0])}{more}")

    def _nonfinite(self, keyed: list, why: str) -> None:
        """Raising from a hook would leave DDP's reducer mid-bucket (every later forward fails), so
        the round completes and the bucket's gradients become NaN on every rank, as DDP's own
        allreduce leaves them: GradScaler (or an isfinite check) skips the step."""
        for _, grad in keyed:
            grad.fill_(float("nan"))
        self.stats["nonfinite_rounds"] = self.stats.get("nonfinite_rounds", 0) + 1
        warnings.warn(f"efcomm DDP hook: {why}; the bucket's {len(keyed)} compressed gradients are NaN on every "
                      "rank: skip this step", RuntimeWarning, stacklevel=3)

    def _places(self, bucket) -> list:
        """Per parameter of the bucket, its place in the first iteration this process saw (DDP's
        initial layout, the same in every process of one model): an order and, with its shape, a
        key that do not depend on DDP's bucket layout."""
        return [(self._order.setdefault(id(p), len(self._order)), p.shape) for p in bucket.parameters()]

    def _agree(self, device) -> None:
        """The ranks' hooks must be configured alike: unlike ones pair different collectives (a
        silent divergence, or gloo aborting the process). One allreduce (max) of a hash of the
        configuration and its negation at a process's first bucket; MismatchError on every rank
        when they differ. EF21-W's weights must be one per rank (InvalidArgument on every rank,
        before any collective). A reducer state loaded outside a process group loads here: a rank
        where it fails raises its error, the others MismatchError, instead of waiting for it."""
        n = self._world()
        self._check_weights(n)
        failed = None
        if self._reducer_state is not None and self._reducer is None:
            try:
                self._reducer, self._reducer_state = self._make_reducer(self._reducer_state), None
            except Error as e:
                failed = e
        config = repr((self.compressor, self.feedback, self.weights, self.start_iter, self.min_compress_numel,
                       self.iter, self.algorithm, failed is None))
        h = float(int.from_bytes(hashlib.blake2b(config.encode(), digest_size=6).digest(), "little"))  # exact
        t = torch.tensor([h, -h], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.process_group)
        ring = 2 * (n - 1) * t.numel() * t.element_size() // n
        self.stats["bytes_sent"] += ring
        self.stats["bytes_received"] += ring
        self._agreed = True
        if failed is not None:
            raise failed
        if t[0].item() != -t[1].item():
            raise MismatchError(f"efcomm DDP hook: the ranks' hooks differ in compressor, feedback, weights, start_iter, "
                                f"min_compress_numel, algorithm or iteration (this rank: {self.compressor}, "
                                f"{self.feedback}, algorithm={self.algorithm}, "
                                f"start_iter={self.start_iter}, min_compress_numel={self.min_compress_numel}, "
                                f"iteration {self.iter}); configure every rank alike (and load every rank's "
                                "checkpoint; a rank whose checkpoint did not load says why)")

    def _bucket(self, bucket) -> torch.Tensor:
        buf = bucket.buffer()
        places = self._places(bucket)
        self.stats["calls"] += 1
        n = self._world()
        if not self._agreed and n > 1:
            self._agree(buf.device)
        warm = self.iter < self.start_iter or n == 1
        last_warm = self.iter == self.start_iter - 1 and n > 1
        if bucket.is_last():
            self.iter += 1
        grads = _gradients(bucket, buf)
        big = [g.dim() >= 2 and g.numel() >= self.min_compress_numel for g in grads]
        # Compressed in a fixed order (by place), whatever the order of the bucket.
        keyed = [(f"p{index}:{'x'.join(map(str, shape))}", g)
                 for (index, shape), g, b in sorted(zip(places, grads, big), key=lambda e: e[0][0]) if b]
        if warm:
            # The Reducer starts init=full estimates itself, with its first (whole) messages.
            start = last_warm and "init=full" in self.feedback and self.algorithm == "allgather"
            local = [g.detach().clone() for _, g in keyed] if start else None
            self._allreduce_mean(buf)
            if local is not None:
                self._start_from_warmup(keyed, local)
            return buf
        small = [g for g, b in zip(grads, big) if not b]
        if keyed and self.algorithm == "allgather":
            self._compressed_mean(keyed, small)  # the small gradients ride in its first collective
            return buf
        if small:
            _scatter(self._allreduce_mean(torch.cat([g.reshape(-1) for g in small])), small)
        if keyed:
            self._reduced_mean(keyed)
        return buf

    def _start_from_warmup(self, keyed: list, local: list) -> None:
        """EF21's init=full starts each worker's estimate at its first vector, sent whole. The last
        warm-up step has just averaged those vectors, so no message is needed: each worker steps
        on its own gradient locally (the whole vector becomes its estimate) and every mirror
        starts at the average, which every rank holds."""
        for (key, mean), grad in zip(keyed, local):
            slot = self._slot(key, mean)
            # A non-finite average (some rank's gradient was: the same on every rank) starts
            # nothing: the first compressed step sends the whole vector instead.
            if slot.worker.initialized or not bool(torch.isfinite(mean).all()):
                continue
            slot.worker.step(_array(grad), step=slot.step)
            slot.start_mirror(mean)


# torch.load's default (weights_only=True) unpickles only allowlisted classes: the state's pickle
# is its state_dict() (strings, numbers and CPU tensors), so torch.load(path) restores a
# torch.save(state, path) as it does the dict.
if hasattr(torch.serialization, "add_safe_globals"):  # torch >= 2.4 (older ones load anything)
    torch.serialization.add_safe_globals([DDPHookState])


def _reducer_bytes(red) -> tuple:
    """(bytes sent, bytes received) by a Reducer over all its keys."""
    stats = red.stats.values()
    return sum(s["bytes_sent"] for s in stats), sum(s["bytes_received"] for s in stats)


def _torch_state(state: dict) -> dict:
    """An ef.feedback state dict with its numpy arrays as CPU tensors (torch.load's default
    weights_only=True refuses numpy arrays; load_state_dict takes either)."""
    return dict(state, tensors={k: torch.from_numpy(v) for k, v in state["tensors"].items()})


def _copied_state(state: dict) -> dict:
    """A copy of a state dict's meta and tensors (numpy arrays or CPU tensors) sharing no memory
    with it."""
    return dict(state, meta=dict(state["meta"]),
                tensors={k: v.detach().clone() if isinstance(v, torch.Tensor) else np.array(v, copy=True)
                         for k, v in state["tensors"].items()})


def _dtype(t: torch.Tensor) -> str:
    """What a gradient is compressed in: float64 stays float64, the others (float32, and the
    16-bit ones, widened) float32."""
    return "float64" if t.dtype == torch.float64 else "float32"


def _array(t: torch.Tensor):
    """t as the float32 (float64) array a worker steps on, in t's shape (a view where t already is
    one): the shape matters to PowerSGD, which factors a weight of shape (out, in, ...) as the
    matrix out x (in ...), and is only a header to the other compressors. A CUDA tensor stays in
    device memory (the GPU kernels take it as is), a host tensor becomes the numpy array the CPU
    kernels read."""
    a = t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32).contiguous()
    return a if a.is_cuda else a.numpy()


def _gradients(bucket, buf: torch.Tensor) -> list:
    """The bucket's gradients as views of its buffer, in the bucket's order. DDP holds a complex
    parameter's gradient as its real view (twice the elements: a trailing dimension of 2), which
    ``bucket.gradients()`` does not show: it gives the complex shape in the real dtype, half the
    elements, and the other half would stay each rank's own."""
    params = bucket.parameters()
    if not any(p.is_complex() for p in params):
        return bucket.gradients()
    views, at = [], 0
    for p in params:
        shape = tuple(p.shape) + ((2,) if p.is_complex() else ())
        count = math.prod(shape)
        views.append(buf[at:at + count].view(shape))
        at += count
    if at != buf.numel():
        raise InvalidArgument(f"efcomm DDP hook: a bucket of {buf.numel()} elements holds parameters of {at}; "
                              "this DDP layout is not supported")
    return views


def _scatter(flat: torch.Tensor, views: list) -> None:
    """Copies consecutive pieces of flat into the gradient views (which alias the bucket buffer)."""
    at = 0
    for g in views:
        g.copy_(flat[at:at + g.numel()].view_as(g))
        at += g.numel()


# DDP checks the hook's return annotation, so it is a real (not postponed) annotation.
def _hook(state: DDPHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    # The hook runs on autograd's threads: efcomm's kernels there use as many threads as torch's
    # intra-op setting (ranks sharing a machine set it to avoid oversubscription). An error is
    # raised here, and DDP raises it from backward().
    _core.set_num_threads(torch.get_num_threads())
    fut = torch.futures.Future()
    fut.set_result(state._bucket(bucket))
    return fut


def ddp_hook(compressor: str = "topk:ratio=0.01", feedback: str = "ef21", process_group=None,
             start_iter: int = 10, min_compress_numel: int = 1024, weights: Optional[Sequence[float]] = None,
             algorithm: str = "allgather"):
    """Returns ``(state, hook)`` for ``DistributedDataParallel.register_comm_hook(state, hook)``.

    ``compressor`` / ``feedback``: efcomm specs. ``process_group``: the DDP model's group (None:
    the default group). ``start_iter``: iterations averaged uncompressed first (DDP rebuilds its
    buckets after the first one). ``min_compress_numel``: parameters smaller than this, and 1-d
    ones, are averaged uncompressed. ``weights``: with ``feedback="ef21w"``, EF21-W's w_i, one per
    rank (default 1/n each): rank i's worker gets weight=weights[i] and n=the group's size, and
    the gradients are still the mean. ``algorithm``: ``allgather`` (default: the messages of a
    bucket in two collectives, the fewest calls on a small cluster) or, for CPU gradients over
    gloo, one of ef.Reducer's (``reduce_scatter``: per-rank traffic that does not grow with the
    ranks; ``allreduce``: for payloads that add, PowerSGD's distributed rounds among them;
    ``auto``), run per parameter by a Reducer over the process group (``ef.Communicator.torch``).
    """
    return (DDPHookState(compressor, feedback, process_group, start_iter, min_compress_numel, weights, algorithm),
            _hook)


def _ef21w_weights(feedback: str, weights) -> Optional[list]:
    """For ``ef21w``: its weights as floats ([] for 1/n each, n being the group's size at the first
    compressed bucket); None for the other methods. InvalidArgument for weights with another
    method, for weight/n in an ef21w spec, or for weights that are not EF21-W's."""
    method = feedback.split(":", 1)[0].strip()
    if method != "ef21w":
        if weights is not None:
            raise InvalidArgument(f"ddp_hook: weights are EF21-W's (feedback='ef21w'); {method!r} averages the "
                                  "ranks' gradients")
        return None
    if re.search(r"[:,]\s*(weight|n)\s*=", feedback):
        raise InvalidArgument(f"ddp_hook: {feedback!r} gives a weight or n; pass feedback='ef21w' and "
                              "weights=[w_0, ..., w_{n-1}] (one per rank): the hook gives each rank's worker its own")
    if weights is None:
        return []
    try:
        out = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise InvalidArgument(f"ddp_hook: weights must be a sequence of numbers, got {weights!r}") from None
    if not out or not all(0 < w <= 1 for w in out):
        raise InvalidArgument(f"ddp_hook: EF21-W's weights must be in (0, 1], one per rank, got {weights!r}")
    return out
