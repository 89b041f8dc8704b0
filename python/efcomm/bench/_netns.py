"""A network namespace of the benchmark's own, with an optional rate limit on its loopback.

Ranks launched with :meth:`Namespace.command` talk to each other over the namespace's ``lo``
only, so its counters (``/proc/net/dev``, read inside the namespace) count their traffic and
nothing else, and a ``tc`` token bucket on ``lo`` limits it. Needs root and iproute2 (``ip``,
``tc``); :func:`unavailable_reason` says why not otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Optional

#: lo carries segments of up to 64 KiB; the bucket must hold several or tbf drops them.
MIN_BURST_BYTES = 256 * 1024
#: the bucket holds this much traffic at the rate: smooth on a millisecond scale, yet large
#: enough that the kernel's timer granularity does not cap the rate.
BURST_SECONDS = 0.004
#: how long a packet may wait in the queue; longer than TCP's bursts of a few ranks, so the
#: limit shows as queueing rather than drops and retransmissions.
LATENCY = "100ms"

_UNITS = {"": 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


def parse_rate(text: str) -> Optional[int]:
    """Bits per second of a tc-style rate (``1gbit``, ``10gbit``, ``500mbit``); None for
    ``unlimited``. Raises ValueError for anything else."""
    t = text.strip().lower()
    if t in ("unlimited", "none", "inf"):
        return None
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?bit)", t)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"rate {text!r}: expected 'unlimited' or a number with kbit, mbit, gbit "
                         "(e.g. 1gbit, 10gbit, 500mbit)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def rate_text(bits: Optional[int]) -> str:
    """``1 Gbit/s`` style text of a rate; ``unlimited`` for None."""
    if bits is None:
        return "unlimited"
    for unit, scale in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits} bit/s"


def rate_arg(bits: Optional[int]) -> str:
    """The tc-style text parse_rate reads back: ``unlimited``, ``1gbit``, ``500mbit``."""
    if bits is None:
        return "unlimited"
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits % scale == 0:
            return f"{bits // scale}{unit}"
    return f"{bits}bit"


def burst_bytes(bits: int) -> int:
    """The token bucket's size for a rate: BURST_SECONDS of traffic, at least MIN_BURST_BYTES."""
    return max(MIN_BURST_BYTES, int(bits / 8 * BURST_SECONDS))


def unavailable_reason() -> Optional[str]:
    """None when a namespace can be made here, else what is missing and how to get it."""
    if os.geteuid() != 0:
        return ("creating a network namespace and setting a tc rate limit needs root: run as root, "
                "e.g. sudo env \"PATH=$PATH\" efcomm bench allreduce")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return (f"{' and '.join(missing)} not found: install iproute2 (Debian/Ubuntu: apt-get install "
                "iproute2)")
    return None


def _run(cmd: list, what: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed: {' '.join(cmd)}: {(p.stderr or p.stdout).strip()}")


class Namespace:
    """``with Namespace(name) as ns:`` creates the namespace with lo up and deletes it on exit
    (also after an exception or Ctrl-C)."""

    def __init__(self, name: str):
        self.name = name
        self.rate: Optional[int] = None
        self._created = False

    def __enter__(self) -> "Namespace":
        _run(["ip", "netns", "add", self.name], "creating the network namespace")
        self._created = True
        try:
            _run(["ip", "-n", self.name, "link", "set", "lo", "up"], "bringing up lo in the namespace")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._created:
            self._created = False
            _run(["ip", "netns", "del", self.name], "deleting the network namespace")

    def set_rate(self, bits: Optional[int]) -> None:
        """Limits lo to bits per second (a tbf qdisc), or removes the limit (None)."""
        if bits == self.rate:
            return
        if bits is None:
            _run(["ip", "netns", "exec", self.name, "tc", "qdisc", "del", "dev", "lo", "root"],
                 "removing the rate limit")
        else:
            _run(["ip", "netns", "exec", self.name, "tc", "qdisc", "replace", "dev", "lo", "root", "tbf",
                  "rate", f"{bits}bit", "burst", str(burst_bytes(bits)), "latency", LATENCY],
                 "setting the rate limit")
        self.rate = bits

    def qdisc(self) -> str:
        """``tc qdisc show dev lo`` in the namespace: what the limit actually is."""
        p = subprocess.run(["ip", "netns", "exec", self.name, "tc", "qdisc", "show", "dev", "lo"],
                           capture_output=True, text=True, timeout=30)
        return p.stdout.strip()

    def command(self, argv: list) -> list:
        """argv run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def enter(stack, name: str, limited: bool, tool: str):
    """Creates the namespace `name` on `stack` (a contextlib.ExitStack) where it can be; returns
    (namespace or None, why not or None). When rate-limited runs are planned (`limited`) and there
    is no namespace, says on stderr that they are skipped (`tool` names the command)."""
    import sys

    reason = unavailable_reason()
    ns = None
    if reason is None:
        try:
            ns = stack.enter_context(Namespace(name))
        except RuntimeError as e:  # root without CAP_SYS_ADMIN, as in some containers
            reason = f"{e} (a network namespace needs root with CAP_SYS_ADMIN)"
    if reason and limited:
        print(f"{tool}: skipping the limited rates: {reason}", file=sys.stderr)
    return ns, reason


def lo_tx() -> tuple:
    """(bytes, packets, TCP segments retransmitted) sent so far on lo and by TCP, in the calling
    process's network namespace."""
    sent = None
    with open("/proc/net/dev") as f:
        for line in f:
            name, sep, rest = line.partition(":")
            if sep and name.strip() == "lo":
                fields = rest.split()
                sent = int(fields[8]), int(fields[9])
    if sent is None:
        raise RuntimeError("no lo interface in /proc/net/dev")
    with open("/proc/net/snmp") as f:
        tcp = [line.split()[1:] for line in f if line.startswith("Tcp:")]
    return (*sent, int(dict(zip(tcp[0], tcp[1]))["RetransSegs"]))
