"""Helpers shared by the benchmarks: timing, a progress bar, tables, machine description, and
rewriting a generated section of a markdown file."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..errors import InvalidArgument


@dataclass
class Timing:
    """Wall-clock seconds of the timed calls (warm-up excluded)."""
    samples: list

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_dict(self) -> dict:
        return {"best_s": self.best, "median_s": self.median, "calls": len(self.samples)}


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1, min_time: float = 0.0) -> Timing:
    """Calls fn warmup times untimed, then times it at least repeats times and for at least
    min_time seconds in all. The tables report the best call: on a shared machine the minimum is
    the least disturbed run, and more calls give a quiet moment more chances to occur."""
    for _ in range(warmup):
        fn()
    samples, total = [], 0.0
    while len(samples) < repeats or total < min_time:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        total += samples[-1]
    return Timing(samples)


def gbps(nbytes: int, seconds: float) -> float:
    """Throughput in GB/s (10^9 bytes per second)."""
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


class Progress:
    """A one-line progress bar on stderr, ``[#####.....] 7/24 qsgd compress``. Draws only when
    stderr is a terminal, so logs and captured output stay clean."""

    def __init__(self, total: int, width: int = 24, enabled: Optional[bool] = None, stream=None):
        self.total = max(total, 1)
        self.width = width
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._last_len = 0

    def step(self, label: str) -> None:
        """Shows label as the work now running; call once per unit of work, before it starts."""
        self.done += 1
        if not self.enabled:
            return
        filled = self.width * (self.done - 1) // self.total
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        self.stream.write("\r" + line.ljust(self._last_len))
        self.stream.flush()
        self._last_len = len(line)

    def close(self) -> None:
        if self.enabled and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()


def _aligns(rows: Sequence[Sequence[str]], ncols: int, align: Optional[str]) -> str:
    if align is not None:
        return align
    # Numbers right, text left: a column is numeric when every non-empty cell starts like one.
    out = []
    for j in range(ncols):
        cells = [r[j] for r in rows if r[j] not in ("", "-")]
        numeric = bool(cells) and all(re.match(r"^[-+]?[0-9.]", c) for c in cells)
        out.append("r" if numeric else "l")
    return "".join(out)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> str:
    """Plain-text table with aligned columns; align is one 'l' or 'r' per column (default: numbers
    right, text left)."""
    align = _aligns(rows, len(headers), align)
    widths = [max([len(h)] + [len(r[j]) for r in rows]) for j, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> str:
    """GitHub-flavoured markdown table, columns padded so the source reads as a table too."""
    align = _aligns(rows, len(headers), align)
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    widths = [max([len(h), 3] + [len(r[j]) for r in esc]) for j, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if a == "r" else c.ljust(w)
                                 for c, w, a in zip(cells, widths, align)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if a == "r" else "-" * (w + 2)
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in esc])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the numbers depend on: CPU, usable cores, library build, array library versions."""
    import numpy as np

    import efcomm as ef

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "build": ef.build_info(),
    }
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def busy_warning(info: dict) -> Optional[str]:
    """A warning when other work was running: parallel kernels lose most on a shared machine."""
    load = info.get("load_average")
    if load is None or load < 0.5 * info["usable_cores"]:
        return None
    return (f"load average {load:.1f} on {info['usable_cores']} cores when the run started: other work "
            "was running, the numbers are unreliable (multi-threaded kernels suffer most)")


def machine_summary(info: dict) -> str:
    b = info["build"]
    torch = (f"torch {info['torch']} ({info['torch_threads']} threads)" if info.get("torch")
             else "torch not installed")
    return (f"{info['cpu']}, {info['usable_cores']}/{info['cores']} cores usable; efcomm {b['version']} "
            f"simd={b['simd']} openmp={b['openmp']} threads={b['threads']} ({b['compiler']}); "
            f"numpy {info['numpy']}, {torch}; Python {info['python']}")


