"""PNG plots of simulator runs: a metric against rounds and against bits sent, several runs per
figure (matplotlib with the Agg backend, so no display is needed)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..errors import InvalidArgument

#: axis titles of the history columns that can be plotted
METRICS = {"grad_norm_sq": r"$\|\nabla f(x)\|^2$", "f_gap": r"$f(x) - f^*$",
           "dist_sq": r"$\|x - x^*\|^2$", "f": r"$f(x)$"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise InvalidArgument("plots need matplotlib: pip install matplotlib (or efcomm[sim])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def available_metrics(results: Sequence) -> list:
    """The metrics of :data:`METRICS` that at least one run knows (f only where f* is unknown)."""
    known = [m for m in ("grad_norm_sq", "f_gap", "dist_sq")
             if any(np.isfinite(r.history[m]).any() for r in results)]
    return known if "f_gap" in known else known + ["f"]


def plot_runs(results: Sequence, path, metric: str = "grad_norm_sq", title: str = "") -> str:
    """One PNG with two panels, ``metric`` against rounds and against bits per client; one line per
    run (a diverged run ends with an x). Returns path."""
    if metric not in METRICS:
        raise InvalidArgument(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if not results:
        raise InvalidArgument("plot_runs needs at least one run")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    log = metric != "f"
    for r in results:
        y = r.history[metric]
        for ax, x in zip(axes, (r.history["round"], r.history["bits_per_client"])):
            ok = np.isfinite(y) & ((y > 0) if log else True)
            (line,) = ax.plot(x[ok], y[ok], label=r.label, lw=1.4)
            if r.diverged and ok.any():
                last = np.flatnonzero(ok)[-1]
                ax.plot(x[last], y[last], "x", color=line.get_color(), ms=8)
    for ax, xlabel in zip(axes, ("rounds", "bits sent per client")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(METRICS[metric])
        if log:
            ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_all(results: Sequence, out_dir, prefix: str = "", title: str = "") -> list:
    """Writes ``{prefix}{metric}.png`` into out_dir for every metric the runs know; returns the
    paths."""
    os.makedirs(out_dir, exist_ok=True)
    return [plot_runs(results, os.path.join(out_dir, f"{prefix}{m}.png"), m, title)
            for m in available_metrics(results)]
