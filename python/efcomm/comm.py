"""Collectives (docs/collectives.md): :class:`Communicator`, a group of ranks that exchange
bytes, and :class:`Reducer`, compressed allreduce with error feedback whose result is
bit-identical on every rank.

Communicators come from :func:`efcomm.testing.run_ranks` (in-process ranks on threads),
:meth:`Communicator.mpi`, :meth:`Communicator.torch` (a torch.distributed gloo group) or, for
GPUs, :meth:`Communicator.nccl` (a :class:`NcclCommunicator`).
Every blocking native call releases the GIL.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import sys
import time
import weakref
import zlib
from typing import Optional, Sequence

from . import _args, _core
from .compressors import _cuda_stream, _device_ctx, _host, _is_cuda, _is_torch, _library
from .errors import BackendUnavailable, CollectiveTimeout, InvalidArgument

__all__ = ["Communicator", "NcclCommunicator", "Reducer", "Work"]

_ALGORITHMS = ("allgather", "reduce_scatter", "allreduce", "auto")


def _timeout(value, what: str) -> Optional[float]:
    """A timeout argument: None (the default), or seconds > 0 as a float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise InvalidArgument(f"{what}: timeout must be None or seconds > 0, got {value!r}")
    return float(value)


class Communicator:
    """One rank's handle on a group of ``size`` ranks (wraps a native backend)."""

    def __init__(self, backend):
        if not isinstance(backend, _core._Backend):
            raise InvalidArgument(f"Communicator: expected a native backend, got {type(backend).__name__}")
        self._backend = backend
        self._reducers = weakref.WeakSet()  # the host Reducers on it: a health.Monitor rebinds them

    @classmethod
    def mpi(cls, comm=None, timeout: Optional[float] = None) -> "Communicator":
        """Wraps an mpi4py communicator (default ``MPI.COMM_WORLD``).

        Collective: every rank of ``comm`` calls it. The backend works on a duplicate of ``comm``,
        so its messages never mix with the caller's. ``timeout``: default timeout of its
        collectives in seconds (None: 300). Needs mpi4py over an MPICH-ABI MPI library, by
        default the ``mpich`` wheel (``pip install mpi4py mpich``).
        """
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise BackendUnavailable(f"Communicator.mpi needs mpi4py and MPICH: pip install mpi4py mpich ({e})") from e
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Comm):
            raise InvalidArgument(f"Communicator.mpi: expected an mpi4py communicator, got {type(comm).__name__}")
        if comm == MPI.COMM_NULL:
            raise InvalidArgument("Communicator.mpi: MPI.COMM_NULL (a rank outside the split's groups?) has no ranks")
        # (Without MPI running the core says so: MPICH aborts the process on any call then.)
        if MPI.Is_initialized() and not MPI.Is_finalized() and comm.Is_inter():
            # Its peers are the remote group's while its size is the local group's: every
            # collective would pair the wrong ranks.
            raise InvalidArgument("Communicator.mpi: an intercommunicator joins two groups; give an intracommunicator "
                                  "(comm.Merge() makes one of both groups)")
        if ".mpiabi." in getattr(MPI, "__file__", ""):
            raise BackendUnavailable("Communicator.mpi: mpi4py runs on the MPI standard ABI (libmpi_abi), efcomm on "
                                     "the MPICH ABI: set MPI4PY_MPIABI=mpich before importing mpi4py")
        # mpi4py loads libmpi privately (RTLD_LOCAL), out of the core's sight: tell it which file.
        library = ""
        try:
            with open("/proc/self/maps") as maps:
                paths = sorted({line.split(None, 5)[-1].strip() for line in maps if "/libmpi" in line})
            library = next((p for p in paths if p.rsplit("/", 1)[-1].startswith(("libmpi.so", "libmpich.so"))), "")
        except OSError:  # no /proc (macOS): the core looks for an already loaded libmpi.so.12
            pass
        handle = int(comm.handle if hasattr(comm, "handle") else MPI._handleof(comm))
        # An MPICH MPI_Comm is a 32-bit int; mpi4py gives it as an unsigned number (a derived
        # communicator's 0x84..., sign-extended to 64 bits): back to the int it is.
        if handle >= 0xFFFFFFFF80000000:
            handle -= 1 << 64
        elif 1 << 31 <= handle < 1 << 32:
            handle -= 1 << 32
        if not -(1 << 31) <= handle < 1 << 31:
            raise InvalidArgument(f"Communicator.mpi: {handle:#x} is not an MPICH communicator handle (an int); "
                                  "efcomm needs an MPICH-ABI MPI (pip install mpich)")
        return cls(_core._mpi_backend(handle, library, _timeout(timeout, "Communicator.mpi")))

    @classmethod
    def nccl(cls, comm=None, *, process_group=None, device=None,
             timeout: Optional[float] = None) -> "NcclCommunicator":
        """An NCCL communicator over the GPUs of the job, one rank per GPU.

        Collective: every rank calls it. NCCL's unique id is made on rank 0 and sent to the others
        over ``comm`` (an mpi4py communicator) or ``process_group`` (a torch.distributed group);
        with neither, the default torch.distributed group when torch.distributed is initialized,
        else ``MPI.COMM_WORLD``. ``device``: the CUDA device (int, ``"cuda:1"``, torch.device);
        default: torch's current device when torch has initialized CUDA, else the local rank
        (``LOCAL_RANK``, or the rank on this node) modulo the device count. ``timeout``: seconds
        for creating it and default timeout of its collectives (None: 300).

        libnccl is loaded at run time: ``EFCOMM_NCCL_LIBRARY``, else the one already loaded in the
        process (torch's), else the ``nvidia-nccl-cu13`` wheel's, else ``libnccl.so.2`` from the
        system. Without a CUDA build of efcomm, a GPU or libnccl on any rank, every rank raises
        BackendUnavailable saying which and why.
        """
        if comm is not None and process_group is not None:
            raise InvalidArgument("Communicator.nccl: give comm (mpi4py) or process_group (torch.distributed), "
                                  "not both")
        timeout = _timeout(timeout, "Communicator.nccl")
        if not _core._nccl_built():
            # The same build everywhere: every rank fails alike, without talking to the others.
            raise BackendUnavailable(f"Communicator.nccl: {_nccl_problem('')}")
        if process_group is not None or (comm is None and _torch_distributed_initialized()):
            exchange = _TorchExchange(process_group)
        else:
            exchange = _MpiExchange(comm)
        local_rank = exchange.local_rank()  # collective over MPI: every rank, before anything may differ
        library = _nccl_wheel_library()
        dev, bad_device = None, None
        problem = _nccl_problem(library)
        if problem is None:
            try:
                dev = _resolve_device(device, local_rank)
            except InvalidArgument as e:
                bad_device = e
                problem = str(e)
        # Every rank learns every rank's verdict, so that all raise together instead of some
        # waiting for the others at NCCL's initialization.
        problems = exchange.allgather(problem)
        if bad_device is not None:
            raise bad_device
        bad = [(r, p) for r, p in enumerate(problems) if p]
        if bad:
            mine = problems[exchange.rank]
            others = ", ".join(str(r) for r, _ in bad if r != exchange.rank)
            text = mine or bad[0][1]
            where = f"rank {exchange.rank}" if mine else f"rank {bad[0][0]}"
            raise BackendUnavailable(f"Communicator.nccl: the NCCL backend is unavailable on {where}: {text}"
                                     + (f" (also on ranks {others})" if others and mine else ""))
        payload = None
        if exchange.rank == 0:
            try:
                payload = ("id", _core._nccl_unique_id(library))
            except Exception as e:  # noqa: BLE001 - sent to every rank, raised there
                payload = ("error", f"{type(e).__name__}: {e}")
        payload = exchange.bcast(payload)
        if payload[0] != "id":
            raise BackendUnavailable(f"Communicator.nccl: rank 0 could not make NCCL's unique id: {payload[1]}")
        native = _core._NcclCommunicator(exchange.rank, exchange.size, payload[1], dev,
                                         timeout, library)
        return NcclCommunicator(native)

    @property
    def rank(self) -> int:
        return self._backend.rank

    @property
    def size(self) -> int:
        return self._backend.size

    @classmethod
    def torch(cls, process_group=None, timeout: Optional[float] = None) -> "Communicator":
        """A communicator over a torch.distributed process group with a gloo backend (default:
        the default group): :class:`Reducer` on host arrays wherever torch.distributed runs,
        without MPI.

        Not collective: each rank wraps its own handle. ``timeout``: default timeout of its
        collectives in seconds (None: the process group's own). The byte collectives are torch's:
        an ``allgatherv`` is an all_gather of blocks, an ``alltoallv`` an all_to_all_single, each
        block a size and the first bytes up to a capacity that a Reducer call learns from the
        same call of its key's previous round; only longer ones cost a second collective for the
        rest (so a Reducer call's collectives cost one of torch's each in the steady state, two
        the first time). The sums of the ``allreduce`` algorithm are torch's all_reduce, the same
        bits on every rank (not summed in rank order as the MPI and in-process backends do). A
        failed or timed-out torch collective raises :class:`CollectiveTimeout` (torch does not say
        which ranks are missing) and leaves the process group unusable, as torch does. For CUDA
        tensors over NCCL use :meth:`nccl`.
        """
        try:
            import torch.distributed as dist
        except ImportError as e:
            raise BackendUnavailable(f"Communicator.torch needs torch: pip install torch ({e})") from e
        if not (dist.is_available() and dist.is_initialized()):
            raise InvalidArgument("Communicator.torch: torch.distributed is not initialized; call "
                                  "torch.distributed.init_process_group('gloo', ...) first")
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise InvalidArgument(f"Communicator.torch: process_group must be a torch.distributed ProcessGroup (None: "
                                  f"the default group), got {type(process_group).__name__}")
        if process_group is not None and dist.get_rank(process_group) < 0:
            raise InvalidArgument(f"Communicator.torch: this process (rank {dist.get_rank()}) is not a member of the "
                                  "process group; only its members make a communicator of it")
        backend = str(dist.get_backend(process_group)).lower()
        if "gloo" not in backend:
            raise BackendUnavailable(f"Communicator.torch: the process group's backend is {backend!r}; efcomm "
                                     "moves host bytes over gloo: pass a gloo group (torch.distributed.new_group("
                                     "backend='gloo')), or use Communicator.nccl(process_group=...) for CUDA tensors")
        return cls(_core._py_backend(_TorchBackend(process_group, _timeout(timeout, "Communicator.torch"))))

    def barrier(self, timeout: Optional[float] = None) -> None:
        """Returns once every rank has entered the barrier."""
        self._backend.barrier(_timeout(timeout, "Communicator.barrier"))

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"