def replace_marked_section(path: str, name: str, content: str) -> None:
    """Replaces the text between ``<!-- {name}:begin -->`` and ``<!-- {name}:end -->`` in path;
    appends the marked section if the file lacks it (creates the file if missing)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{content.rstrip()}\n{end}"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end):]
    elif i >= 0 or j >= 0:
        raise InvalidArgument(f"{path}: unbalanced markers for section {name!r}: it needs {begin} before {end} "
                              "(or neither, and the section is appended)")
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def json_safe(obj):
    """JSON-safe: NaN and infinities become null (strict parsers reject NaN and Infinity), numpy
    scalars Python numbers, tuples lists."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def emit(result: dict, args, render_text: Callable[[dict], str], render_markdown: Callable[[dict], str],
         section: str) -> None:
    """Prints a benchmark result (--json, --markdown or the text tables) and, with --write-docs,
    rewrites its marked section of the markdown file."""
    if args.json:
        print(json.dumps(json_safe(result), indent=2))
    elif args.markdown:
        print(render_markdown(result))
    else:
        print(render_text(result))
    if args.write_docs:
        try:
            replace_marked_section(args.write_docs, section, render_markdown(result))
        except OSError as e:
            # Bad input like any other (the results are printed above): one line, not a traceback.
            raise InvalidArgument(f"--write-docs {args.write_docs}: cannot write it ({e.strerror or e}): name a "
                                  "markdown file in an existing, writable directory") from None
        print(f"wrote the {section} section of {args.write_docs}", file=sys.stderr)


def check_status(result: dict, args) -> int:
    """The exit status of a benchmark: 1 with --check when a target failed or errored, else 0
    (rows measured beside the targets, ``counted`` False, do not count)."""
    failed = [t for t in result["targets"] if t["status"] in ("FAIL", "ERROR") and t.get("counted", True)]
    return 1 if args.check and failed else 0


def result_text(t: dict) -> str:
    """A target row's result: its status, marked when the row is not one of the targets."""
    return t["status"] if t.get("counted", True) else f"{t['status']} (not a target)"


# ---- command-line pieces shared by the benchmarks and the demo ------------------------------------

def _number(text: str, kind):
    """text as an int or float, or the argparse error that says so (not "invalid positive_int
    value", argparse's words for a ValueError)."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") \
            from None


def positive_int(text: str) -> int:
    """argparse type: an int > 0."""
    v = _number(text, int)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def nonnegative_int(text: str) -> int:
    """argparse type: an int >= 0 (a seed, a count that may be zero)."""
    v = _number(text, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    v = _number(text, float)
    if not 0 < v < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def nonnegative_float(text: str) -> float:
    """argparse type: a finite float >= 0 (a time that may be zero)."""
    v = _number(text, float)
    if not 0 <= v < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def seed32(text: str) -> int:
    """argparse type: a seed in [0, 2^32), the range numpy's legacy RandomState and scikit-learn take."""
    v = nonnegative_int(text)
    if v >= 1 << 32:
        raise argparse.ArgumentTypeError(f"must be < 2^32 = {1 << 32}, got {v}")
    return v


def writable_file(text: str) -> str:
    """argparse type: a file to write after the work, checked before it: its directory exists
    and is writable."""
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: the directory {folder} does not exist or is not writable")
    return text


def png_path(text: str) -> str:
    """argparse type: where a PNG goes, checked before any work: a .png name in an existing,
    writable directory (a plot that fails after minutes of training loses the run's picture)."""
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"must name a .png file, got {text!r}")
    return writable_file(text)


def plot_path(text: str) -> str:
    """argparse type: png_path for a plot drawn after a run of minutes: matplotlib must import now,
    not once the results are in."""
    path = png_path(text)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise argparse.ArgumentTypeError("the plot needs matplotlib: pip install matplotlib, or leave this option "
                                         "out") from None
    return path


