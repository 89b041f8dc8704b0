"""Train with 4 ranks uncompressed, with TopK + EF21 and with TopK alone; compare accuracy and bytes.

The main job, ``efcomm demo``. Four ranks (processes it launches itself, torch DDP over gloo on
the loopback) train a small MLP on scikit-learn's digits three ways, with the same initial
weights, data split and batches: uncompressed DDP, DDP with efcomm's hook (TopK + EF21), and the
same hook without error feedback.
A progress bar, then a table: test accuracy, loss on the training set, bytes sent per rank,
compression against uncompressed DDP, wall time; and a PNG plot of loss and accuracy against
the bytes sent. About a minute on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time

from . import _ddp_train
from .bench._util import (Progress, format_table, json_safe, machine_info, machine_summary, png_path, positive_float,
                          positive_int, ranks_arg, seed32)
from .bench.allreduce import _bytes

DEFAULT_RANKS = 4
DEFAULT_RATIO = 0.01
DEFAULT_OUT = "efcomm-demo.png"
#: per method, beyond the estimate of _ddp_train: the ranks share two cores with whatever else runs
TIMEOUT_FACTOR = 3


def _ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"a fraction of the elements in (0, 1), got {text}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = _ddp_train.TrainConfig()
    p.add_argument("--ranks", type=ranks_arg, default=DEFAULT_RANKS,
                   help=f"processes to train with (default {DEFAULT_RANKS})")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"epochs per method (default {d.epochs})")
    p.add_argument("--ratio", type=_ratio, default=DEFAULT_RATIO,
                   help=f"fraction of the gradient TopK keeps (default {DEFAULT_RATIO})")
    p.add_argument("--seed", type=seed32, default=d.seed,
                   help=f"initial weights, data split and batch order (default {d.seed})")
    p.add_argument("--out", type=png_path, default=DEFAULT_OUT, metavar="PATH",
                   help=f"where to write the plot, a PNG (default {DEFAULT_OUT} in the current directory)")
    p.add_argument("--timeout", type=positive_float, metavar="S",
                   help="seconds a method may take before its ranks are stopped (default: estimated)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def methods(ratio: float) -> list:
    M = _ddp_train.Method
    topk = f"topk:ratio={ratio:g}"
    pct = f"{ratio * 100:g}%"
    return [M("ddp", "uncompressed DDP", "ddp"),
            M("topk-ef21", f"TopK {pct} + EF21", "efcomm", topk, "ef21"),
            M("topk-none", f"TopK {pct}, no feedback", "efcomm", topk, "none")]


def run(args) -> dict:
    reason = _ddp_train.unavailable_reason()
    if reason:
        raise SystemExit(f"efcomm demo: {reason}")
    cfg = dataclasses.replace(_ddp_train.TrainConfig(), ranks=args.ranks, epochs=args.epochs, seed=args.seed)
    todo = methods(args.ratio)
    labels = {m.key: m.label for m in todo}
    progress = Progress(total=len(todo) * cfg.epochs, enabled=None if args.progress else False)

    def on_point(point: dict) -> None:
        if point["epoch"] < cfg.epochs:
            progress.step(f"{labels[point['method']]}: epoch {point['epoch'] + 1}/{cfg.epochs}")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="efcomm-demo-") as tmp:
        data_path = os.path.join(tmp, "digits.npz")
        data = _ddp_train.prepare_data(data_path, cfg)
        timeout = args.timeout or TIMEOUT_FACTOR * _ddp_train.estimate_seconds(cfg, data["train"])
        try:
            rows = _ddp_train.run(todo, cfg, data_path, timeout=timeout, on_point=on_point)
        finally:
            progress.close()
    result = {"demo": "ddp-digits", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine_info(), "config": dataclasses.asdict(cfg), "ratio": args.ratio, "data": data,
              "timeout_s": timeout, "rows": rows, "seconds": time.perf_counter() - t0}
    base = rows[0] if rows[0]["status"] == "ok" else None
    for r in rows:
        if r["status"] == "ok" and base is not None and r["bytes_sent_per_rank"] > 0:
            r["compression"] = base["bytes_sent_per_rank"] / r["bytes_sent_per_rank"]
    result["plot"] = plot(rows, args.out, cfg) if any(r["status"] == "ok" for r in rows) else None
    return result


def plot(rows: list, path: str, cfg) -> str:
    """Loss on the training set and test accuracy against the bytes a rank sent, one line per
    method (log scale: the compressed runs send a small fraction of the bytes); returns path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for r in rows:
        pts = [p for p in r["points"] if p["bytes_sent"] > 0]  # the start is at 0 bytes: off a log axis
        if r["status"] != "ok" or not pts:
            continue
        x = [p["bytes_sent"] / 2**20 for p in pts]
        loss_ax.plot(x, [p["loss"] for p in pts], marker=".", label=r["label"])
        acc_ax.plot(x, [p["accuracy"] for p in pts], marker=".", label=r["label"])
    for ax, what in ((loss_ax, "loss on the training set"), (acc_ax, "test accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("MiB sent per rank (cumulative)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    loss_ax.set_yscale("log")
    acc_ax.legend(loc="lower right")
    fig.suptitle(f"efcomm demo: MLP on scikit-learn digits, {cfg.ranks} ranks, DDP over gloo, "
                 f"{cfg.epochs} epochs (one point per epoch)")
    fig.savefig(path, dpi=110)
    return os.path.abspath(path)


def render_text(result: dict) -> str:
    cfg = result["config"]
    lines = [f"efcomm demo: {cfg['ranks']} ranks, torch DDP over gloo, MLP {64}-{cfg['hidden']}-{cfg['hidden']}-10 "
             f"on scikit-learn's digits ({result['data']['train']} training, {result['data']['test']} test images), "
             f"{cfg['epochs']} epochs of {cfg['batch']} images per rank and step, same seed for every method",
             f"machine: {machine_summary(result['machine'])}", ""]
    body = []
    for r in result["rows"]:
        if r["status"] != "ok":
            body.append([r["label"], "-", "-", "-", "-", "-", f"{r['status']}: {r['reason']}"])
            continue
        body.append([r["label"], f"{r['accuracy']:.1f}%", f"{r['loss']:.4f}", _bytes(r["bytes_sent_per_rank"]),
                     f"{r['compression']:.1f}x" if "compression" in r else "-", f"{r['wall_s']:.1f}", ""])
    lines.append(format_table(["method", "test accuracy", "train loss", "sent per rank", "fewer bytes",
                               "wall s", "note"], body, "lrrrrrl"))
    lines.append("")
    lines += _summary(result)
    if result["plot"]:
        lines.append(f"plot: {result['plot']}")
    lines.append(f"done in {result['seconds']:.0f} s")
    return "\n".join(lines)


def _summary(result: dict) -> list:
    rows = {r["method"]: r for r in result["rows"] if r["status"] == "ok"}
    base, ef, none = (rows.get(k) for k in ("ddp", "topk-ef21", "topk-none"))
    out = []
    if base and ef:
        out.append(f"{ef['label']} sent {ef['compression']:.0f}x fewer bytes than uncompressed DDP: test accuracy "
                   f"{ef['accuracy'] - base['accuracy']:+.1f} points, training loss {ef['loss']:.4f} against "
                   f"{base['loss']:.4f}.")
    if ef and none:
        out.append(f"Without error feedback the same compressor ended at a training loss of {none['loss']:.4f} "
                   f"({none['loss'] / ef['loss']:.3g}x that with EF21) and {none['accuracy'] - ef['accuracy']:+.1f} "
                   "points of test accuracy"
                   + (": what TopK drops is lost, where error feedback sends it later." if none["loss"] > ef["loss"]
                      else "."))
    return out


def main(args) -> int:
    result = run(args)
    if args.json:
        print(json.dumps(json_safe(result), indent=2))
    else:
        print(render_text(result))
    failed = [r for r in result["rows"] if r["status"] != "ok"]
    for r in failed:
        print(f"efcomm demo: {r['label']} {r['status']}: {r['reason']}", file=sys.stderr)
    return 1 if failed else 0