# ---- torch.distributed (gloo) --------------------------------------------------------------------

class _TorchBackend:
    """The byte collectives of a native backend (bindings: PyBackend) over a torch.distributed
    gloo group. Every collective works on tensors of its own, copied in and out: after a timeout
    torch may still write into its buffers, which must not be the caller's.

    Variable sizes cost gloo a collective of their own (all_gather and all_to_all_single move
    equal or announced sizes), and on a small cluster a collective's latency, not its bytes, is
    most of a Reducer call's time. So a labelled collective (a Reducer call: ``label(key, ...)``)
    sends its size in a block of a learned capacity together with its first bytes: the k-th
    allgatherv or alltoallv of a call with key K has the capacity that the same collective of the
    previous call with K needed (its largest size, plus an eighth and 64 bytes), and only a size
    beyond it costs a second collective, for the rest. Blocks of different sizes abort gloo (the
    process, not the call), so every rank must use the same capacities:
    - the first collective of a call (the Reducer's header agreement, which catches ranks that
      disagree on the key) has a fixed capacity, whatever the key's history;
    - its blocks carry a digest of the sender's capacities for the key: where the ranks' digests
      differ (a rank that restarted its backend, or disagrees on the key), every rank forgets the
      key's capacities before the call's next collective;
    - what is learned, every rank saw: every size is in the first collective (an alltoallv block
      also carries its sender's largest count).
    Unlabelled collectives have capacity 0: sizes first, then bytes. An alltoallv pads every
    pair's block to the largest count any rank sends (the Reducer's reduce_scatter chunks are
    about equal; a skewed exchange sends up to n times its bytes)."""

    _HEAD = 8  # bytes of each int64 head word of a block: its size, (alltoallv) the sender's
    # largest count, the digest of the sender's capacities (0 after the first collective of a call)
    _FIRST_CAPACITY = 256  # the first collective of a call: a Reducer header is 68 to 136 bytes
    _KEYS = 4096  # keys whose capacities are kept (least recently used go first)

    def __init__(self, group, timeout: Optional[float]):
        import collections

        import torch.distributed as dist

        self._dist = dist
        self._group = group
        self._timeout = timeout
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self._aborted: Optional[CollectiveTimeout] = None
        self._key = ""  # the label of the collectives being issued ("" none)
        self._ordinal = 0  # collectives issued under it
        self._capacity = collections.OrderedDict()  # key -> {ordinal: learned capacity in bytes}

    def label(self, key: str, algorithm: str) -> None:
        """Backend::label: a Reducer call's collectives follow (the same key again: the same call,
        its algorithm's part); "" when it has ended."""
        if key != self._key:
            self._key, self._ordinal = key, 0

    def _slot(self):
        """(ordinal, capacity, digest) of the collective being issued: ordinal 0 unlabelled, 1
        the first of a call (fixed capacity; digest of the key's capacities), then learned ones."""
        if not self._key:
            return 0, 0, 0
        self._ordinal += 1
        caps = self._capacity.get(self._key, {})
        if self._ordinal == 1:
            digest = zlib.crc32(repr(sorted(caps.items())).encode()) + 1  # never 0
            return 1, self._FIRST_CAPACITY, digest
        return self._ordinal, caps.get(self._ordinal, 0), 0

    def _settle(self, ordinal: int, largest: int, digests: list) -> None:
        """After a labelled collective: forget the key's capacities where the ranks' digests
        differed (first collective), else learn this one's (later ones)."""
        if ordinal == 1:
            if len(set(digests)) > 1:
                self._capacity.pop(self._key, None)
            return
        if ordinal > 1:
            caps = self._capacity.setdefault(self._key, {})
            self._capacity.move_to_end(self._key)
            caps[ordinal] = (largest + largest // 8 + 64) // 8 * 8  # int64 heads stay aligned
            while len(self._capacity) > self._KEYS:
                self._capacity.popitem(last=False)

    def abort(self, message: str, culprits: list) -> None:
        """Backend::abort (a health.Monitor's verdict): the pending collective and every later one
        raise CollectiveTimeout(message, culprits) at once; torch's own operation is left to end
        in the background, on buffers of its own."""
        if self._aborted is None:
            self._aborted = CollectiveTimeout(message, culprits=culprits)

    def _wait(self, issue, what: str, timeout: Optional[float]) -> None:
        """Issues a torch collective (issue() returns its work) and waits for it. After a timeout,
        a failure or an abort, nothing more is issued: the group's next collective would pair
        with a peer's stale one (gloo then aborts the process), so every later call raises the
        first error at once, as the MPI and in-process backends do."""
        if self._aborted is not None:
            raise self._aborted
        work = issue()
        # Polled rather than work.wait(timeout): an abort ends the wait at once, and a timeout
        # leaves torch's operation alone instead of failing it half way.
        seconds = timeout if timeout is not None else self._timeout
        deadline = None if seconds is None else time.monotonic() + seconds
        pause = 20e-6
        while not work.is_completed():
            if self._aborted is not None:
                raise self._aborted
            if deadline is not None and time.monotonic() > deadline:
                self._aborted = CollectiveTimeout(
                    f"torch.distributed {what} did not complete on rank {self.rank} of {self.size} within "
                    f"{seconds:g} s (torch does not say which ranks are missing); the process group is unusable "
                    "now")
                raise self._aborted
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)
        try:
            work.wait()
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError and its subclasses
            if self._aborted is None:
                self._aborted = CollectiveTimeout(
                    f"torch.distributed {what} failed on rank {self.rank} of {self.size}: {type(e).__name__}: "
                    f"{e}; a peer died (torch does not say which), and the process group is unusable now")
            raise self._aborted from e

    @staticmethod
    def _bytes(view) -> "torch.Tensor":
        import numpy as np
        import torch

        return torch.from_numpy(np.frombuffer(view, dtype=np.uint8).copy())

    @staticmethod
    def _block(head: list, data, capacity: int) -> "torch.Tensor":
        """int64 head words, then data's first `capacity` bytes, zero-padded to `capacity`."""
        import torch

        block = torch.zeros(8 * len(head) + capacity, dtype=torch.uint8)
        block[:8 * len(head)] = torch.tensor(head, dtype=torch.int64).view(torch.uint8)
        first = data[:capacity]
        block[8 * len(head):8 * len(head) + first.numel()] = first
        return block

    @staticmethod
    def _head(block, words: int) -> list:
        import torch

        return block[:8 * words].view(torch.int64).tolist()

    def allgatherv(self, view, timeout):
        import torch

        dist = self._dist
        ordinal, capacity, digest = self._slot()
        data = self._bytes(view)
        mine = self._block([data.numel(), digest], data, capacity)
        blocks = [torch.empty_like(mine) for _ in range(self.size)]
        self._wait(lambda: dist.all_gather(blocks, mine, group=self._group, async_op=True),
                   "all_gather (allgatherv)", timeout)
        heads = [self._head(b, 2) for b in blocks]
        sizes = [h[0] for h in heads]
        parts = [b[2 * self._HEAD:2 * self._HEAD + min(s, capacity)] for b, s in zip(blocks, sizes)]
        width = max(sizes) - capacity
        if width > 0:  # the rest of the longer blocks, padded to the longest rest
            rest = torch.zeros(width, dtype=torch.uint8)
            rest[:max(data.numel() - capacity, 0)] = data[capacity:]
            rests = [torch.empty_like(rest) for _ in range(self.size)]
            self._wait(lambda: dist.all_gather(rests, rest, group=self._group, async_op=True),
                       "all_gather (allgatherv, the rest)", timeout)
            parts = [torch.cat([p, r[:max(s - capacity, 0)]]) for p, r, s in zip(parts, rests, sizes)]
        self._settle(ordinal, max(sizes), [h[1] for h in heads])
        return [p.numpy() for p in parts]

    def alltoallv(self, view, counts, timeout):
        import torch

        dist = self._dist
        ordinal, capacity, digest = self._slot()
        data = self._bytes(view)
        counts = [int(c) for c in counts]
        starts = [sum(counts[:p]) for p in range(self.size)]
        chunks = [data[a:a + c] for a, c in zip(starts, counts)]
        largest = max(counts)
        send = torch.cat([self._block([c, largest, digest], chunk, capacity) for c, chunk in zip(counts, chunks)])
        recv = torch.empty_like(send)
        self._wait(lambda: dist.all_to_all_single(recv, send, group=self._group, async_op=True),
                   "all_to_all_single (alltoallv)", timeout)
        blocks = recv.view(self.size, -1)
        heads = [self._head(b, 3) for b in blocks]
        recv_counts = [h[0] for h in heads]
        parts = [b[3 * self._HEAD:3 * self._HEAD + min(c, capacity)] for b, c in zip(blocks, recv_counts)]
        # The largest count any rank sent: the same on every rank.
        largest = max(h[1] for h in heads)
        if largest > capacity:  # the rest of the longer chunks, exactly
            rest_in = [max(c - capacity, 0) for c in recv_counts]
            rest_out = [max(c - capacity, 0) for c in counts]
            out = torch.empty(sum(rest_in), dtype=torch.uint8)
            rest = torch.cat([chunk[capacity:] for chunk in chunks])
            self._wait(lambda: dist.all_to_all_single(out, rest, rest_in, rest_out, group=self._group, async_op=True),
                       "all_to_all_single (alltoallv, the rest)", timeout)
            parts = [torch.cat([p, r]) for p, r in zip(parts, torch.split(out, rest_in))]
        self._settle(ordinal, largest, [h[2] for h in heads])
        return [p.numpy() for p in parts]

    def broadcast(self, view, root, timeout):
        import numpy as np

        buf = self._bytes(view)
        src = root if self._group is None else self._dist.get_global_rank(self._group, root)
        self._wait(lambda: self._dist.broadcast(buf, src=src, group=self._group, async_op=True), "broadcast",
                   timeout)
        np.frombuffer(view, dtype=np.uint8)[:] = buf.numpy()

    def allreduce_sum(self, view, dtype: str, timeout):
        import numpy as np
        import torch

        if len(view) == 0:
            return
        buf = self._bytes(view).view(getattr(torch, dtype))  # the core's names: float32, bfloat16, ...
        self._wait(lambda: self._dist.all_reduce(buf, group=self._group, async_op=True), "all_reduce", timeout)
        np.frombuffer(view, dtype=np.uint8)[:] = buf.view(torch.uint8).numpy()

    def barrier(self, timeout):
        self._wait(lambda: self._dist.barrier(group=self._group, async_op=True), "barrier", timeout)


