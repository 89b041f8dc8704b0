"""Gradient compressors.

Build one from a spec string with :func:`efcomm.compressor` (``"topk:ratio=0.01"``) or from its
class (``TopK(ratio=0.01)``). Inputs are contiguous float32/float64/float16/bfloat16 numpy
arrays or torch CPU tensors of any shape, read in place (buffer protocol or DLPack).

CUDA arrays (torch CUDA tensors, CuPy arrays, anything exporting DLPack with a CUDA device or
``__cuda_array_interface__``) are read in place on the GPU, on the array library's current
stream, when efcomm is built with CUDA and a GPU is present (else :class:`BackendUnavailable`).
The :class:`Message` that ``compress`` returns is then a **host** message (the device message is
copied back): the same wire bytes, decodable anywhere. ``decompress`` into a CUDA array (``out=``,
or by default for a message compressed from one: a new array of the same library on the same
device) copies the message to the device and decodes it there, writing ``out`` in place.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
from typing import Optional

import numpy as np

from . import _args, _core
from .errors import BackendUnavailable, Error, InvalidArgument, _one_line

Message = _core.Message

_NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _host(x):
    """x as the native code reads it: a torch tensor that requires grad is detached (a view)."""
    return x.detach() if _is_torch(x) and getattr(x, "requires_grad", False) else x


# DLPack device types of CUDA memory: kDLCUDA, kDLCUDAManaged.
_DL_CUDA_DEVICES = (2, 13)


def _library(x) -> str:
    return type(x).__module__.split(".", 1)[0]


def _is_cuda(x) -> bool:
    """True for a CUDA array: a torch CUDA tensor, or an object exporting CUDA memory through
    DLPack (``__dlpack_device__``) or ``__cuda_array_interface__``. Host arrays are False."""
    if isinstance(x, (np.ndarray, Message)):
        return False
    if _is_torch(x):
        return bool(getattr(x, "is_cuda", False))
    dev = getattr(x, "__dlpack_device__", None)
    if callable(dev):
        try:
            return int(dev()[0]) in _DL_CUDA_DEVICES
        except Exception:  # noqa: BLE001 - a broken exporter: let the native parser report it
            pass
    try:
        return hasattr(x, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001 - a property that raises something else
        return False


def _require_cuda(what: str) -> None:
    """Raises BackendUnavailable (before any other check) when the GPU path cannot run here."""
    info = _core._cuda_info()
    if not info["available"]:
        raise BackendUnavailable(f"{what}: got a CUDA array, but the GPU path is unavailable: {info['reason']}. "
                                 "Pass a host (CPU) array, or use a build of efcomm with CUDA on a machine with a GPU")


def _cuda_stream(x) -> int:
    """The cudaStream_t (as an int) the GPU work on x goes to: the array library's current stream
    (torch, CuPy), the producer's stream of ``__cuda_array_interface__`` v3, else 0 (legacy default)."""
    if _is_torch(x):
        import torch
        return int(torch.cuda.current_stream(x.device).cuda_stream)
    if _library(x) == "cupy":
        import cupy
        return int(cupy.cuda.get_current_stream().ptr)
    try:
        stream = x.__cuda_array_interface__.get("stream")
    except Exception:  # noqa: BLE001 - no interface (DLPack only)
        stream = None
    return int(stream) if isinstance(stream, int) and stream > 0 else 0


def _device_ctx(x):
    """Makes x's device current for the native call (torch and CuPy; else unchanged)."""
    if _is_torch(x):
        import torch
        return torch.cuda.device(x.device)
    if _library(x) == "cupy":
        return x.device
    return contextlib.nullcontext()


def _cuda_like(x):
    """What decompress allocates for a message compressed from the CUDA array x."""
    if _is_torch(x):
        return ("torch", x.device)
    if _library(x) == "cupy":
        return ("cupy", x.device.id)
    return ("cuda", None)


def _empty_like_message(msg: Message, like: Optional[str]):
    """Allocates the output of decompress: torch if the input was torch (or for bfloat16, which
    numpy lacks), numpy otherwise. A shape that does not fit in memory (a sparse message may
    stand for any number of elements) is an ef.Error, not the allocator's exception."""
    try:
        return _allocate_like_message(msg, like)
    except (MemoryError, RuntimeError) as e:  # torch's CPU allocator raises RuntimeError
        if isinstance(e, Error) or (not isinstance(e, MemoryError) and "memory" not in str(e).lower()):
            raise
        numel = math.prod(msg.shape)
        raise Error(f"decompress: the message's {msg.dtype} {list(msg.shape)} ({numel} elements) does not fit in "
                    f"memory ({_one_line(e)}); pass out= (a buffer of that shape), or reject messages of "
                    "unexpected shapes before decoding them") from None


