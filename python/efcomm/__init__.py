"""efcomm: communication-efficient distributed training.

Gradient compressors with a versioned wire format, error feedback, compressed collectives,
traffic planning and fault detection, on a C++17 core.
"""

from . import _args, _core
from .errors import (BackendUnavailable, CollectiveTimeout, CorruptMessageError, Error,
                     InvalidArgument, MismatchError, NonFiniteError)
from . import compressors
from .compressors import Compressor, Message, compressor
from . import feedback, sim
from .comm import Communicator, Reducer, Work
from . import health, plan, testing

__version__ = _core.build_info()["version"]


def get_num_threads() -> int:
    """Threads of efcomm's kernels when called from this thread."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Sets the threads of efcomm's kernels called from this thread (as OpenMP's
    omp_set_num_threads: each thread has its own setting; OMP_NUM_THREADS sets the default)."""
    _core.set_num_threads(_args.integer(n, "set_num_threads: n", 1, 1 << 16))


def build_info() -> dict:
    """The build configuration: version, cuda, nccl, mpi, simd, openmp, threads, compiler."""
    return _core.build_info()


__all__ = ["__version__", "build_info", "get_num_threads", "set_num_threads", "compressor", "compressors", "feedback", "health", "plan", "sim", "testing", "Compressor", "Message",
           "Communicator", "Reducer", "Work",
           "Error", "InvalidArgument", "NonFiniteError", "CorruptMessageError", "MismatchError",
           "CollectiveTimeout", "BackendUnavailable"]


def __getattr__(name: str):
    # ef.torch imports torch, an optional dependency: only when used.
    if name == "torch":
        import importlib

        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'efcomm' has no attribute {name!r}")
