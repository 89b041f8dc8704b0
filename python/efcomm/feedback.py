"""Error feedback (ALGORITHMS.md): one object per worker per tensor slot, owning its state and
wrapping a compressor, and :class:`Aggregate`, the receiver's mirror.

``fb.step(v)`` consumes this round's vector (numpy array or torch CPU tensor, float32/float64,
read in place) and returns the :class:`efcomm.Message` the worker sends. ``fb.estimate`` and
``Aggregate.update`` return numpy **copies** (safe to keep across steps). State dicts are plain
``{"spec": str, "meta": {str: str}, "tensors": {str: numpy array}}`` that pickle and
``torch.save`` store as is; a restored object continues bit-identically.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from . import _core
from .compressors import Compressor, Message, _fmt, _host, compressor as _compressor
from .errors import InvalidArgument

__all__ = ["Feedback", "NoFeedback", "EF14", "EF21", "EF21W", "EF21SGDM", "EControl", "Aggregate", "make",
           "names"]


def _with_params(spec: str, params: dict) -> str:
    parts = [f"{k}={_fmt(v)}" for k, v in params.items() if v is not None]
    if not parts:
        return spec
    return spec + ("," if ":" in spec else ":") + ",".join(parts)


def _as_compressor(c: Union[Compressor, str]) -> Compressor:
    if isinstance(c, Compressor):
        return c
    if isinstance(c, str):
        return _compressor(c)
    raise InvalidArgument(f"compressor must be an efcomm.Compressor or a spec string, got {type(c).__name__}")


class Feedback:
    """Base class of the error-feedback methods (build one with :func:`make` or a subclass)."""

    #: registry name; subclasses set it
    name: str = ""

    def __init__(self, compressor: Union[Compressor, str], **params):
        self._init(_with_params(self.name, params), compressor)

    def _init(self, spec: str, compressor) -> None:
        self._compressor = _as_compressor(compressor)
        self._impl = _core.make_feedback(spec, self._compressor._impl)

    @property
    def spec(self) -> str:
        """Canonical spec string with every parameter (``"ef21:init=full"``)."""
        return self._impl.spec

    @property
    def compressor(self) -> Compressor:
        """The wrapped compressor (its step counter and warm start belong to this state)."""
        return self._compressor

    @property
    def initialized(self) -> bool:
        """True once a step succeeded (the shape and dtype are fixed)."""
        return self._impl.initialized

    def step(self, v, *, step: Optional[int] = None) -> Message:
        """Consumes v and returns the message to send. ``step`` picks the compressor's random
        draw (default: its counter). On an error (e.g. NonFiniteError) the state is unchanged."""
        return self._impl.step(_host(v), step)

    @property
    def estimate(self) -> Optional[np.ndarray]:
        """A copy of the worker's estimate: g_i (EF21 family), h_i (EControl), the error e
        (EF14); None for ``none`` and before the first step."""
        return self._impl.estimate()

    def state_dict(self) -> dict:
        return self._impl.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restores a state_dict(); raises MismatchError if it belongs to another spec."""
        self._impl.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, compressor={self._compressor.spec!r})"


class NoFeedback(Feedback):
    """Plain compression: sends C(v)."""
    name = "none"

    def __init__(self, compressor):
        super().__init__(compressor)


class EF14(Feedback):
    """Classic error feedback: p = v + e; send C(p); e = p - C(p)."""
    name = "ef14"

    def __init__(self, compressor):
        super().__init__(compressor)


class EF21(Feedback):
    """EF21: g += C(v - g). ``init="full"`` sends the first vector uncompressed."""
    name = "ef21"

    def __init__(self, compressor, init: str = "full"):
        super().__init__(compressor, init=init)


class EF21W(Feedback):
    """EF21-W: g += C(v / (n w) - g), with this worker's weight w = L_i / sum_j L_j."""
    name = "ef21w"

    def __init__(self, compressor, weight: float, n: int, init: str = "full"):
        super().__init__(compressor, weight=weight, n=n, init=init)


