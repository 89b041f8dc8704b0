"""The simulation loop: n clients in one process, each with its own ``ef.feedback`` worker object
and compressor, one receiver ``ef.feedback.Aggregate``, and bits counted from the real messages.

One round t (t = 1..T), from the iterate x_{t-1}:
- EF21-type methods (ef21, ef21w, ef21sgdm, econtrol): client i steps its feedback object with
  v_i = grad f_i(x_{t-1}) and sends the message; the aggregate returns the estimate g;
  x_t = x_{t-1} - gamma g. Round 1 carries EF21's initial message (g_i^0 = grad f_i(x_0), full or
  compressed as the feedback's ``init`` says), so x_1 = x_0 - gamma g^0 as in docs/algorithms.md.
- ef14 and none: the original form of EF14 (Seide et al. 2014; Stich et al. 2018) compresses the
  step, v_i = gamma grad f_i(x_{t-1}), and x_t = x_{t-1} - (1/n) sum_i Delta_i; the residual e_i
  then lives in units of the iterate. ``none`` sends the same vector with no residual, so it is
  compressed gradient descent x_t = x_{t-1} - gamma (1/n) sum_i C(grad f_i).
Row t of the history describes x_t and the bits sent in rounds 1..t (row 0: x_0, no bits).
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from ..bench._util import json_safe
from ..errors import InvalidArgument, NonFiniteError
from . import theory

#: feedback methods whose aggregate is an estimate of the gradient, stepped with gamma
EF21_TYPE = ("ef21", "ef21w", "ef21sgdm", "econtrol")
#: feedback methods that send the step gamma grad f_i and whose aggregate is the mean message
STEP_TYPE = ("none", "ef14")
FEEDBACKS = STEP_TYPE + EF21_TYPE
#: history columns, in CSV order
COLUMNS = ("round", "bits", "bits_per_client", "grad_norm_sq", "f", "f_gap", "dist_sq")
#: a run stops as diverged when ||grad f||^2 grows past this factor times its start (or max(1, .))
DIVERGENCE_FACTOR = 1e12
#: compressors that draw from (seed, step): each client gets its own seed (see :func:`client_specs`)
RANDOMIZED = ("randk", "qsgd", "natural")
#: the clients' seeds wrap around here: the core's seeds are int64s >= 0
SEED_RANGE = 1 << 63


def parse_spec(spec: str) -> tuple:
    """``"ef21:init=compressed"`` -> ``("ef21", {"init": "compressed"})``; numbers and booleans
    are converted."""
    name, _, rest = spec.partition(":")
    params = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"bad parameter {part!r} in {spec!r}; expected key=value")
        params[key.strip()] = _value(value.strip())
    return name.strip(), params


def _value(s: str):
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def client_specs(spec: str, n: int) -> list:
    """One compressor spec per client. A randomized compressor (:data:`RANDOMIZED`) gets seed
    ``(base * 1000 + i) mod 2^63`` for client i (base: the spec's seed, default 0), so the clients
    draw independent coordinates, as the theory of unbiased and random-sparsification compressors
    assumes; other specs are used as given."""
    import efcomm as ef

    name, params = parse_spec(spec)
    if name not in RANDOMIZED:
        return [spec] * n
    ef.compressor(spec)  # a bad seed (or other parameter) is named as the user wrote it, not as derived
    base = int(params.pop("seed", 0))
    rest = ",".join(f"{k}={v}" for k, v in params.items())
    return [f"{name}:{rest + ',' if rest else ''}seed={(base * 1000 + i) % SEED_RANGE}" for i in range(n)]


@dataclass
class RunResult:
    """One run: its configuration, the per-round history (numpy arrays keyed by :data:`COLUMNS`;
    NaN where a quantity is unknown for the problem) and how it ended."""
    label: str
    problem: str
    feedback: str
    compressor: str
    stepsize: float
    stepsize_rule: str
    multiplier: float
    participation: float
    alpha: float
    n: int
    d: int
    rounds: int
    history: dict = field(repr=False)
    diverged: bool = False
    diverged_at: Optional[int] = None
    seconds: float = 0.0

    @property
    def rounds_run(self) -> int:
        return int(self.history["round"][-1])

    @property
    def final(self) -> dict:
        """The last row of the history, None for the quantities the problem does not know."""
        return {k: _num(self.history[k][-1]) for k in COLUMNS}

    @property
    def bits_per_client_round(self) -> float:
        """Mean bits one client sent per round."""
        r = self.rounds_run
        return float(self.history["bits_per_client"][-1] / r) if r else 0.0

    def rounds_to(self, tol: float, metric: str = "grad_norm_sq") -> Optional[int]:
        """First round whose ``metric`` is <= tol, or None."""
        hit = np.flatnonzero(self.history[metric] <= tol)
        return int(self.history["round"][hit[0]]) if hit.size else None

    def bits_to(self, tol: float, metric: str = "grad_norm_sq") -> Optional[int]:
        """Total bits (all clients) sent until ``metric`` first is <= tol, or None."""
        r = self.rounds_to(tol, metric)
        return None if r is None else int(self.history["bits"][r])

    def write_csv(self, path) -> None:
        """One row per round, columns :data:`COLUMNS`; unknown quantities are empty cells."""
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for row in zip(*(self.history[k] for k in COLUMNS)):
                w.writerow(["" if isinstance(v, float) and math.isnan(v) else _cell(v) for v in row])

    def to_dict(self, history: bool = False) -> dict:
        """The run as JSON-ready values: non-finite numbers (a diverged run's) are None, as strict
        JSON has no NaN or Infinity."""
        d = {k: getattr(self, k) for k in ("label", "problem", "feedback", "compressor", "stepsize",
                                           "stepsize_rule", "multiplier", "participation", "alpha", "n", "d", "rounds",
                                           "diverged", "diverged_at", "seconds")}
        d.update(rounds_run=self.rounds_run, bits_per_client_round=self.bits_per_client_round,
                 final=self.final)
        if history:
            d["history"] = {k: [_num(v) for v in self.history[k]] for k in COLUMNS}
        return json_safe(d)


def _num(v):
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and math.isnan(v) else v


def _cell(v):
    return repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)


class _Progress:
    """Percent-granular progress on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, rounds: int, enabled: Optional[bool]):
        from ..bench._util import Progress

        self.bar = Progress(100, enabled=enabled)
        self.label, self.rounds, self.shown = label, max(rounds, 1), 0

    def update(self, t: int) -> None:
        pct = 100 * t // self.rounds
        while self.shown < min(pct, 100):
            self.shown += 1
            self.bar.step(f"{self.label} round {t}/{self.rounds}")

    def close(self) -> None:
        self.bar.close()


def run(problem, feedback: str = "ef21", compressor: str = "topk:k=1", rounds: int = 1000,
        stepsize: Union[str, float] = "theory", multiplier: float = 1.0, *,
        dtype: str = "float64", participation: float = 1.0, participation_seed: int = 0,
        label: Optional[str] = None, csv_path=None, progress: Optional[bool] = None) -> RunResult:
    """Runs ``rounds`` rounds of ``feedback`` x ``compressor`` (spec strings, e.g.
    ``"ef21:init=compressed"``, ``"topk:k=1"``) on ``problem`` from ``problem.x0``.

    ``stepsize``: a number, or a rule of :func:`efcomm.sim.theory.stepsize` (``"theory"`` is
    EF21's 1/(L + L_QM xi(alpha)), ``"theory-am"`` 1/(L + L_AM xi(alpha))); either is multiplied
    by ``multiplier``. ``dtype`` is what travels (float64 or float32); the iterate stays float64.
    EF21-W's weights w_i = L_i / sum L_j come from the problem. A run whose ||grad f||^2 becomes
    non-finite or grows by :data:`DIVERGENCE_FACTOR` stops and is marked diverged.

    ``participation`` p < 1 is partial participation (EF21-PP for the EF21 family): from round 2
    on each client takes part with probability p, drawn from ``numpy.random.default_rng(
    participation_seed)``; an absent client sends nothing (None to the aggregate, which keeps its
    share) and keeps its state, and only senders' bits count. Round 1 carries every client's
    initial message, as EF21-PP starts from g_i^0 = grad f_i(x_0) for all i."""
    import efcomm as ef
    from efcomm import feedback as ef_feedback

    fb_name, fb_params = parse_spec(feedback)
    if fb_name not in FEEDBACKS:
        raise InvalidArgument(f"unknown feedback {fb_name!r}; expected one of {', '.join(FEEDBACKS)}")
    given = [k for k in ("weight", "n") if k in fb_params]
    if fb_name == "ef21w" and given:
        raise InvalidArgument(f"{feedback}: EF21-W's weight and n come from the problem (w_i = L_i / sum_j L_j "
                              f"over its {problem.n} clients): drop {' and '.join(k + '=' for k in given)} "
                              "from the feedback spec")
    if rounds < 0:
        raise InvalidArgument(f"rounds must be >= 0, got {rounds}")
    if dtype not in ("float64", "float32"):
        raise InvalidArgument(f"dtype must be float64 or float32, got {dtype!r}")
    if not 0 < participation <= 1:
        raise InvalidArgument(f"participation must be in (0, 1], got {participation}")
    n, d = problem.n, problem.d
    specs = client_specs(compressor, n)
    comps = [ef.compressor(s) for s in specs]
    alpha = comps[0].alpha(d)
    consts = theory.problem_constants(problem)
    if stepsize in theory.RULES and comps[0].omega(d):
        warnings.warn(f"{compressor} is unbiased (omega = {comps[0].omega(d):.3g}): its alpha = 1/(1 + omega) = "
                      f"{alpha:.3g} is that of C/(1 + omega), which error feedback does not apply; C itself contracts "
                      + (f"only with alpha = 1 - omega = {1 - comps[0].omega(d):.3g}" if comps[0].omega(d) < 1 else
                         "not at all (omega >= 1)")
                      + f": the {stepsize} stepsize's guarantee does not hold (a contractive form: scaled=false for "
                        "randk)", RuntimeWarning, stacklevel=2)
    if stepsize in theory.RULES and not alpha > 0:
        # The theory's stepsizes need a contractive compressor; one that guarantees no contraction
        # (PowerSGD: alpha = 0) gets its stepsize from the user.
        raise InvalidArgument(f"the {stepsize} stepsize needs a contractive compressor (alpha > 0), but "
                              f"{compressor} has alpha = 0: give a number instead (efcomm sim --stepsize 0.01)")
    if isinstance(stepsize, str):
        rule, gamma = stepsize, theory.stepsize(stepsize, consts, alpha, multiplier)
    else:
        rule, gamma = "fixed", float(stepsize) * multiplier
    if not 0 < gamma < math.inf:
        raise InvalidArgument(f"stepsize must be a finite number > 0, got {gamma}")

    weights = theory.ef21w_weights(problem.L_i) if fb_name == "ef21w" else None
    workers = [ef_feedback.make(fb_name, comps[i], **fb_params,
                                 **({"weight": float(weights[i]), "n": n} if weights is not None else {}))
               for i in range(n)]
    # EF21-W's receiver is EF21's running sum g += sum w_i decoded, with the weights w_i.
    agg = ef_feedback.Aggregate(fb_name, n, weights=None if weights is None else weights.tolist(), shape=(d,),
                                 dtype=dtype)
    # ef14/none compress the step gamma grad f_i and move by the mean message; EF21-type methods
    # compress gradients and move by gamma times the estimate.
    v_scale, x_scale = (gamma, 1.0) if fb_name in STEP_TYPE else (1.0, gamma)
    np_dtype = np.dtype(dtype)

    label = label or f"{feedback} + {compressor}"
    hist = {k: [] for k in COLUMNS}
    x = problem.x0.copy()
    G = problem.grads(x)
    bits = 0
    diverged_at = None
    part_rng = np.random.default_rng(participation_seed)
    bar = _Progress(label, rounds, progress)
    t0 = time.perf_counter()

    def record(t):
        with np.errstate(all="ignore"):  # a diverging run overflows: it is marked diverged, not warned about
            gf = G.mean(axis=0)
            gn = float(gf @ gf)
        hist["round"].append(t)
        hist["bits"].append(bits)
        hist["bits_per_client"].append(bits / n)
        hist["grad_norm_sq"].append(gn)
        with np.errstate(all="ignore"):
            # Overflowed (a diverging run: inf - inf is NaN) reads as inf, not as the empty cell
            # of a quantity the problem does not know.
            blown = not np.all(np.isfinite(x))
            f = problem.f(x)
            hist["f"].append(math.inf if blown and math.isnan(f) else f)
            gap = problem.f_gap(x)
            hist["f_gap"].append(math.nan if gap is None else math.inf if blown and math.isnan(gap) else gap)
            if problem.x_star is None:
                hist["dist_sq"].append(math.nan)
            else:
                e = x - problem.x_star
                hist["dist_sq"].append(float(e @ e))
        return gn

    gn0 = record(0)
    limit = DIVERGENCE_FACTOR * max(gn0, 1.0)
    try:
        for t in range(1, rounds + 1):
            V = (v_scale * G).astype(np_dtype, copy=False)
            try:
                present = (part_rng.random(n) < participation if participation < 1 and t > 1
                           else np.ones(n, dtype=bool))
                msgs = [workers[i].step(np.ascontiguousarray(V[i]), step=t - 1) if present[i] else None
                        for i in range(n)]
            except NonFiniteError:
                diverged_at = t
                break
            bits += 8 * sum(m.nbytes for m in msgs if m is not None)
            g = np.asarray(agg.update(msgs), dtype=np.float64)
            with np.errstate(all="ignore"):
                x = x - x_scale * g
                G = problem.grads(x)
            gn = record(t)
            bar.update(t)
            if not (math.isfinite(gn) and gn <= limit and np.all(np.isfinite(x))):
                diverged_at = t
                break
    finally:
        bar.close()
    result = RunResult(label=label, problem=problem.name, feedback=feedback,
                       compressor=ef.compressor(compressor).spec,  # the user's (clients derive seeds)
                       stepsize=gamma, stepsize_rule=rule, multiplier=multiplier, participation=participation,
                       alpha=alpha, n=n, d=d,
                       rounds=rounds, history={k: np.asarray(v) for k, v in hist.items()},
                       diverged=diverged_at is not None, diverged_at=diverged_at,
                       seconds=time.perf_counter() - t0)
    if csv_path is not None:
        result.write_csv(csv_path)
    return result
