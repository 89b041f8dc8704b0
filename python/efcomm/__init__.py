"""efcomm: communication-efficient distributed training.

Gradient compressors with a versioned wire format, error feedback, compressed collectives,
traffic planning and fault detection, on a C++17 core.
"""

from . import _core
from .errors import (BackendUnavailable, CollectiveTimeout, CorruptMessageError, Error,
                     InvalidArgument, MismatchError, NonFiniteError)
from . import compressors
from .compressors import Compressor, Message, compressor
from . import feedback, sim
from .comm import Communicator, Reducer, Work
from . import testing

__version__ = _core.build_info()["version"]


def build_info() -> dict:
    """The build configuration: version, cuda, nccl, mpi, simd, openmp, threads, compiler."""
    return _core.build_info()


__all__ = ["__version__", "build_info", "compressor", "compressors", "feedback", "sim", "testing", "Compressor", "Message",
           "Communicator", "Reducer", "Work",
           "Error", "InvalidArgument", "NonFiniteError", "CorruptMessageError", "MismatchError",
           "CollectiveTimeout", "BackendUnavailable"]
