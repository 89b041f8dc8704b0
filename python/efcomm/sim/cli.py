"""``efcomm sim``: run feedback x compressor combinations on one problem, write a CSV per run,
PNG plots and a summary.json into --out, and print a table (or JSON with --json)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from ..bench._util import json_safe, nonnegative_int, positive_float, positive_int
from ..errors import InvalidArgument
from . import plots, problems, runner, theory


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--problem", choices=problems.PROBLEMS, default="counterexample",
                   help="the problem the clients share (docs/simulator.md)")
    p.add_argument("--feedback", nargs="+", default=["ef21"], metavar="SPEC",
                   help=f"one or more of {', '.join(runner.FEEDBACKS)}, with parameters as "
                        "name:key=value (e.g. ef21:init=compressed, econtrol:eta=0.1)")
    p.add_argument("--compressor", nargs="+", default=["topk:k=1"], metavar="SPEC",
                   help="one or more compressor specs; every feedback runs with every compressor")
    p.add_argument("--rounds", type=nonnegative_int, default=1000, help="communication rounds per run")
    p.add_argument("--stepsize", default="theory",
                   help="theory (1/(L + L_QM xi(alpha))), theory-am (1/(L + L_AM xi(alpha))) or a number")
    p.add_argument("--multiplier", type=positive_float, default=1.0, help="factor applied to the stepsize")
    p.add_argument("--participation", type=_probability, default=1.0,
                   help="probability that a client takes part in a round (EF21-PP); absent clients send nothing")
    p.add_argument("--clients", type=positive_int, default=10, help="number of clients (counterexample: always 3)")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the data (synthetic data, the split) and of partial participation; randomized "
                        "compressors take theirs from the spec (seed=, default 0)")
    p.add_argument("--lam", type=float, default=0.1, help="nonconvex regularizer weight (logreg)")
    p.add_argument("--zeta", type=float, default=1.0, help="heterogeneity of the clients' minimizers (lsq)")
    p.add_argument("--l-ratio", type=float, default=None,
                   help="spread max/min of the clients' smoothness (logreg-synth default 100, lsq 1)")
    p.add_argument("--dim", type=positive_int, default=20, help="dimension of the synthetic problems")
    p.add_argument("--samples", type=positive_int, default=50, help="samples per client of the synthetic problems")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="what travels")
    p.add_argument("--out", default=None, help="directory for CSV, PNG and summary.json")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    # default SUPPRESS: the help shows no "(default: True)" for a flag that turns the bar off
    p.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                   help="no progress bar")


def _probability(text: str) -> float:
    """argparse type of --participation: a probability in (0, 1]."""
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def _stepsize(s: str):
    if s in theory.RULES:
        return s
    try:
        return positive_float(s)
    except (ValueError, argparse.ArgumentTypeError):
        raise InvalidArgument(f"--stepsize must be {' or '.join(theory.RULES)} or a finite number > 0, "
                              f"got {s!r}") from None


def _out_dir(path: str) -> None:
    """Creates --out before the runs, so that a path that cannot take their files fails at once
    with a line naming it, not after the runs with a traceback."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InvalidArgument(f"--out {path}: cannot create the directory ({e.strerror or e}): name a new "
                              "directory or an existing, writable one") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidArgument(f"--out {path}: cannot write into this directory: name a writable one")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", s).strip("_")


def _g(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def _table(results) -> str:
    from ..bench._util import format_table

    rows = [[r.feedback, r.compressor, f"{r.stepsize:.4g}", str(r.rounds_run), f"{r.bits_per_client_round:.0f}",
             _g(r.final["grad_norm_sq"]), _g(r.final["f_gap"]), _g(r.final["dist_sq"]),
             f"diverged@{r.diverged_at}" if r.diverged else "ok"] for r in results]
    return format_table(["feedback", "compressor", "gamma", "rounds", "bits/client/round", "|grad f|^2",
                         "f-f*", "|x-x*|^2", "status"], rows)


def main(args) -> int:
    step = _stepsize(args.stepsize)
    prob = problems.make_problem(args.problem, clients=args.clients, seed=args.seed, lam=args.lam,
                                 zeta=args.zeta, l_ratio=args.l_ratio, dim=args.dim, samples=args.samples)
    consts = theory.problem_constants(prob)
    runs = [(fb, comp, f"{_slug(fb)}__{_slug(comp)}") for fb in args.feedback for comp in args.compressor]
    names = [name for _, _, name in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # the same run twice, and one CSV file for both
        raise InvalidArgument(f"a --feedback/--compressor pair given twice ({', '.join(twice)})")
    if args.out:
        _out_dir(args.out)
    results = []
    for fb, comp, name in runs:
        csv_path = os.path.join(args.out, f"{name}.csv") if args.out else None
        results.append(runner.run(prob, fb, comp, rounds=args.rounds, stepsize=step,
                                  multiplier=args.multiplier, dtype=args.dtype,
                                  participation=args.participation, participation_seed=args.seed,
                                  csv_path=csv_path, progress=None if getattr(args, "progress", True) else False))
    pngs = []
    if args.out and not args.no_plots:
        try:
            pngs = plots.plot_all(results, args.out, title=f"{prob.name}: n={prob.n}, d={prob.d}")
        except InvalidArgument as e:
            print(f"note: no plots ({e})", file=sys.stderr)  # stdout is the table or the JSON
    # Strict JSON: a diverged run's infinities (and any other non-finite number) are null.
    summary = json_safe({"problem": prob.describe(), "constants": consts.to_dict(),
                         "runs": [r.to_dict() for r in results], "plots": pngs})
    if args.out:
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"problem {prob.name}: n={prob.n} d={prob.d}  L={consts.L:.4g}  L_AM={consts.L_AM:.4g}  "
          f"L_QM={consts.L_QM:.4g}  L_QM/L_AM={consts.ratio:.3f}")
    print(_table(results))
    if args.out:
        print(f"wrote {len(results)} CSV file(s), {len(pngs)} plot(s) and summary.json to {args.out}")
    return 0
