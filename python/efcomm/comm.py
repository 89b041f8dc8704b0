"""Collectives (SPEC.md, "Collectives"): :class:`Communicator`, a group of ranks that exchange
bytes, and :class:`Reducer`, compressed allreduce with error feedback whose result is
bit-identical on every rank.

Communicators come from :func:`efcomm.testing.run_ranks` (in-process ranks on threads) or
:meth:`Communicator.mpi`. Every blocking native call releases the GIL.
"""

from __future__ import annotations

from typing import Optional, Sequence

from . import _core
from .compressors import _host, _is_torch
from .errors import BackendUnavailable, InvalidArgument

__all__ = ["Communicator", "Reducer", "Work"]

_ALGORITHMS = ("allgather", "reduce_scatter", "allreduce", "auto")


class Communicator:
    """One rank's handle on a group of ``size`` ranks (wraps a native backend)."""

    def __init__(self, backend):
        if not isinstance(backend, _core._Backend):
            raise InvalidArgument(f"Communicator: expected a native backend, got {type(backend).__name__}")
        self._backend = backend

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
        handle = comm.handle if hasattr(comm, "handle") else MPI._handleof(comm)
        return cls(_core._mpi_backend(int(handle), library, None if timeout is None else float(timeout)))

    @property
    def rank(self) -> int:
        return self._backend.rank

    @property
    def size(self) -> int:
        return self._backend.size

    def barrier(self, timeout: Optional[float] = None) -> None:
        """Returns once every rank has entered the barrier."""
        self._backend.barrier(timeout)

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"


def _like(out, x):
    """The native result as x's kind of array: numpy stays numpy, torch gets a torch tensor."""
    if _is_torch(x):
        import torch
        return torch.from_numpy(out).to(device=x.device)
    return out


class Work:
    """An asynchronous :meth:`Reducer.allreduce_async` call (PyTorch's ``Work``).

    ``wait(timeout=None)`` blocks until the call has completed and returns its result, or raises
    its error; with a timeout that runs out first it raises CollectiveTimeout and the call goes on.
    """

    def __init__(self, native, x):
        self._native = native
        self._x = x

    def wait(self, timeout: Optional[float] = None):
        return _like(self._native.wait(timeout), self._x)

    def is_completed(self) -> bool:
        return self._native.completed()


class Reducer:
    """Compressed allreduce with per-key error-feedback state; one object per rank.

    ``allreduce(x, key=...)`` returns the aggregated estimate as a new array of x's type
    (numpy or torch CPU), shape and dtype (float32/float64). All ranks call it with the same
    keys, shapes and dtypes in the same order; a disagreement raises MismatchError on every rank.
    ``weights`` (one per rank) default to 1/size each: with ``identity`` and ``none`` the result
    is the mean.

    ``algorithm``: ``allgather``, ``reduce_scatter``, ``allreduce`` (identity and RandK, whose
    payloads add) or ``auto`` (per key at its first call, the cheapest under an alpha-beta model
    of the links measured by that call; the choice is in ``stats[key]["algorithm"]``).
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
        if not isinstance(bucket_bytes, int) or bucket_bytes <= 0:
            raise InvalidArgument(f"Reducer: bucket_bytes must be a positive int, got {bucket_bytes!r}")
        self._comm = comm
        self._pending: list = []
        self._impl = _core._Reducer(comm._backend, compressor, feedback, algorithm,
                                    [] if weights is None else [float(w) for w in weights], bucket_bytes)

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

    @staticmethod
    def _check_key(key, what):
        if not isinstance(key, str):
            raise InvalidArgument(f"Reducer.{what}: key must be a string, got {type(key).__name__}")

    def allreduce(self, x, *, key: str):
        """The aggregated estimate of every rank's x, bit-identical on every rank."""
        self._check_key(key, "allreduce")
        return _like(self._impl.allreduce(_host(x), key), x)

    def allreduce_async(self, x, *, key: str) -> Work:
        """Starts :meth:`allreduce` on the reducer's worker thread; calls run in the order made.
        x must not be modified until the Work has completed."""
        self._check_key(key, "allreduce_async")
        work = Work(self._impl.allreduce_async(_host(x), key), x)
        # The native call reads x and writes its output until it completes: keep both alive even
        # if the caller drops the Work.
        self._pending = [w for w in self._pending if not w.is_completed()] + [work]
        return work

    def allreduce_coalesced(self, xs, *, key: str) -> list:
        """Reduces a list of tensors fused into buckets of at most ``bucket_bytes`` (bucket j has
        key ``f"{key}#{j}"``); returns the results in order. The same list on every rank."""
        self._check_key(key, "allreduce_coalesced")
        xs = list(xs)
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
