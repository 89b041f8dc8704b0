"""The exception hierarchy. The native core raises these with ``.code`` set."""

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
    """Ranks disagree on a collective's shape, dtype, key or order."""

    code = 5


class CollectiveTimeout(Error):
    """A collective did not complete in time; ``culprits`` lists the ranks it waits for."""

    code = 6

    def __init__(self, *args, culprits=None):
        super().__init__(*args)
        self.culprits = list(culprits or [])


class BackendUnavailable(Error):
    """A backend (CUDA, NCCL, MPI) was requested but is not built or not usable here."""

    code = 7