def _allocate_like_message(msg: Message, like: Optional[str]):
    if isinstance(like, tuple):  # compressed from a CUDA array: the same library and device
        kind, device = like
        if kind == "torch":
            import torch
            return torch.empty(msg.shape, dtype=getattr(torch, msg.dtype), device=device)
        if kind == "cupy":
            import cupy
            with cupy.cuda.Device(device):
                return cupy.empty(msg.shape, dtype=msg.dtype)
        raise InvalidArgument("decompress: the message was compressed from a CUDA array of an unknown library; "
                              "pass out= (a CUDA array of the message's shape and dtype)")
    if like == "torch" or msg.dtype == "bfloat16":
        try:
            import torch
        except ImportError:
            raise InvalidArgument(
                f"decompress: a {msg.dtype} output needs torch; pass out= with a preallocated buffer") from None
        return torch.empty(msg.shape, dtype=getattr(torch, msg.dtype))
    return np.empty(msg.shape, dtype=_NUMPY_DTYPES[msg.dtype])


def _check_out_shape(msg: Message, out) -> None:
    """numpy's rule for ``out=``: the shape must match exactly (dtype is checked natively)."""
    shape = getattr(out, "shape", None)
    if shape is None:
        try:
            shape = out.__cuda_array_interface__["shape"]
        except Exception:  # noqa: BLE001 - not an array at all
            raise InvalidArgument(f"decompress: out must be an array (numpy, torch, CuPy) of the message's shape "
                                  f"{tuple(msg.shape)} and dtype {msg.dtype}, got {type(out).__name__}") from None
    shape = tuple(shape)
    if shape != tuple(msg.shape):
        raise InvalidArgument(f"decompress: out has shape {shape}, the message holds {tuple(msg.shape)}")


