#!/usr/bin/env python3
"""Reproductions 4 and 5 of issue 3, with efcomm's simulator (``efcomm.sim``).

4. On heterogeneous least squares (clients' minimizers differ, zeta > 0) EF14 stalls at an error
   floor that shrinks like gamma^2, while EF21 and EControl converge to machine precision;
   EControl's eta trades speed for stability.
5. Bits per client to reach ||grad f||^2 <= tol for every feedback x compressor pair on the
   embedded breast cancer logistic regression.

    python bench/reproduce_lsq.py                      # both, tables on stdout, figures in docs/figures
    python bench/reproduce_lsq.py --write-docs docs/reproductions.md
    python bench/reproduce_lsq.py --quick --no-figures # the small versions the tests run

Needs efcomm installed with the ``sim`` extras (matplotlib for the figures).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from efcomm import sim
from efcomm.bench._util import format_table, markdown_table, replace_marked_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIG_DIR = os.path.join(ROOT, "docs", "figures")

# Reproduction 4: n = 10 clients, d = 20, m = 50 rows each, client minimizers x_c + zeta u_i.
LSQ = dict(n=10, d=20, m=50, zeta=1.0, seed=0)
LSQ_COMPRESSOR = "topk:k=2"           # alpha = k/d = 0.1
EF14_MULTIPLIERS = (2.0, 1.0, 0.5, 0.25)   # times EF21's theory stepsize 1/(L + L_QM xi(alpha))
EF14_ROUNDS = 2000                    # at multiplier 1; scaled by 1/multiplier (the floor is reached
                                      # after ~1/(gamma mu) rounds)
MACHINE_TOL = 1e-20                   # ||x - x*||^2 counted as machine precision
ETAS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
STABILITY_MULTIPLIERS = (1, 4, 16, 32, 48, 64, 96)
ECONTROL_ROUNDS = 4000

# Reproduction 5
FEEDBACKS = ("none", "ef14", "ef21", "ef21w", "ef21sgdm", "econtrol")
COMPRESSORS = ("topk:ratio=0.1", "randk:ratio=0.1", "randk:ratio=0.1,scaled=false", "sign", "qsgd", "natural", "quant:bits=4",
               "cast:dtype=bf16", "identity", "powersgd:rank=1")
TABLE_TOL = 1e-6
TABLE_ROUNDS = 3000
TABLE_CLIENTS = 10


def lsq_problem(quick: bool = False):
    return sim.LeastSquares(**LSQ)


def floor_of(result, metric: str = "dist_sq") -> float:
    """Mean of ``metric`` over the last quarter of the rounds: EF14 does not settle on a point but
    keeps moving around x* (the residuals e_i are sent a few coordinates at a time)."""
    h = result.history[metric]
    return float(np.mean(h[-max(len(h) // 4, 1):]))


def fit_loglog(xs, ys) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


@dataclass
class Repro4:
    ef14: list = field(default_factory=list)        # (multiplier, gamma, rounds, floor dist, floor f_gap, run)
    slope_dist: float = math.nan
    slope_f: float = math.nan
    converged: list = field(default_factory=list)   # (label, run) for ef21 / econtrol at multiplier 1
    eta_rows: list = field(default_factory=list)    # (label, rounds to tol at each multiplier)
    multipliers: tuple = ()


def run_repro4(quick: bool = False) -> Repro4:
    p = lsq_problem(quick)
    out = Repro4()
    mults = EF14_MULTIPLIERS[:3] if quick else EF14_MULTIPLIERS
    base_rounds = EF14_ROUNDS // 2 if quick else EF14_ROUNDS
    for m in mults:
        rounds = int(round(base_rounds / m))
        r = sim.run(p, "ef14", LSQ_COMPRESSOR, rounds=rounds, stepsize="theory", multiplier=m)
        out.ef14.append((m, r.stepsize, rounds, floor_of(r, "dist_sq"), floor_of(r, "f_gap"), r))
    gammas = [row[1] for row in out.ef14]
    out.slope_dist = fit_loglog(gammas, [row[3] for row in out.ef14])
    out.slope_f = fit_loglog(gammas, [row[4] for row in out.ef14])

    rounds = 2500 if quick else ECONTROL_ROUNDS
    for fb in ("ef21", "econtrol:eta=0.1"):
        out.converged.append((fb, sim.run(p, fb, LSQ_COMPRESSOR, rounds=rounds, stepsize="theory")))
    if quick:
        return out
    out.multipliers = STABILITY_MULTIPLIERS
    for fb in ("ef21", *(f"econtrol:eta={eta:g}" for eta in ETAS), "ef14"):
        hits = []
        for m in STABILITY_MULTIPLIERS:
            r = sim.run(p, fb, LSQ_COMPRESSOR, rounds=ECONTROL_ROUNDS, stepsize="theory", multiplier=m)
            hits.append((r.rounds_to(MACHINE_TOL, "dist_sq"), r))
        out.eta_rows.append((fb, hits))
    return out


def repro4_tables(res: Repro4, md: bool) -> str:
    table = markdown_table if md else format_table
    rows = [[f"{m:g}", f"{g:.4g}", str(rounds), f"{fd:.3g}", f"{ff:.3g}"]
            for m, g, rounds, fd, ff, _ in res.ef14]
    ratios = [res.ef14[i][3] / res.ef14[i + 1][3] for i in range(len(res.ef14) - 1)]
    parts = [table(["multiplier", "γ", "rounds", "floor ‖x − x*‖²", "floor f − f*"], rows),
             f"\nfitted log-log slope: ‖x − x*‖² ∝ γ^{res.slope_dist:.3f}, f − f* ∝ γ^{res.slope_f:.3f}; "
             f"floor ratio per halving of γ: {', '.join(f'{q:.2f}' for q in ratios)}\n"]
    rows = []
    for fb, r in res.converged:
        hit = r.rounds_to(MACHINE_TOL, "dist_sq")
        rows.append([fb, f"{r.stepsize:.4g}", str(r.rounds_run), f"{r.final['dist_sq']:.3g}",
                     "-" if hit is None else str(hit)])
    parts.append(table(["feedback", "γ", "rounds", "final ‖x − x*‖²", f"rounds to {MACHINE_TOL:g}"], rows))
    if res.eta_rows:
        headers = ["feedback"] + [f"×{m}" for m in res.multipliers] + ["largest ok"]
        rows = []
        for fb, hits in res.eta_rows:
            cells, best = [], "-"
            for m, (hit, r) in zip(res.multipliers, hits):
                if hit is not None:
                    best = f"×{m}"
                cells.append(str(hit) if hit is not None else ("div" if r.diverged else "–"))
            rows.append([fb] + cells + [best])
        parts.append(f"\nrounds to ‖x − x*‖² ≤ {MACHINE_TOL:g} at the theory stepsize times the multiplier "
                     f"({ECONTROL_ROUNDS} rounds at most; div = diverged, – = not reached):\n")
        parts.append(table(headers, rows))
    return "\n".join(parts)


def repro4_figure(res: Repro4, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    for m, g, _, _, _, r in res.ef14:
        ax.semilogy(r.history["round"], r.history["dist_sq"], lw=0.8, label=f"EF14, γ = {g:.3g}")
    for fb, r in res.converged:
        ax.semilogy(r.history["round"], np.maximum(r.history["dist_sq"], 1e-35), lw=1.2, ls="--",
                    label=f"{fb}, γ = {r.stepsize:.3g}")
    ax.set(xlabel="round", ylabel="‖x − x*‖²", title=f"heterogeneous least squares, {LSQ_COMPRESSOR}",
           xlim=(0, 4 * EF14_ROUNDS))
    ax.legend(fontsize=7)
    ax = axes[1]
    gam = np.array([row[1] for row in res.ef14])
    fl = np.array([row[3] for row in res.ef14])
    ax.loglog(gam, fl, "o", label="EF14 floor (mean of last quarter)")
    ax.loglog(gam, fl[-1] * (gam / gam[-1]) ** 2, "k:", label="slope 2")
    ax.set(xlabel="γ", ylabel="floor ‖x − x*‖²", title=f"fitted slope {res.slope_dist:.2f}")
    ax.legend(fontsize=8)
    ax = axes[2]
    for fb, hits in res.eta_rows:
        if not fb.startswith("econtrol"):
            continue
        for m, (hit, r) in zip(res.multipliers, hits):
            if m == 16:
                ax.semilogy(r.history["round"], np.maximum(r.history["dist_sq"], 1e-35), lw=1,
                            label=f"{fb}, γ = {r.stepsize:.3g}")
    ax.set(xlabel="round", ylabel="‖x − x*‖²", title="EControl's η at 16 × theory stepsize")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def client_seed_note() -> str:
    """Whether the runner gives each client its own seed for randomized compressors (another
    change in flight adds this; the note follows what the installed runner does)."""
    if hasattr(sim.runner, "client_specs"):
        return ("each client draws with its own seed (the runner gives client i seed i: "
                "`sim.runner.client_specs`)")
    return ("all clients share the compressor's seed (seed=0), so randk, qsgd, natural draw the same "
            "coordinates/roundings on every client: their numbers are those of correlated compressors")


@dataclass
class Cell:
    feedback: str
    compressor: str
    stepsize: float
    rule: str
    rounds: Optional[int]
    bits_per_client: Optional[float]
    diverged: bool
    final_grad: float
    rounds_run: int


def table_stepsize(compressor: str, problem) -> tuple:
    """EF21's theory stepsize for the compressor's alpha, used for every feedback with that
    compressor; a compressor reporting alpha = 0 (PowerSGD on a vector: no contraction bound) gets
    the alpha = 1 value, 1/L."""
    import efcomm as ef

    alpha = ef.compressor(compressor).alpha(problem.d)
    consts = sim.problem_constants(problem)
    if alpha > 0:
        return sim.theory.stepsize("theory", consts, alpha), "theory"
    return sim.theory.stepsize("theory", consts, 1.0), "theory(α=1)"


def build_table(feedbacks=FEEDBACKS, compressors=COMPRESSORS, rounds: int = TABLE_ROUNDS,
                tol: float = TABLE_TOL, clients: int = TABLE_CLIENTS) -> list:
    """One :class:`Cell` per feedback x compressor pair on breast cancer logistic regression."""
    p = sim.breast_cancer(n=clients)
    cells = []
    for comp in compressors:
        gamma, rule = table_stepsize(comp, p)
        for fb in feedbacks:
            r = sim.run(p, fb, comp, rounds=rounds, stepsize=gamma)
            hit = r.rounds_to(tol)
            cells.append(Cell(fb, comp, gamma, rule, hit,
                              None if hit is None else float(r.history["bits_per_client"][hit]),
                              r.diverged, float(r.final["grad_norm_sq"]), r.rounds_run))
    return cells


def _bits(c: Cell) -> str:
    if c.bits_per_client is not None:
        return f"{c.bits_per_client / 8e3:.1f} kB ({c.rounds})"
    return f"div@{c.rounds_run}" if c.diverged else f"– ({c.final_grad:.1e})"


def table_text(cells: list, md: bool) -> str:
    comps = list(dict.fromkeys(c.compressor for c in cells))
    fbs = list(dict.fromkeys(c.feedback for c in cells))
    by = {(c.compressor, c.feedback): c for c in cells}
    rows = []
    for comp in comps:
        first = by[(comp, fbs[0])]
        rows.append([comp, f"{first.stepsize:.3g}"] + [_bits(by[(comp, fb)]) for fb in fbs])
    return (markdown_table if md else format_table)(["compressor", "γ", *fbs], rows,
                                                     align="ll" + "r" * len(fbs))


def command_line(argv) -> str:
    return " ".join(["python bench/reproduce_lsq.py", *argv])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small versions (what the tests run)")
    ap.add_argument("--only", choices=("4", "5"), help="run one reproduction")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--write-docs", metavar="MD", help="rewrite the repro:4 / repro:5 sections of MD")
    args = ap.parse_args(argv)
    today = datetime.date.today().isoformat()
    cmd = command_line(argv)

    if args.only in (None, "4"):
        t0 = time.perf_counter()
        res = run_repro4(args.quick)
        print("Reproduction 4: heterogeneous least squares "
              f"(n={LSQ['n']}, d={LSQ['d']}, m={LSQ['m']}, zeta={LSQ['zeta']}), {LSQ_COMPRESSOR}, float64")
        print(repro4_tables(res, md=False))
        print(f"({time.perf_counter() - t0:.1f} s)\n")
        if not args.no_figures and not args.quick:
            repro4_figure(res, os.path.join(FIG_DIR, "repro4_lsq_floor.png"))
        if args.write_docs:
            replace_marked_section(args.write_docs, "repro:4", repro4_doc(res, cmd, today))

    if args.only in (None, "5"):
        t0 = time.perf_counter()
        kw = dict(feedbacks=("none", "ef14", "ef21"), compressors=("topk:ratio=0.1", "identity"),
                  rounds=500) if args.quick else {}
        cells = build_table(**kw)
        secs = time.perf_counter() - t0
        print(f"Reproduction 5: kB per client to ||grad f||^2 <= {TABLE_TOL:g} (rounds), breast cancer "
              f"logreg, {TABLE_CLIENTS} clients")
        print(table_text(cells, md=False))
        print(f"({secs:.1f} s; {client_seed_note()})")
        if args.write_docs:
            replace_marked_section(args.write_docs, "repro:5", repro5_doc(cells, cmd, today, secs))
    return 0


def repro4_doc(res: Repro4, cmd: str, today: str) -> str:
    return "\n".join([
        "## 4. EF14's error floor shrinks like γ²; EF21 and EControl reach machine precision",
        "",
        f"Heterogeneous least squares (`lsq`, n = {LSQ['n']}, d = {LSQ['d']}, m = {LSQ['m']} rows per "
        f"client, ζ = {LSQ['zeta']}: the clients' minimizers differ), `{LSQ_COMPRESSOR}` (α = 0.1), "
        f"float64 on the wire, x⁰ = 0. Stepsizes are multiples of EF21's theory stepsize "
        f"1/(L + L_QM ξ(α)). EF14 runs {EF14_ROUNDS}/multiplier rounds (its floor is reached after "
        "~1/(γμ) rounds); the floor is the mean over the last quarter of the rounds.",
        "",
        "```sh",
        cmd,
        "```",
        "",
        f"Measured {today}:",
        "",
        repro4_tables(res, md=True),
        "",
        "![EF14 floors, their slope against γ, and EControl's η](figures/repro4_lsq_floor.png)",
        "",
        REPRO4_CONCLUSION,
    ])


def repro5_doc(cells: list, cmd: str, today: str, secs: float) -> str:
    rule = ("γ is EF21's theory stepsize 1/(L + L_QM ξ(α)) for the compressor's α, the same for every "
            "feedback in the row (for `none` and `ef14` it is only a reference point); PowerSGD "
            "reports α = 0 for a vector (no contraction bound), so its row uses α = 1, γ = 1/L.")
    return "\n".join([
        "## 5. Bits to accuracy, every feedback × compressor pair",
        "",
        f"Breast cancer logistic regression (`logreg`, {TABLE_CLIENTS} clients, λ = 0.1, d = 31), "
        f"float64 on the wire, x⁰ = 0. Each cell: kilobytes one client sent (real message sizes, "
        f"headers included) until ‖∇f‖² ≤ {TABLE_TOL:g}, and the round in parentheses; "
        f"`– (g)` = not reached in {TABLE_ROUNDS} rounds, final ‖∇f‖² = g; `div@t` = diverged at "
        f"round t. {rule} Randomized compressors: {client_seed_note()}. "
        "EF21-SGDM runs with its default momentum 0.1, EControl with η = 0.1.",
        "",
        "```sh",
        cmd,
        "```",
        "",
        f"Measured {today} ({secs:.0f} s on this machine):",
        "",
        table_text(cells, md=True),
        "",
        REPRO5_CONCLUSION,
    ])


REPRO4_CONCLUSION = (
    "EF14 does not converge on this problem: at every stepsize it settles into a floor around x* "
    "(∇fᵢ(x*) ≠ 0, so each client's residual keeps filling and being sent two coordinates at a time), "
    "and the floor of both ‖x − x*‖² and f − f* falls by a factor 3.9–4.1 per halving of γ; the "
    "log-log fit over γ = 0.0052…0.041 gives slope 2.00, the γ² of the theory. EF21 and EControl "
    "(η = 0.1) at the same γ converge linearly to ‖x − x*‖² ≈ 5e−28, the float64 limit of their "
    "running sums, passing 1e−20 at rounds 1572 and 1652. The η sweep shows the trade-off only "
    "partly as stated: small η is stable but slow (η = 0.01 needs ~2100 rounds whatever the stepsize, "
    "its error correction being the bottleneck), η = 0.05–0.1 is as fast as EF21 at the theory "
    "stepsize and stable up to 64 × it (γ ≈ 1.33 ≈ 1.9/L; plain GD's limit is 2/L), while η = 0.2 "
    "is stable only up to 4 × and η ≥ 0.3 diverges even at the theory stepsize (with Top2 of 20, "
    "α = 0.1: η must stay below a few α, consistent with the paper's η ~ α scaling). At large "
    "multipliers EF21 itself is as fast as or faster than every EControl η here (the problem is "
    "deterministic: EControl's advantage in the paper is with stochastic gradients); "
    "`tests/python/test_reproductions_lsq.py` checks the floor ratio and the convergence to 1e−20.")
REPRO5_CONCLUSION = (
    "What the table shows at these stepsizes: with the conservative theory stepsize for TopK 10 % "
    "(γ = 0.013) every error-feedback method needs ~1250 rounds and ~100 kB per client, compressed GD "
    "without feedback stalls; the near-lossless compressors (bf16 cast, 4-bit quantization, QSGD, "
    "natural) get a 10–20× larger theory stepsize because their α is near 1, and so reach the "
    "tolerance with 6.5–8 kB, under half of the uncompressed 17.1 kB, bf16 cheapest. Scaled RandK "
    "(unbiased, ω = 9) at the stepsize for α = 1/(1+ω) diverges slowly under every error feedback "
    "(its error ‖C(x) − x‖² = ω‖x‖² exceeds ‖x‖², so it is not contractive as EF21/EF14 require); "
    "unscaled RandK (contractive, α = 0.1) converges with 128–147 kB, more than TopK. Scaled sign "
    "(α = 1/d, γ = 0.004) does not reach 1e−6 in 3000 rounds with any method. PowerSGD rank 1 "
    "(at 1/L, no theory) works under EF21 and EControl, not under EF14 or none. EF21-SGDM with momentum "
    "0.1 costs 1.5–2.5× the rounds of EF21 with the near-lossless compressors on these "
    "deterministic gradients (with TopK it is on par). EF21-W runs with wᵢ = Lᵢ/Σ Lⱼ; the Lᵢ here "
    "differ little, so it is expected to match EF21. Numbers are from one "
    "seed and one run each; bits are whole messages, header and checksum included, which weigh "
    "heavily at d = 31 (identity: 300 B per message, 248 of them values).")

if __name__ == "__main__":
    sys.exit(main())
