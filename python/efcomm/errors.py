"""The exception hierarchy. The native core raises these with ``.code`` set."""

import re

__all__ = ["Error", "InvalidArgument", "NonFiniteError", "CorruptMessageError", "MismatchError",
           "CollectiveTimeout", "BackendUnavailable"]


class Error(RuntimeError):
    """Base of every efcomm error. ``code`` is the native ErrorCode number."""

    code = 1


class InvalidArgument(Error, ValueError):
    """A bad value was passed: wrong shape, dtype, parameter or spec string."""

    code = 2


class NonFiniteError(Error):
    """NaN or Inf met where finite values are required."""

    code = 3


class CorruptMessageError(Error):
    """A payload failed validation (magic, version, sizes, checksum, indices...)."""

    code = 4


class MismatchError(Error):
    """Ranks disagree on a collective's shape, dtype, key or order; ``ranks`` lists those whose call
    differs from most ranks' (ties: from rank 0's), empty where not known (a state dict's
    mismatch)."""

    code = 5

    def __init__(self, *args, ranks=None):
        super().__init__(*args)
        self.ranks = list(ranks or [])


class CollectiveTimeout(Error):
    """A collective did not complete in time; ``culprits`` lists the ranks it waits for."""

    code = 6

    def __init__(self, *args, culprits=None):
        super().__init__(*args)
        self.culprits = list(culprits or [])


class BackendUnavailable(Error):
    """A backend (CUDA, NCCL, MPI) was requested but is not built or not usable here."""

    code = 7


def _one_line(e: BaseException) -> str:
    """e's message for a command line's one-line error: without the native source location
    (``[cpp/src/...:123]``) that ends the core's messages for bug reports."""
    return re.sub(r" \[[\w./-]+:\d+\]", "", str(e))
