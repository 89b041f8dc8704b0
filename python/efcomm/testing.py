"""Test helpers: :func:`run_ranks` runs a function on n in-process ranks (one Python thread each),
as the tests and the simulator need."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List

from . import _core
from .comm import Communicator
from .errors import CollectiveTimeout, InvalidArgument

__all__ = ["run_ranks"]


#: The most ranks run_ranks runs (each is a thread of this process).
MAX_RANKS = 1024


def run_ranks(n: int, fn: Callable[[Communicator], Any], timeout: float = 60.0) -> List[Any]:
    """Runs ``fn(comm)`` for every rank of a fresh in-process group of n ranks, each on its own
    thread, and returns fn's return values in rank order.

    ``timeout`` (seconds) is the default timeout of every collective of the group and bounds the
    whole run. If a rank raises, the group is aborted so the other ranks' collectives fail at once
    instead of waiting, and the first exception raised is re-raised here; a collective that waits
    for a rank whose ``fn`` has returned fails at once too, naming that rank.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_RANKS:
        raise InvalidArgument(f"run_ranks: n must be an int in [1, {MAX_RANKS}] (a thread per rank), got {n!r}")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise InvalidArgument(f"run_ranks: timeout must be a number of seconds > 0, got {timeout!r}")
    group = _core._InProcessGroup(n, float(timeout))
    results: List[Any] = [None] * n
    errors: List[tuple] = []  # (rank, exception), in the order raised
    lock = threading.Lock()

    def body(rank: int) -> None:
        try:
            results[rank] = fn(Communicator(group.backend(rank)))
            group.leave(rank)  # a collective still waiting for this rank fails now, naming it
        except BaseException as e:  # noqa: BLE001 - every failure must release the other ranks
            with lock:
                first = not errors
                errors.append((rank, e))
            if first:
                group.abort(rank, f"rank {rank} raised {type(e).__name__}: {e}")

    threads = [threading.Thread(target=body, args=(r,), name=f"efcomm-rank-{r}", daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + min(timeout, threading.TIMEOUT_MAX / 2)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [r for r, t in enumerate(threads) if t.is_alive()]
    if stuck:
        group.abort(stuck[0], "run_ranks timed out")
        for t in threads:
            t.join(1.0)
        if not errors:
            raise CollectiveTimeout(f"run_ranks: ranks {stuck} did not finish within {timeout} s", culprits=stuck)
    if errors:
        raise errors[0][1]
    return results
