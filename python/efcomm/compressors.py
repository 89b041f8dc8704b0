"""Gradient compressors.

Build one from a spec string with :func:`efcomm.compressor` (``"topk:ratio=0.01"``) or from its
class (``TopK(ratio=0.01)``). Inputs are contiguous float32/float64/float16/bfloat16 numpy
arrays or torch CPU tensors of any shape, read in place (buffer protocol or DLPack).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import _core
from .errors import InvalidArgument

Message = _core.Message

_NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _host(x):
    """x as the native code reads it: a torch tensor that requires grad is detached (a view)."""
    return x.detach() if _is_torch(x) and getattr(x, "requires_grad", False) else x


def _empty_like_message(msg: Message, like: Optional[str]):
    """Allocates the output of decompress: torch if the input was torch (or for bfloat16, which
    numpy lacks), numpy otherwise."""
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
    shape = tuple(getattr(out, "shape", ()))
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
        return self._impl.alpha(int(d))

    def omega(self, d: int) -> Optional[float]:
        """Variance constant of an unbiased compressor, None if biased."""
        return self._impl.omega(int(d))

    def wire_bytes(self, d: int, dtype: str = "float32") -> int:
        """Bytes on the wire for d elements (exact, or an upper bound where data-dependent)."""
        return self._impl.wire_bytes(int(d), str(dtype))

    def compress(self, x, *, step: Optional[int] = None) -> Message:
        """Compresses x (read in place). ``step`` picks the random draw; default: a counter."""
        msg = self._impl.compress(_host(x), step)
        msg._like = "torch" if _is_torch(x) else "numpy"
        return msg

    def decompress(self, msg: Message, *, out=None):
        """Decodes msg into a new array of the input's shape and dtype, or into ``out``."""
        if not isinstance(msg, Message):
            raise InvalidArgument(f"decompress expects an efcomm.Message, got {type(msg).__name__}; "
                                  "use efcomm.Message.from_bytes(buf) for raw bytes")
        if out is None:
            out = _empty_like_message(msg, getattr(msg, "_like", None))
        else:
            _check_out_shape(msg, out)
        self._impl.decompress_into(msg, out)
        return out

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


def decompress(msg: Message, *, out=None):
    """Decodes any message (the compressor is named in its header)."""
    if out is None:
        out = _empty_like_message(msg, getattr(msg, "_like", None))
    else:
        _check_out_shape(msg, out)
    _core.decompress_into(msg, out)
    return out


__all__ = ["Compressor", "Message", "compressor", "decompress"] + [c.__name__ for c in _CLASSES.values()]