class EF21SGDM(Feedback):
    """EF21-SGDM: u = (1 - momentum) u + momentum v (u = v at the first step); g += C(u - g)."""
    name = "ef21sgdm"

    def __init__(self, compressor, momentum: float = 0.1, init: str = "full"):
        super().__init__(compressor, momentum=momentum, init=init)


class EControl(Feedback):
    """EControl: Delta = C(eta e + v - h); e += v - h - Delta; h += Delta."""
    name = "econtrol"

    def __init__(self, compressor, eta: float = 0.1, init: str = "full"):
        super().__init__(compressor, eta=eta, init=init)


_CLASSES = {c.name: c for c in (NoFeedback, EF14, EF21, EF21W, EF21SGDM, EControl)}


def names() -> list:
    """The feedback method names."""
    return list(_core.feedback_names())


def make(spec: str, compressor: Union[Compressor, str], **params) -> Feedback:
    """Builds a feedback method from a spec (``"ef21:init=compressed"``); keyword ``params``
    are appended to the spec's parameters."""
    if not isinstance(spec, str):
        raise InvalidArgument(f"feedback spec must be a string, got {type(spec).__name__}")
    full = _with_params(spec, params)
    impl_cls = _CLASSES.get(full.split(":", 1)[0], Feedback)
    obj = impl_cls.__new__(impl_cls)
    obj._init(full, compressor)
    return obj


class Aggregate:
    """The receiver's mirror of n workers' estimates for one tensor slot.

    ``update(messages)`` takes n messages (None for a worker that did not participate) and
    returns a copy of the aggregate: for the EF21 family and EControl g += sum w_i decoded
    (EF21-PP: absent workers keep their share), for ef14 and none g = sum w_i decoded over the
    present workers (weights default to 1/n, the mean; absent workers contribute nothing).
    ``broadcast`` (a compressor or spec) enables EF21-BC: the aggregate sends C_M(g - b)
    (``last_broadcast``), sets b += C_M(g - b) and returns b; a worker mirrors b with
    ``Aggregate("ef21", 1, weights=[1], ...)`` fed ``last_broadcast``.
    """

    def __init__(self, spec: str, n: int, weights: Optional[Sequence[float]] = None, dim: Optional[int] = None,
                 *, shape: Optional[Sequence[int]] = None, dtype: str = "float32", broadcast=None):
        if (dim is None) == (shape is None):
            raise InvalidArgument("Aggregate: give exactly one of dim and shape")
        shape = [int(dim)] if dim is not None else [int(s) for s in shape]
        self._broadcast = None if broadcast is None else _as_compressor(broadcast)
        self._impl = _core._Aggregate(spec, int(n), [] if weights is None else [float(w) for w in weights],
                                      shape, dtype if isinstance(dtype, str) else np.dtype(dtype).name,
                                      None if self._broadcast is None else self._broadcast._impl)

    @property
    def spec(self) -> str:
        return self._impl.spec

    @property
    def n(self) -> int:
        return self._impl.n

    @property
    def weights(self) -> list:
        return list(self._impl.weights)

    @property
    def broadcast(self) -> Optional[Compressor]:
        return self._broadcast

    def update(self, messages: Sequence[Optional[Message]]) -> np.ndarray:
        """Folds in one round and returns a copy of the estimate (b with broadcast, else g)."""
        return self._impl.update(list(messages))

    @property
    def estimate(self) -> np.ndarray:
        return self._impl.estimate()

    @property
    def last_broadcast(self) -> Optional[Message]:
        """The last C_M(g - b) (EF21-BC); None without broadcast or before the first update."""
        return self._impl.last_broadcast()

    def state_dict(self) -> dict:
        return self._impl.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._impl.load_state_dict(state)

    def __repr__(self) -> str:
        return f"Aggregate({self.spec!r}, n={self.n})"
