"""Smoothness constants and the theoretical stepsizes of EF21 (docs/algorithms.md).

With a contractive compressor of constant alpha (E||C(x) - x||^2 <= (1 - alpha)||x||^2):
theta = 1 - sqrt(1 - alpha), beta = (1 - alpha) / (1 - sqrt(1 - alpha)), xi = sqrt(beta / theta).
EF21's nonconvex stepsize is 1/(L + L_QM xi) (Richtarik, Sokolov, Fatkhullin 2021, Theorem 1);
"Error Feedback Reloaded" proves EF21-W, and plain EF21, at 1/(L + L_AM xi), with
L_AM = mean L_i <= L_QM = sqrt(mean L_i^2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import InvalidArgument

#: the stepsize rules :func:`stepsize` knows, by name
RULES = ("theory", "theory-am")


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0 < alpha <= 1:
        raise InvalidArgument(f"alpha must be in (0, 1], got {alpha}")
    return alpha


def theta(alpha: float) -> float:
    """theta(alpha) = 1 - sqrt(1 - alpha)."""
    return 1.0 - math.sqrt(1.0 - _check_alpha(alpha))


def beta(alpha: float) -> float:
    """beta(alpha) = (1 - alpha) / (1 - sqrt(1 - alpha)); 0 for alpha = 1."""
    return (1.0 - _check_alpha(alpha)) / theta(alpha)


def xi(alpha: float) -> float:
    """xi(alpha) = sqrt(beta / theta); 0 for exact communication (alpha = 1)."""
    return math.sqrt(beta(alpha) / theta(alpha))


@dataclass(frozen=True)
class Constants:
    """Smoothness constants of a problem: L of f, the clients' L_i, their arithmetic mean L_AM
    and quadratic mean L_QM (L_AM <= L_QM, equal when every L_i is the same)."""
    L: float
    L_i: tuple
    L_AM: float
    L_QM: float

    @property
    def ratio(self) -> float:
        """L_QM / L_AM: the predicted gain of the L_AM stepsize over the L_QM one."""
        return self.L_QM / self.L_AM

    def to_dict(self) -> dict:
        d = asdict(self)
        d["L_i"] = list(self.L_i)
        d["L_QM/L_AM"] = self.ratio
        return d


def constants(L: float, L_i: Sequence[float]) -> Constants:
    """L_AM = (1/n) sum L_i and L_QM = sqrt((1/n) sum L_i^2)."""
    L_i = np.asarray(L_i, dtype=np.float64)
    if L_i.ndim != 1 or not len(L_i) or np.any(L_i <= 0) or L <= 0:
        raise InvalidArgument("constants need L > 0 and one positive L_i per client")
    with np.errstate(over="ignore"):
        L_QM = float(np.sqrt(np.mean(L_i * L_i)))
    if not (math.isfinite(L) and np.all(np.isfinite(L_i)) and math.isfinite(L_QM)):
        raise InvalidArgument(f"the smoothness constants overflow (L = {L:.3g}, largest L_i = {L_i.max():.3g}, "
                              f"L_QM = {L_QM:.3g}): a smaller l_ratio or data scale")
    return Constants(L=float(L), L_i=tuple(float(v) for v in L_i), L_AM=float(L_i.mean()), L_QM=L_QM)


def problem_constants(problem) -> Constants:
    """The constants of a :class:`~efcomm.sim.problems.Problem`."""
    return constants(problem.L, problem.L_i)


def ef21_stepsize(L: float, L_mean: float, alpha: float, multiplier: float = 1.0) -> float:
    """multiplier / (L + L_mean xi(alpha)). Pass L_QM for EF21's original bound and L_AM for
    EF21-W's (and EF21's, per "Error Feedback Reloaded")."""
    if multiplier <= 0:
        raise InvalidArgument(f"stepsize multiplier must be > 0, got {multiplier}")
    return multiplier / (L + L_mean * xi(alpha))


def stepsize(rule: str, c: Constants, alpha: float, multiplier: float = 1.0) -> float:
    """The stepsize of a rule: ``theory`` = 1/(L + L_QM xi), ``theory-am`` = 1/(L + L_AM xi),
    each times ``multiplier``."""
    if rule == "theory":
        return ef21_stepsize(c.L, c.L_QM, alpha, multiplier)
    if rule == "theory-am":
        return ef21_stepsize(c.L, c.L_AM, alpha, multiplier)
    raise InvalidArgument(f"unknown stepsize rule {rule!r}; expected one of {', '.join(RULES)} or a number")


def ef21w_weights(L_i: Sequence[float]) -> np.ndarray:
    """EF21-W's client weights w_i = L_i / sum_j L_j."""
    L_i = np.asarray(L_i, dtype=np.float64)
    return L_i / L_i.sum()