def ranks_arg(text: str) -> int:
    """argparse type: a number of ranks, at least 2."""
    v = _number(text, int)
    if v < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 ranks, got {v}")
    return v


def add_output_arguments(g, section: str, progress_help: str = "no progress bar") -> None:
    """--json/--markdown, --write-docs, --note, --check and --no-progress of a benchmark."""
    out = g.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--markdown", action="store_true", help="print the markdown tables")
    g.add_argument("--write-docs", metavar="PATH",
                   help=f"replace the <!-- {section}:begin/end --> section of PATH with the tables")
    g.add_argument("--note", help="a line added to the markdown (e.g. the conditions of the run)")
    g.add_argument("--check", action="store_true", help="exit with status 1 if a target is not met")
    g.add_argument("--no-progress", dest="progress", action="store_false", help=progress_help)


def ring_factor(ranks: int) -> float:
    """Bytes a rank sends (and receives) in a bandwidth-optimal allreduce, per byte of the vector:
    2(n - 1)/n, a reduce-scatter and an allgather of n parts; 1 at 2 ranks."""
    return 2 * (ranks - 1) / ranks


def target_summary(result: dict) -> str:
    """"1 FAIL, 5 PASS": the targets' results counted (rows beside the targets said apart)."""
    def count(rows):
        counts = {}
        for t in rows:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    beside = [t for t in result["targets"] if not t.get("counted", True)]
    text = count([t for t in result["targets"] if t.get("counted", True)])
    return text + (f" (beside them: {count(beside)})" if beside else "")


def load_warnings(result: dict) -> list:
    """Load warnings: at the start, and at the end (a run takes minutes, other work may start).
    At the end the load average still counts the benchmark's own processes (its ranks, busy
    until a moment ago: ``load_average_own``), which are not other work."""
    out = [busy_warning(result["machine"])]
    if result.get("load_average_end") is not None and not out[0]:
        own = result.get("load_average_own", 0)
        end = busy_warning({**result["machine"], "load_average": result["load_average_end"] - own})
        out.append(end and end.replace("when the run started", "when the run ended, beyond the benchmark's own "
                                       f"{own} processes" if own else "when the run ended"))
    return [w for w in out if w]


@dataclass
class Report:
    """What a benchmark's text and markdown reports are made of."""
    title: str           # "efcomm allreduce benchmark"
    warnings: list       # lines about the machine's load
    conditions: list     # paragraphs: model, transport, timing
    skipped: list        # lines about what did not run
    tables: list         # (title, headers, rows, align)
    targets_table: tuple  # (title, headers, rows, align)
    summary: str         # "1 FAIL, 5 PASS"


def render_report_text(result: dict, r: Report) -> str:
    lines = [f"{r.title}, {result['date']}: {result['command']}", f"machine: {machine_summary(result['machine'])}"]
    lines += [f"WARNING: {w}" for w in r.warnings]
    lines += r.conditions
    lines += [f"NOTE: {s}" for s in r.skipped]
    lines.append("")
    for title, headers, rows, align in r.tables:
        lines += [title, format_table(headers, rows, align), ""]
    for t in result["targets"]:
        lines.append(f"{result_text(t)}: {t['target']}: {t['shown'] or t['reason']}")
    lines.append(f"targets: {r.summary}")
    return "\n".join(lines)


def render_report_markdown(result: dict, r: Report, note: Optional[str] = None) -> str:
    lines = [f"Measured {result['date']} with `{result['command']}`.", "",
             f"Machine: {machine_summary(result['machine'])}.", ""]
    for line in (note, *r.warnings):
        if line:
            lines += [f"> {line}", ""]
    for line in r.conditions:
        lines += [line, ""]
    for line in r.skipped:
        lines += [f"> {line}", ""]
    for title, headers, rows, align in (*r.tables, r.targets_table):
        lines += [f"#### {title}", "", markdown_table(headers, rows, align), ""]
    lines.append(f"Targets: {r.summary}.")
    return "\n".join(lines)