# ---- NCCL ----------------------------------------------------------------------------------------

def _torch_distributed_initialized() -> bool:
    dist = sys.modules.get("torch.distributed")  # never imports torch
    try:
        return dist is not None and dist.is_available() and dist.is_initialized()
    except Exception:  # noqa: BLE001
        return False


def _nccl_wheel_library() -> str:
    """libnccl.so.2 of the nvidia-nccl-cu13 wheel (nvidia/nccl/lib), found without importing torch."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        return ""
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(base, "lib", "libnccl.so.2")
        if os.path.exists(path):
            return path
    return ""


def _nccl_problem(library: str) -> Optional[str]:
    """Why this process cannot run the NCCL backend, or None."""
    if not _core._nccl_built():
        try:
            _core._nccl_version(library)
        except BackendUnavailable as e:
            return str(e)
        return "efcomm was built without the NCCL backend"
    info = _core._cuda_info()
    if not info["available"]:
        return f"no usable CUDA device: {info['reason']}"
    try:
        _core._nccl_version(library)
    except BackendUnavailable as e:
        return str(e)
    return None


class _MpiExchange:
    """Rank, size and small-object collectives over an mpi4py communicator."""

    def __init__(self, comm):
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise BackendUnavailable(
                "Communicator.nccl sends NCCL's unique id over MPI or torch.distributed: pip install mpi4py mpich, "
                f"or pass process_group= (a torch.distributed group) ({e})") from e
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Comm):
            raise InvalidArgument(f"Communicator.nccl: comm must be an mpi4py communicator, got {type(comm).__name__} "
                                  "(a torch.distributed group goes in process_group=)")
        self._MPI = MPI
        self._comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allgather(self, obj):
        return self._comm.allgather(obj)

    def bcast(self, obj):
        return self._comm.bcast(obj, root=0)

    def local_rank(self) -> int:
        node = self._comm.Split_type(self._MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_rank()
        finally:
            node.Free()


class _TorchExchange:
    """Rank, size and small-object collectives over a torch.distributed process group."""

    def __init__(self, group):
        import torch.distributed as dist
        if not dist.is_initialized():
            raise InvalidArgument("Communicator.nccl: process_group given, but torch.distributed is not initialized "
                                  "(call torch.distributed.init_process_group first)")
        self._dist = dist
        self._group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self._src = dist.get_global_rank(group, 0) if group is not None else 0

    def allgather(self, obj):
        out = [None] * self.size
        self._dist.all_gather_object(out, obj, group=self._group)
        return out

    def bcast(self, obj):
        box = [obj]
        self._dist.broadcast_object_list(box, src=self._src, group=self._group)
        return box[0]

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", self.rank))


def _resolve_device(device, local_rank: int) -> int:
    count = _core._cuda_info()["device_count"]
    index = _device_index(device, local_rank, count)
    if not 0 <= index < count:
        raise InvalidArgument(f"Communicator.nccl: CUDA device {index} does not exist ({count} visible to this "
                              "process)")
    return index


def _device_index(device, local_rank: int, count: int) -> int:
    if device is None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            return int(torch.cuda.current_device())
        local = os.environ.get("LOCAL_RANK")
        local = int(local) if local is not None and local.strip().isdigit() else local_rank
        return local % max(count, 1)
    if isinstance(device, str):
        kind, _, index = device.partition(":")
        if kind != "cuda" or (index and not index.isdigit()):
            raise InvalidArgument(f"Communicator.nccl: device must be a CUDA device (\"cuda:1\"), got {device!r}")
        if not index:
            return _device_index(None, local_rank, count)
        return int(index)
    if type(device).__name__ == "device" and hasattr(device, "type"):  # torch.device
        if device.type != "cuda":
            raise InvalidArgument(f"Communicator.nccl: device must be a CUDA device, got {device}")
        return _device_index(None, local_rank, count) if device.index is None else int(device.index)
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    raise InvalidArgument(f"Communicator.nccl: device must be an int, \"cuda:N\" or a torch.device, got {device!r}")


def _dtype_name(x) -> str:
    """The dtype name ("float32", ...) of a CUDA array."""
    if _is_torch(x):
        return str(x.dtype).rsplit(".", 1)[-1]
    dtype = getattr(x, "dtype", None)
    if dtype is not None:
        return str(getattr(dtype, "name", dtype))
    typestr = x.__cuda_array_interface__["typestr"]
    return {"<f4": "float32", "<f8": "float64", "<f2": "float16"}.get(typestr, typestr)


def _nbytes(x) -> int:
    if _is_torch(x):
        return x.numel() * x.element_size()
    return int(x.nbytes)


class NcclWork:
    """An asynchronous NCCL collective (``async_op=True``): ``wait(timeout=None)`` blocks the host
    until it has completed on the GPU and returns its result; ``is_completed()`` never blocks. A
    timeout (the collective's, or wait's) aborts the communicator and raises CollectiveTimeout."""

    def __init__(self, native, result):
        self._native = native
        self._result = result

    def wait(self, timeout: Optional[float] = None):
        self._native.wait(_timeout(timeout, "Work.wait"))
        return self._result

    def is_completed(self) -> bool:
        return self._native.completed()


class NcclCommunicator(Communicator):
    """One rank's NCCL communicator (from :meth:`Communicator.nccl`): collectives on CUDA arrays
    (torch CUDA tensors, CuPy arrays; zero-copy), run on the array library's current stream.

    Each call blocks the host until its collective is done on the GPU, or returns an
    :class:`NcclWork` with ``async_op=True``; a collective not done within ``timeout`` (default:
    the communicator's) aborts the communicator and raises CollectiveTimeout, whose ``culprits``
    is empty (NCCL does not tell which rank is missing). NCCL does not check that the ranks agree
    on sizes: a disagreement shows as a timeout. ``Reducer(nccl_comm, ...)`` reduces CUDA arrays
    over it (the Reducer's header agreement turns a disagreement into MismatchError there).
    """

    def __init__(self, native):
        if not isinstance(native, _core._NcclCommunicator):
            raise InvalidArgument("NcclCommunicator: use Communicator.nccl(...)")
        self._nccl = native

    @property
    def rank(self) -> int:
        return self._nccl.rank

    @property
    def size(self) -> int:
        return self._nccl.size

    @property
    def device(self) -> int:
        """The CUDA device index of this rank."""
        return self._nccl.device

    @property
    def _backend(self):
        # The host-memory Backend that health.Monitor drives: not on NCCL yet (the Reducer takes
        # the communicator itself).
        raise BackendUnavailable("ef.health.Monitor does not run on the NCCL backend yet; use it over "
                                 "Communicator.mpi()")

    def _stream(self, x=None) -> int:
        if x is not None:
            return _cuda_stream(x)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            return int(torch.cuda.current_stream(self.device).cuda_stream)
        return 0

    @staticmethod
    def _check(x, what):
        if not _is_cuda(x):
            raise InvalidArgument(f"NcclCommunicator.{what}: expected a CUDA array (torch CUDA tensor, CuPy array), "
                                  f"got {type(x).__name__}")
        return _host(x)

    def _run(self, native_work, result, async_op):
        work = NcclWork(native_work, result)
        return work if async_op else work.wait()

    def barrier(self, timeout: Optional[float] = None) -> None:
        """Returns once every rank has reached the barrier (on the current stream)."""
        self._nccl.barrier(self._stream(), _timeout(timeout, "NcclCommunicator.barrier")).wait(None)

    def allreduce(self, x, *, timeout: Optional[float] = None, async_op: bool = False):
        """In place: x becomes the elementwise sum over ranks (float32/64, float16, bfloat16).
        Returns x (or an NcclWork whose wait returns x)."""
        a = self._check(x, "allreduce")
        timeout = _timeout(timeout, "NcclCommunicator.allreduce")
        with _device_ctx(a):
            w = self._nccl.allreduce_sum(a, _dtype_name(a), self._stream(a), timeout)
        return self._run(w, x, async_op)

    def broadcast(self, x, root: int = 0, *, timeout: Optional[float] = None, async_op: bool = False):
        """In place: x on every rank becomes rank ``root``'s x (any dtype). Returns x."""
        a = self._check(x, "broadcast")
        timeout = _timeout(timeout, "NcclCommunicator.broadcast")
        with _device_ctx(a):
            w = self._nccl.broadcast(a, int(root), self._stream(a), timeout)
        return self._run(w, x, async_op)

    def allgatherv(self, x, *, timeout: Optional[float] = None) -> list:
        """Every rank's x (sizes may differ; the same dtype everywhere), flattened: a list of
        ``size`` 1-d arrays of x's dtype and library, views of one new device buffer, entry i
        from rank i. Exchanges the sizes first (one small collective), then moves the data."""
        x = self._check(x, "allgatherv")
        timeout = _timeout(timeout, "NcclCommunicator.allgatherv")
        with _device_ctx(x):
            stream = self._stream(x)
            sizes = self._nccl.exchange_sizes(_nbytes(x), stream, timeout)
            total = sum(sizes)
            if _is_torch(x):
                import torch
                out = torch.empty(total, dtype=torch.uint8, device=x.device)
            elif _library(x) == "cupy":
                import cupy
                out = cupy.empty(total, dtype=cupy.uint8)
            else:
                raise InvalidArgument("NcclCommunicator.allgatherv: x must be a torch CUDA tensor or a CuPy array "
                                      "(the output is allocated in its library)")
            self._nccl.allgatherv_into(x, out, sizes, stream, timeout).wait(None)
        parts, offset = [], 0
        for n in sizes:
            parts.append(out[offset:offset + n].view(x.dtype))
            offset += n
        return parts

    def abort(self, message: str = "aborted by the caller") -> None:
        """Aborts the communicator: its pending and later collectives raise CollectiveTimeout."""
        self._nccl.abort(str(message))

    def __repr__(self) -> str:
        return f"NcclCommunicator(rank={self.rank}, size={self.size}, device={self.device})"


def _like(out, x):
    """The native result as x's kind of array: numpy stays numpy, torch gets a torch tensor."""
    if _is_torch(x):
        import torch
        return torch.from_numpy(out).to(device=x.device)
    return out


def _float_dtype(x, what: str) -> None:
    """The Reducer's error feedback keeps float32 or float64 state: InvalidArgument naming x's
    dtype otherwise (numpy and torch arrays; other objects are left to the native parser)."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and str(dtype).replace("torch.", "") not in ("float32", "float64"):
        raise InvalidArgument(f"{what}: x must be float32 or float64 (the error feedback's state), got "
                              f"{str(dtype).replace('torch.', '')}; convert it, e.g. x.astype(np.float32)")


class Work:
    """An asynchronous :meth:`Reducer.allreduce_async` call (PyTorch's ``Work``).

    ``wait(timeout=None)`` blocks until the call has completed and returns its result, or raises
    its error; with a timeout that runs out first the call is aborted (with the reducer's
    communicator, as after any collective timeout) and has ended when CollectiveTimeout is raised.
    """

    def __init__(self, native, x):
        self._native = native
        self._x = x

    def wait(self, timeout: Optional[float] = None):
        out = self._native.wait(_timeout(timeout, "Work.wait"))
        return out if self._x is None else _like(out, self._x)

    def is_completed(self) -> bool:
        return self._native.completed()


class Reducer:
    """Compressed allreduce with per-key error-feedback state; one object per rank.

    ``allreduce(x, key=...)`` returns the aggregated estimate as a new array of x's type
    (numpy or torch CPU), shape and dtype (float32/float64). Over :meth:`Communicator.nccl`, x is
    a CUDA array (torch CUDA tensor, CuPy array) and everything stays on its device: the
    feedback state, the messages (NCCL moves them) and the result, a new array of x's library
    (PowerSGD's ``allreduce`` algorithm is host-only). All ranks call it with the same
    keys, shapes and dtypes in the same order; a disagreement raises MismatchError on every rank.
    ``weights`` (one per rank) default to 1/size each: with ``identity`` and ``none`` the result
    is the mean. With ``feedback="ef21w"`` they are EF21-W's w_i: rank i's worker gets
    weight=weights[i] and n=size (so the spec names neither), and the result is still the mean of
    the ranks' estimates.

    ``algorithm``: ``allgather``, ``reduce_scatter``, ``allreduce`` (compressors whose payloads
    add: identity, cast, shared-seed RandK, PowerSGD's factors) or ``auto`` (per key at its first
    call, the cheapest under an alpha-beta model of the links measured by that call; the choice is
    in ``stats[key]["algorithm"]``).
    ``bucket_bytes``: the largest fused bucket of :meth:`allreduce_coalesced`.
    """

    def __init__(self, comm: Communicator, compressor: str = "topk:ratio=0.01", feedback: str = "ef21",
                 algorithm: str = "auto", weights: Optional[Sequence[float]] = None,
                 bucket_bytes: int = 25 << 20):
        if not isinstance(comm, Communicator):
            raise InvalidArgument(f"Reducer: comm must be an efcomm.Communicator, got {type(comm).__name__}")
        if algorithm not in _ALGORITHMS:
            raise InvalidArgument(f"Reducer: unknown algorithm {algorithm!r}; expected one of {_ALGORITHMS}")
        compressor = getattr(compressor, "spec", compressor)
        feedback = getattr(feedback, "spec", feedback)
        if not isinstance(compressor, str) or not isinstance(feedback, str):
            raise InvalidArgument("Reducer: compressor and feedback must be spec strings")
        bucket_bytes = _args.integer(bucket_bytes, "Reducer: bucket_bytes", 1)
        self._comm = comm
        self._pending: list = []
        # Over NCCL the reducer takes device arrays (torch CUDA tensors, CuPy arrays).
        self._device = isinstance(comm, NcclCommunicator)
        self._impl = _core._Reducer(comm._nccl if self._device else comm._backend, compressor, feedback, algorithm,
                                    [] if weights is None else _args.floats(weights, "Reducer: weights"), bucket_bytes)
        if not self._device:
            comm._reducers.add(self)

    @property
    def comm(self) -> Communicator:
        return self._comm

    @property
    def compressor(self) -> str:
        return self._impl.compressor

    @property
    def feedback(self) -> str:
        return self._impl.feedback

    @property
    def algorithm(self) -> str:
        return self._impl.algorithm

    @property
    def link(self) -> Optional[dict]:
        """The link model of ``auto`` (alpha_seconds, beta_seconds_per_byte), once measured."""
        return self._impl.link

    def _checked(self, key, what, check=None, bucket=""):
        """The Python-side checks of a call (the key, and ``check()``'s). A failure still takes
        part in the call (the native reject: the other ranks raise MismatchError naming this
        rank instead of waiting for it), then raises InvalidArgument. Returns ``check()``."""
        try:
            if not isinstance(key, str):
                raise InvalidArgument(f"Reducer.{what}: key must be a string, got {type(key).__name__}")
            return check() if check else None
        except InvalidArgument as e:
            self._impl.reject((key if isinstance(key, str) else repr(key)) + bucket, str(e))
            raise  # not reached: reject raises

    def _device_args(self, x, what):
        """x checked to be a CUDA array, a new output like it, and the stream they are used on."""
        if not _is_cuda(x):
            raise InvalidArgument(f"Reducer.{what}: a reducer over NCCL takes CUDA arrays (torch CUDA tensors, CuPy "
                                  f"arrays), got {type(x).__name__}; use Communicator.mpi() for host arrays")
        x = _host(x)
        if _is_torch(x):
            import torch
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
        elif _library(x) == "cupy":
            import cupy
            with x.device:
                out = cupy.empty(x.shape, dtype=x.dtype)
        else:
            raise InvalidArgument(f"Reducer.{what}: x must be a torch CUDA tensor or a CuPy array (the output is "
                                  "allocated in its library)")
        return x, out, self._comm._stream(x)

    def allreduce(self, x, *, key: str):
        """The aggregated estimate of every rank's x, bit-identical on every rank (a device array
        like x on a reducer over NCCL)."""
        if self._device:
            x, out, stream = self._checked(key, "allreduce", lambda: self._device_args(x, "allreduce"))
            with _device_ctx(x):
                self._impl.allreduce_device(x, out, key, stream)
            return out
        self._checked(key, "allreduce", lambda: _float_dtype(x, "Reducer.allreduce"))
        return _like(self._impl.allreduce(_host(x), key), x)

    def allreduce_async(self, x, *, key: str) -> Work:
        """Starts :meth:`allreduce` on the reducer's worker thread; calls run in the order made.
        x must not be modified until the Work has completed."""
        if self._device:
            x, out, stream = self._checked(key, "allreduce_async", lambda: self._device_args(x, "allreduce_async"))
            with _device_ctx(x):
                work = Work(self._impl.allreduce_async_device(x, out, key, stream), None)
        else:
            self._checked(key, "allreduce_async", lambda: _float_dtype(x, "Reducer.allreduce_async"))
            work = Work(self._impl.allreduce_async(_host(x), key), x)
        # The native call reads x and writes its output until it completes: keep both alive even
        # if the caller drops the Work.
        self._pending = [w for w in self._pending if not w.is_completed()] + [work]
        return work

    def allreduce_coalesced(self, xs, *, key: str) -> list:
        """Reduces a list of tensors fused into buckets of at most ``bucket_bytes`` (bucket j has
        key ``f"{key}#{j}"``); returns the results in order. The same list on every rank."""
        def as_list():
            if isinstance(xs, (str, bytes)) or not hasattr(xs, "__iter__"):
                raise InvalidArgument(f"Reducer.allreduce_coalesced: xs must be a list of arrays, got "
                                      f"{type(xs).__name__}")
            return list(xs)

        xs = self._checked(key, "allreduce_coalesced", as_list, bucket="#0")
        if self._device:
            args = self._checked(key, "allreduce_coalesced",
                                 lambda: [self._device_args(x, "allreduce_coalesced") for x in xs], bucket="#0")
            with _device_ctx(args[0][0]) if args else contextlib.nullcontext():
                self._impl.allreduce_coalesced_device([a[0] for a in args], [a[1] for a in args], key,
                                                      args[0][2] if args else 0)
            return [a[1] for a in args]
        outs = self._impl.allreduce_coalesced([_host(x) for x in xs], key)
        return [_like(o, x) for o, x in zip(outs, xs)]

    @property
    def stats(self) -> dict:
        """Per key: algorithm, bytes_sent, bytes_received, control_bytes, compress_seconds,
        comm_seconds, aggregate_seconds, calls."""
        return self._impl.stats()

    def state_dict(self) -> dict:
        return self._impl.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restores a state_dict() of the same rank and configuration (else MismatchError)."""
        self._impl.load_state_dict(state)

    def __del__(self):
        for work in getattr(self, "_pending", ()):
            try:
                work.wait()
            except Exception:  # noqa: BLE001 - its error belonged to a Work nobody waited for
                pass

    def __repr__(self) -> str:
        return (f"Reducer(rank={self._impl.rank}, size={self._impl.size}, compressor={self.compressor!r}, "
                f"feedback={self.feedback!r}, algorithm={self.algorithm!r})")
