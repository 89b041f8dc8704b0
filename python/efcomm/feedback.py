"""Error feedback (docs/algorithms.md): one object per worker per tensor slot, owning its state and
wrapping a compressor, and :class:`Aggregate`, the receiver's mirror.

``fb.step(v)`` consumes this round's vector (numpy array or torch CPU tensor, float32/float64,
read in place) and returns the :class:`efcomm.Message` the worker sends. ``fb.estimate`` and
``Aggregate.update`` return numpy **copies** (safe to keep across steps). State dicts are plain
``{"spec": str, "meta": {str: str}, "tensors": {str: numpy array}}`` that pickle and
``torch.save`` store as is; a restored object continues bit-identically.

On the GPU: a :class:`Feedback` whose ``step`` gets a CUDA array (torch CUDA tensor, CuPy array)
keeps its state in device memory from then on (efcomm's DeviceFeedback: the same update rules, one
fused pass per step) and takes CUDA arrays only; the state it had (a loaded state dict, earlier
host steps) moves with it. The message it returns is a host :class:`efcomm.Message`, ``estimate``
is a device copy in the input's array library, and ``state_dict`` keeps the same format (host
numpy arrays), so a GPU state loads on the CPU and the other way round. The GPU state owns its
own copy of the compressor: ``fb.compressor`` keeps the configuration, not the GPU's step counter.
"""

from __future__ import annotations

import numbers
import operator
from typing import Optional, Sequence, Union

import numpy as np

from . import _args, _core
from .compressors import (Compressor, Message, _check_step, _cuda_like, _cuda_stream, _device_ctx, _fmt, _host,
                          _is_cuda, _require_cuda, compressor as _compressor)
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
        self._device = None  # the DeviceFeedback, once a step got a CUDA array
        self._device_like = None
        self._loaded = False  # a state dict was loaded into the host state

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
        if self._device is not None:
            return self._device.initialized
        return self._impl.initialized

    @property
    def on_device(self) -> bool:
        """True once a step got a CUDA array: the state lives in device memory."""
        return self._device is not None

    def step(self, v, *, step: Optional[int] = None) -> Message:
        """Consumes v and returns the message to send. ``step`` picks the compressor's random
        draw (default: its counter). On an error (e.g. NonFiniteError) the state is unchanged.
        A CUDA v runs on the GPU (see the module documentation)."""
        step = _check_step(step, f"{type(self).__name__}.step")
        if _is_cuda(v):
            return self._step_cuda(v, step)
        if self._device is not None:
            raise InvalidArgument(f"{type(self).__name__}.step: this feedback's state is on the GPU since its first "
                                  "CUDA step; pass CUDA arrays (or load its state_dict() into a new Feedback to go on "
                                  "on the CPU)")
        return self._impl.step(_host(v), step)

    def _step_cuda(self, v, step):
        _require_cuda(f"{type(self).__name__}.step")
        v = _host(v)
        with _device_ctx(v):
            if self._device is None:
                device = _core._DeviceFeedback(self.spec, self._compressor.spec)
                if self._impl.initialized or self._loaded:
                    device.load_state_dict(self._impl.state_dict())
                self._device = device
                self._device_like = _cuda_like(v)
            msg = self._device.step(v, step, _cuda_stream(v))
        msg._like = _cuda_like(v)
        return msg

    @property
    def estimate(self):
        """A copy of the worker's estimate: g_i (EF21 family), h_i (EControl), the error e
        (EF14); None for ``none`` and before the first step. A numpy array, or on the GPU a
        device copy in the library of the arrays passed to ``step`` (torch or CuPy)."""
        if self._device is None:
            return self._impl.estimate()
        if self._impl.name == "none":
            return None
        view = self._device.estimate_view()
        if view is None:
            return None
        return _copy_device_view(view, self._device_like)

    def state_dict(self) -> dict:
        if self._device is not None:
            return self._device.state_dict()
        return self._impl.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restores a state_dict(); raises MismatchError if it belongs to another spec."""
        if self._device is not None:
            self._device.load_state_dict(state)
            return
        self._impl.load_state_dict(state)
        self._loaded = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, compressor={self._compressor.spec!r})"


_TYPESTR = {"float32": "<f4", "float64": "<f8", "float16": "<f2"}


class _DeviceView:
    """A borrowed device array (pointer, shape, dtype) exposed through __cuda_array_interface__
    (v3). It is only read (copied), but it is exported as writable: torch rejects read-only
    interfaces ("the read only flag is not supported"). "stream": None tells the consumer that no
    synchronization is needed (the step that wrote the estimate synchronized its stream)."""

    def __init__(self, ptr: int, shape: tuple, dtype: str):
        if dtype not in _TYPESTR:
            raise InvalidArgument(f"estimate: a {dtype} device estimate cannot be exported")
        self.__cuda_array_interface__ = {"data": (int(ptr), False), "shape": tuple(int(s) for s in shape),
                                         "typestr": _TYPESTR[dtype], "strides": None, "version": 3, "stream": None}


def _copy_device_view(view, like):
    """A copy, made by the array library `like` names, of the device array `view`."""
    holder = _DeviceView(*view)
    kind, device = like if like is not None else ("cuda", None)
    if kind == "torch":
        import torch
        return torch.as_tensor(holder, device=device).clone()
    if kind == "cupy":
        import cupy
        with cupy.cuda.Device(device):
            return cupy.array(holder, copy=True)
    raise InvalidArgument("estimate: the feedback's state is on the GPU and its inputs came from an unknown array "
                          "library; use state_dict() for a host copy")


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
        if not isinstance(n, numbers.Integral) or not 1 <= n < 1 << 31:
            raise InvalidArgument(f"Aggregate: n must be an int in [1, 2^31), got {n!r}")
        try:
            shape = [operator.index(dim)] if dim is not None else [operator.index(s) for s in shape]
        except TypeError:
            raise InvalidArgument(f"Aggregate: dim must be an int, shape a sequence of ints; got "
                                  f"{dim if dim is not None else shape!r}") from None
        if any(not 0 <= s <= 1 << 56 for s in shape):
            raise InvalidArgument(f"Aggregate: sizes must be in [0, 2^56], got {shape}")
        self._broadcast = None if broadcast is None else _as_compressor(broadcast)
        if not isinstance(spec, str):
            raise InvalidArgument(f"Aggregate: spec must be a feedback spec string, got {spec!r}")
        self._impl = _core._Aggregate(spec, int(n), [] if weights is None else _args.floats(weights, "Aggregate: weights"),
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

    @property
    def additive(self) -> bool:
        """True for the EF21 family and EControl (``update`` adds to g), False for ef14 and none
        (``update`` replaces g)."""
        return self._impl.additive

    def update(self, messages: Sequence[Optional[Message]]) -> np.ndarray:
        """Folds in one round and returns a copy of the estimate (b with broadcast, else g)."""
        if isinstance(messages, Message) or not hasattr(messages, "__iter__"):
            raise InvalidArgument(f"Aggregate.update: messages must be a list (one Message or None per worker), "
                                  f"got {type(messages).__name__}")
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
