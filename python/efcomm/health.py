"""Fault detection for collectives (docs/reliability.md): :class:`Monitor` records every collective
of a communicator in a flight recorder, watches it over a control plane of its own (an agent
thread per rank talking TCP to a coordinator on rank 0), names the ranks a stuck collective waits
for, and localizes stragglers and slow links. ``efcomm doctor DIR`` merges the ranks' dumps.

Example (every rank)::

    comm = ef.Communicator.mpi()
    with ef.health.Monitor(comm, dump_dir="flight") as mon:   # the Reducers on comm are watched too
        red = ef.Reducer(comm, "topk:ratio=0.01", "ef21")
        for step in range(steps):
            g = red.allreduce(grad(step), key="w")  # a dead or stopped rank: CollectiveTimeout
        print(mon.anomalies())                      # on every live rank, naming it
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass
from typing import List, Optional

from . import _core
from .comm import Communicator
from .errors import InvalidArgument

__all__ = ["Anomaly", "Monitor"]

#: Anomaly kinds
KINDS = ("hang", "crash", "straggler", "slow_link", "nonfinite", "mismatch")


@dataclass(frozen=True)
class Anomaly:
    """A fault the monitor found: ``kind`` (one of :data:`KINDS`), the ``ranks`` at fault (for a
    slow link its sender and receiver), a ``detail`` sentence, the collective's sequence number
    ``seq`` and when it was found (``time``, seconds since the epoch; 0 when not known)."""
    kind: str
    ranks: List[int]
    detail: str
    seq: int
    time: float = 0.0


def _option(value, name: str, kind):
    """A Monitor option as `kind` (float or int), or InvalidArgument naming it."""
    ok = numbers.Real if kind is float else numbers.Integral
    if isinstance(value, bool) or not isinstance(value, ok):
        raise InvalidArgument(f"health.Monitor: {name} must be {'a number' if kind is float else 'an int'}, "
                              f"got {value!r}")
    return kind(value)


def _path(value, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise InvalidArgument(f"{what}: expected a non-empty path, got {value!r}")
    return os.fspath(value)


class Monitor:
    """Records and watches every collective of ``comm`` from now on, the collectives of the
    Reducers on ``comm`` included (those built before it too). Collective: every rank of
    ``comm`` creates it, and it returns once all ranks' agents have reached the coordinator.

    A collective some ranks have reached is overdue after ``max(timeout_floor, timeout_factor x
    the p99 of recent collective durations)`` (once every rank is in it, plus its bytes at
    ``min_gbps`` Gbit/s: a large transfer over a slow network is not a hang); a rank whose
    heartbeats stop for ``heartbeat_timeout`` seconds is stopped; one whose connection drops has
    crashed; one that closed its monitor while the others wait for it has left. Then every
    live rank's pending and later collectives raise :class:`efcomm.CollectiveTimeout` whose
    ``culprits`` are the ranks at fault, and, with ``dump_dir``, each rank writes its flight record
    there (``efcomm-flight-rank<R>.json``; also on SIGUSR1 and at :meth:`close`).
    ``capacity``: collectives the flight recorder keeps; ``window``: collectives the straggler and
    slow-link statistics look back over; ``address``: the coordinator's addresses to advertise
    (comma-separated IPv4; default: every address of rank 0's host, loopback last);
    ``connect_timeout``: seconds the constructor waits for every rank to reach the coordinator
    (then :class:`efcomm.Error` naming the ranks that did not).
    """

    def __init__(self, comm: Communicator, timeout_floor: float = 5.0, timeout_factor: float = 4.0,
                 dump_dir: Optional[str] = None, *, heartbeat_interval: float = 0.2,
                 heartbeat_timeout: float = 2.0, capacity: int = 4096, window: int = 20,
                 address: Optional[str] = None, connect_timeout: float = 60.0, min_gbps: float = 0.1):
        if not isinstance(comm, Communicator):
            raise InvalidArgument(f"health.Monitor: expected an ef.Communicator, got {type(comm).__name__}")
        seconds = [_option(v, n, float) for v, n in ((timeout_floor, "timeout_floor"), (timeout_factor, "timeout_factor"),
                                                     (min_gbps, "min_gbps"), (heartbeat_interval, "heartbeat_interval"),
                                                     (heartbeat_timeout, "heartbeat_timeout"))]
        counts = [_option(v, n, int) for v, n in ((capacity, "capacity"), (window, "window"))]
        if counts[0] < 1:  # the native side takes an unsigned count
            raise InvalidArgument(f"health.Monitor: capacity must be >= 1, got {capacity!r}")
        if address is not None and not isinstance(address, str):
            raise InvalidArgument(f"health.Monitor: address must be a str of IPv4 addresses, got {address!r}")
        if dump_dir is not None:
            dump_dir = _path(dump_dir, "health.Monitor: dump_dir")
            try:
                os.makedirs(dump_dir, exist_ok=True)
            except OSError as e:
                raise InvalidArgument(f"health.Monitor: cannot create dump_dir {dump_dir!r} ({e.strerror}); name a "
                                      "writable directory") from None
        self._comm = comm
        self._impl = _core._Monitor(comm._backend, *seconds, *counts, dump_dir or "", address or "",
                                    _option(connect_timeout, "connect_timeout", float))
        self._unwatched = comm._backend
        comm._backend = self._impl.backend
        self._rebind(self._impl.backend)

    def anomalies(self) -> List[Anomaly]:
        """Faults found so far, oldest first (every rank hears of the coordinator's findings)."""
        return [Anomaly(k, list(r), d, s, t) for k, r, d, s, t in self._impl.anomalies()]

    def records(self) -> list:
        """This rank's flight record: the collectives kept, oldest first (dicts, see :meth:`dump`)."""
        return json.loads(self._impl.dump_json("demand"))["records"]

    def dump(self, path: str) -> None:
        """Writes this rank's flight record to ``path`` as JSON (format ``efcomm-flight-record``,
        version 1; docs/reliability.md describes the fields)."""
        self._impl.dump(_path(path, "Monitor.dump"))

    def close(self) -> None:
        """Says goodbye to the coordinator (leaving is not a crash), stops the control plane and
        writes the final dump when ``dump_dir`` is set. Collective. The communicator's collectives
        are recorded no more."""
        if self._comm._backend is self._impl.backend:
            self._comm._backend = self._unwatched
            self._rebind(self._unwatched)
        self._impl.close()

    def _rebind(self, backend) -> None:
        """Moves the communicator's Reducers onto ``backend`` (each waits for its queued calls)."""
        for reducer in list(self._comm._reducers):
            reducer._impl.rebind(backend)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