class Compressor:
    """Base class: wraps a native compressor built from a spec string."""

    #: registry name; subclasses set it
    name: str = ""
    #: parameter names in spec order (for the keyword constructor)
    _params: tuple = ()

    def __init__(self, **params):
        parts = [f"{k}={_fmt(v)}" for k, v in params.items() if v is not None]
        spec = self.name + (":" + ",".join(parts) if parts else "")
        self._impl = _core.make_compressor(spec)

    @classmethod
    def _wrap(cls, impl) -> "Compressor":
        obj = cls.__new__(cls)
        obj._impl = impl
        return obj

    @property
    def spec(self) -> str:
        """Canonical spec string; ``efcomm.compressor(c.spec)`` rebuilds an equal compressor."""
        return self._impl.spec

    @property
    def biased(self) -> bool:
        return self._impl.biased

    @property
    def randomized(self) -> bool:
        return self._impl.randomized

    def alpha(self, d: int) -> float:
        """Contraction constant: E||C(x)-x||^2 <= (1-alpha)||x||^2 (scaled version if unbiased)."""
        return self._impl.alpha(_args.integer(d, f"{self._impl.name}.alpha: d (the dimension)", 0))

    def omega(self, d: int) -> Optional[float]:
        """Variance constant of an unbiased compressor, None if biased."""
        return self._impl.omega(_args.integer(d, f"{self._impl.name}.omega: d (the dimension)", 0))

    def wire_bytes(self, d, dtype: str = "float32") -> int:
        """Bytes on the wire for a 1-d input of d elements, or for an input of shape d (a tuple):
        exact, or an upper bound where data-dependent (TopK's indices)."""
        shape = [d] if isinstance(d, numbers.Integral) else d
        try:
            shape = [operator.index(s) for s in shape]
        except TypeError:
            raise InvalidArgument(f"{self._impl.name}.wire_bytes: d must be an int or a shape (a tuple of ints), "
                                  f"got {d!r}") from None
        if any(not 0 <= s <= 1 << 56 for s in shape):
            raise InvalidArgument(f"{self._impl.name}.wire_bytes: sizes must be in [0, 2^56], got {d!r}")
        return self._impl.wire_bytes(shape, str(dtype))

    def compress(self, x, *, step: Optional[int] = None) -> Message:
        """Compresses x (read in place). ``step`` picks the random draw; default: a counter.
        A CUDA array is compressed on the GPU; the message returned is a host copy."""
        step = _check_step(step, f"{self._impl.name}.compress")
        if _is_cuda(x):
            _require_cuda(f"{self._impl.name}.compress")
            x = _host(x)
            with _device_ctx(x):
                msg = self._impl.compress_cuda(x, step, _cuda_stream(x))
            msg._like = _cuda_like(x)
            return msg
        msg = self._impl.compress(_host(x), step)
        msg._like = "torch" if _is_torch(x) else "numpy"
        return msg

    def decompress(self, msg: Message, *, out=None):
        """Decodes msg into a new array of the input's shape and dtype, or into ``out`` (written in
        place; a CUDA ``out`` is decoded on the GPU)."""
        if not isinstance(msg, Message):
            raise InvalidArgument(f"decompress expects an efcomm.Message, got {type(msg).__name__}; "
                                  "use efcomm.Message.from_bytes(buf) for raw bytes")
        return _decode(msg, out, self._impl.decompress_into, self._impl.decompress_into_cuda,
                       f"{self._impl.name}.decompress")

    def state_dict(self) -> dict:
        """The step counter (and PowerSGD's warm start): a restored compressor continues
        bit-identically. Plain dict of str and numpy arrays."""
        return self._impl.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restores a state_dict(); raises MismatchError if it was saved by another spec."""
        self._impl.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Compressor) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)


def _check_step(step, what: str) -> Optional[int]:
    """step as the native calls take it: None, or an int in [0, 2**64)."""
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= int(step) < 2 ** 64:
        raise InvalidArgument(f"{what}: step must be None or an int in [0, 2**64), got {step!r}")
    return int(step)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class Identity(Compressor):
    """No compression: every value travels (the baseline)."""
    name = "identity"

    def __init__(self):
        super().__init__()


class Cast(Compressor):
    """Round to bfloat16 or float16; 2 bytes per element travel. Biased."""
    name = "cast"

    def __init__(self, dtype: str = "bf16"):
        super().__init__(dtype=dtype)


class TopK(Compressor):
    """Keep the k largest |x_j| (ties: lower index wins). Contractive, alpha = k/d."""
    name = "topk"

    def __init__(self, ratio: Optional[float] = None, k: Optional[int] = None):
        super().__init__(ratio=ratio, k=k)


class RandK(Compressor):
    """Keep k coordinates drawn from (seed, step); only the values travel. Scaled by d/k it is
    unbiased with omega = d/k - 1; unscaled it is contractive with alpha = k/d in expectation."""
    name = "randk"

    def __init__(self, ratio: Optional[float] = None, k: Optional[int] = None, seed: int = 0,
                 scaled: bool = True):
        super().__init__(ratio=ratio, k=k, seed=seed, scaled=scaled)


class ScaledSign(Compressor):
    """(||x||_1/d) sign(x): one bit per element plus a scale."""
    name = "sign"

    def __init__(self):
        super().__init__()


class QSGD(Compressor):
    """Unbiased random dithering on s levels of the 2-norm (Alistarh et al. 2017)."""
    name = "qsgd"

    def __init__(self, levels: int = 16, seed: int = 0):
        super().__init__(levels=levels, seed=seed)


class Natural(Compressor):
    """Unbiased stochastic rounding to powers of two (Horvath et al. 2019), omega = 1/8."""
    name = "natural"

    def __init__(self, seed: int = 0):
        super().__init__(seed=seed)


class BlockQuant(Compressor):
    """Per-block min-max quantization to 2, 4 or 8 bits. Biased."""
    name = "quant"

    def __init__(self, bits: int = 8, block: int = 256):
        super().__init__(bits=bits, block=block)


class PowerSGD(Compressor):
    """Rank-r approximation by one warm-started power iteration (Vogels et al. 2019)."""
    name = "powersgd"

    def __init__(self, rank: int = 4, seed: int = 0):
        super().__init__(rank=rank, seed=seed)


_CLASSES = {c.name: c for c in (Identity, Cast, TopK, RandK, ScaledSign, QSGD, Natural, BlockQuant, PowerSGD)}


def compressor(spec: str) -> Compressor:
    """Builds a compressor from a spec string such as ``"topk:ratio=0.01"``."""
    if isinstance(spec, Compressor):
        return spec
    if not isinstance(spec, str):
        raise InvalidArgument(f"compressor spec must be a string, got {type(spec).__name__}")
    impl = _core.make_compressor(spec)
    return _CLASSES.get(impl.name, Compressor)._wrap(impl)


def _decode(msg: Message, out, host_fn, cuda_fn, what: str):
    """decompress's common part: allocates out when None, checks its shape, decodes on the host
    or, for a CUDA out, on the GPU. Returns out."""
    if out is not None and _is_cuda(out):
        _require_cuda(what)
    if out is None:
        out = _empty_like_message(msg, getattr(msg, "_like", None))
    else:
        _check_out_shape(msg, out)
    if _is_cuda(out):
        with _device_ctx(out):
            cuda_fn(msg, out, _cuda_stream(out))
    else:
        host_fn(msg, out)
    return out


def decompress(msg: Message, *, out=None):
    """Decodes any message (the compressor is named in its header) into a new array or ``out``
    (a CUDA ``out`` is decoded on the GPU)."""
    if not isinstance(msg, Message):
        raise InvalidArgument(f"decompress expects an efcomm.Message, got {type(msg).__name__}; "
                              "use efcomm.Message.from_bytes(buf) for raw bytes")
    return _decode(msg, out, _core.decompress_into, _core.decompress_into_cuda, "decompress")


__all__ = ["Compressor", "Message", "compressor", "decompress"] + [c.__name__ for c in _CLASSES.values()]
