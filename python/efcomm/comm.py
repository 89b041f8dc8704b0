"""Collectives (SPEC.md, "Collectives"): :class:`Communicator`, a group of ranks that exchange
bytes, and :class:`Reducer`, compressed allreduce with error feedback whose result is
bit-identical on every rank.

Communicators come from :func:`efcomm.testing.run_ranks` (in-process ranks on threads) or
:meth:`Communicator.mpi`. Every blocking native call releases the GIL.
"""

from __future__ import annotations

from typing import Optional, Sequence

from . import _core
from .errors import BackendUnavailable, InvalidArgument

__all__ = ["Communicator", "Reducer"]

_ALGORITHMS = ("allgather", "reduce_scatter", "allreduce", "auto")


class Communicator:
    """One rank's handle on a group of ``size`` ranks (wraps a native backend)."""

    def __init__(self, backend):
        if not isinstance(backend, _core._Backend):
            raise InvalidArgument(f"Communicator: expected a native backend, got {type(backend).__name__}")
        self._backend = backend

    @classmethod
    def mpi(cls, comm=None) -> "Communicator":
        """Wraps an mpi4py communicator (default ``MPI.COMM_WORLD``)."""
        raise BackendUnavailable("MPI backend not built yet")

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


class Reducer:
    """Compressed allreduce with per-key error-feedback state; one object per rank.

    ``allreduce(x, key=...)`` returns the aggregated estimate as a new array of x's type
    (numpy or torch CPU), shape and dtype (float32/float64). All ranks call it with the same
    keys, shapes and dtypes in the same order; a disagreement raises MismatchError on every rank.
    ``weights`` (one per rank) default to 1/size each: with ``identity`` and ``none`` the result
    is the mean.
    """

    def __init__(self, comm: Communicator, compressor: str = "topk:ratio=0.01", feedback: str = "ef21",
                 algorithm: str = "auto", weights: Optional[Sequence[float]] = None):
        if not isinstance(comm, Communicator):
            raise InvalidArgument(f"Reducer: comm must be an efcomm.Communicator, got {type(comm).__name__}")
        if algorithm not in _ALGORITHMS:
            raise InvalidArgument(f"Reducer: unknown algorithm {algorithm!r}; expected one of {_ALGORITHMS}")
        # Only allgather exists in the native core so far; auto has nothing else to choose.
        if algorithm not in ("allgather", "auto"):
            raise InvalidArgument(f"Reducer: algorithm {algorithm!r} is not implemented yet (use 'allgather')")
        compressor = getattr(compressor, "spec", compressor)
        feedback = getattr(feedback, "spec", feedback)
        if not isinstance(compressor, str) or not isinstance(feedback, str):
            raise InvalidArgument("Reducer: compressor and feedback must be spec strings")
        self._comm = comm
        self._impl = _core._Reducer(comm._backend, compressor, feedback,
                                    [] if weights is None else [float(w) for w in weights])

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

    def allreduce(self, x, *, key: str):
        """The aggregated estimate of every rank's x, bit-identical on every rank."""
        if not isinstance(key, str):
            raise InvalidArgument(f"Reducer.allreduce: key must be a string, got {type(key).__name__}")
        is_torch = type(x).__module__.startswith("torch")
        if is_torch and x.requires_grad:
            x = x.detach()
        out = self._impl.allreduce(x, key)
        if is_torch:
            import torch
            return torch.from_numpy(out).to(device=x.device)
        return out

    @property
    def stats(self) -> dict:
        """Per key: bytes_sent, bytes_received, control_bytes, compress_seconds, comm_seconds,
        aggregate_seconds, calls."""
        return self._impl.stats()

    def state_dict(self) -> dict:
        return self._impl.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restores a state_dict() of the same rank and configuration (else MismatchError)."""
        self._impl.load_state_dict(state)

    def __repr__(self) -> str:
        return (f"Reducer(rank={self._impl.rank}, size={self._impl.size}, compressor={self.compressor!r}, "
                f"feedback={self.feedback!r}, algorithm={self.algorithm!r})")
