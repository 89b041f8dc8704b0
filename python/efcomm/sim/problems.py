"""Distributed test problems: n clients, client i holds f_i, and f = (1/n) sum_i f_i.

Every problem is float64 numpy and exposes, per client, the value, the gradient and a smoothness
constant L_i (||grad f_i(x) - grad f_i(y)|| <= L_i ||x - y||); L is a smoothness constant of f
itself (exact for quadratics, an upper bound for logistic regression), and ``x_star``/``f_star``
where they are known in closed form.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..errors import InvalidArgument


def _lambda_max(h: np.ndarray) -> float:
    """Largest eigenvalue of a symmetric positive semidefinite matrix."""
    return float(np.linalg.eigvalsh(h)[-1]) if h.size else 0.0


class Problem:
    """Base class: ``n`` clients in dimension ``d``; subclasses define ``f_i`` and ``grad_i``."""

    #: short name used in file names and tables
    name: str = "problem"

    def __init__(self, n: int, d: int, L_i: Sequence[float], L: float, x0: np.ndarray,
                 x_star: Optional[np.ndarray] = None, f_star: Optional[float] = None):
        self.n, self.d = int(n), int(d)
        self.L_i = np.asarray(L_i, dtype=np.float64)
        self.L = float(L)
        self.x0 = np.asarray(x0, dtype=np.float64).copy()
        self.x_star = None if x_star is None else np.asarray(x_star, dtype=np.float64)
        self.f_star = None if f_star is None else float(f_star)

    def f_i(self, i: int, x: np.ndarray) -> float:
        raise NotImplementedError

    def grad_i(self, i: int, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def grads(self, x: np.ndarray) -> np.ndarray:
        """All clients' gradients at x as an (n, d) array."""
        return np.stack([self.grad_i(i, x) for i in range(self.n)])

    def f(self, x: np.ndarray) -> float:
        return float(np.mean([self.f_i(i, x) for i in range(self.n)]))

    def grad(self, x: np.ndarray) -> np.ndarray:
        return self.grads(x).mean(axis=0)

    def f_gap(self, x: np.ndarray) -> Optional[float]:
        """f(x) - f*, or None where f* is unknown."""
        return None if self.f_star is None else self.f(x) - self.f_star

    def describe(self) -> dict:
        return {"name": self.name, "n": self.n, "d": self.d, "L": self.L,
                "L_i_min": float(self.L_i.min()), "L_i_max": float(self.L_i.max()),
                "x_star_known": self.x_star is not None, "f_star_known": self.f_star is not None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, d={self.d}, L={self.L:.4g})"


class Quadratic(Problem):
    """f_i(x) = 1/2 x^T H_i x - q_i^T x + c_i with H_i symmetric positive semidefinite and the mean
    Hessian H positive definite, so x* = H^{-1} mean(q_i) is the unique minimizer.

    L_i = lambda_max(H_i) and L = lambda_max(H) are exact. f(x) - f* is evaluated as
    1/2 (x - x*)^T H (x - x*), which stays accurate down to machine precision where the
    difference of two function values would cancel."""

    name = "quadratic"

    def __init__(self, H: np.ndarray, q: np.ndarray, c: np.ndarray, x0: np.ndarray):
        H = np.asarray(H, dtype=np.float64)
        q = np.asarray(q, dtype=np.float64)
        self.H_i, self.q_i, self.c_i = H, q, np.asarray(c, dtype=np.float64)
        self.H = H.mean(axis=0)
        # x* must be unique: H positive definite (lsq: clients x samples >= dim, data of full rank).
        eig = np.linalg.eigvalsh(self.H)
        if not (np.all(np.isfinite(eig)) and eig[0] > 1e-12 * max(eig[-1], 1e-300)):
            raise InvalidArgument(f"{self.name}: the mean Hessian is singular (smallest eigenvalue {eig[0]:.3g}, "
                                  f"largest {eig[-1]:.3g}): x* is not unique; give more data than dimensions "
                                  "(lsq: clients x samples >= dim)")
        x_star = np.linalg.solve(self.H, q.mean(axis=0))
        super().__init__(n=H.shape[0], d=H.shape[1], L_i=[_lambda_max(h) for h in H],
                         L=_lambda_max(self.H), x0=x0, x_star=x_star)
        self.f_star = self.f(x_star)

    def f_i(self, i, x):
        return float(0.5 * x @ self.H_i[i] @ x - self.q_i[i] @ x + self.c_i[i])

    def grad_i(self, i, x):
        return self.H_i[i] @ x - self.q_i[i]

    def grads(self, x):
        return self.H_i @ x - self.q_i

    def f_gap(self, x):
        e = x - self.x_star
        return float(0.5 * e @ self.H @ e)


class LeastSquares(Quadratic):
    """Heterogeneous least squares, f_i(x) = 1/(2 m_i) ||A_i x - b_i||^2.

    Client i's data are Gaussian, scaled by s_i with s_i^2 spaced geometrically over
    [1, l_ratio] (so the L_i span about ``l_ratio``); its targets are b_i = A_i x_i* + noise with
    x_i* = x_c + zeta u_i, u_i a standard normal vector: ``zeta`` sets how far apart the
    clients' own minimizers are (zeta = 0 with no noise: every client shares x*)."""

    name = "lsq"

    def __init__(self, n: int = 10, d: int = 20, m: int = 50, zeta: float = 1.0,
                 l_ratio: float = 1.0, noise: float = 0.0, seed: int = 0):
        if m < 1 or d < 1 or n < 1:
            raise InvalidArgument("lsq: n, d and m must be positive")
        if not l_ratio >= 1 or not math.isfinite(l_ratio):  # `not >=`: NaN fails too
            raise InvalidArgument(f"lsq: l_ratio must be a finite number >= 1, got {l_ratio}")
        if not (math.isfinite(zeta) and math.isfinite(noise)):
            raise InvalidArgument(f"lsq: zeta and noise must be finite, got zeta={zeta}, noise={noise}")
        rng = np.random.default_rng(seed)
        scales = np.sqrt(np.geomspace(1.0, l_ratio, n))
        x_c = rng.standard_normal(d)
        H, q, c = [], [], []
        self.A_i, self.b_i = [], []
        for i in range(n):
            A = scales[i] * rng.standard_normal((m, d))
            b = A @ (x_c + zeta * rng.standard_normal(d)) + noise * rng.standard_normal(m)
            self.A_i.append(A)
            self.b_i.append(b)
            H.append(A.T @ A / m)
            q.append(A.T @ b / m)
            c.append(b @ b / (2 * m))
        super().__init__(np.stack(H), np.stack(q), np.array(c), x0=np.zeros(d))
        self.zeta = zeta


class Counterexample(Quadratic):
    """The 3-client counterexample (Beznosikov et al. 2020; EF21 paper, Example 1):
    f_i(x) = (a_i^T x)^2 + mu/2 ||x||^2 with a = (-3,2,2), (2,-3,2), (2,2,-3); x* = 0, f* = 0.
    From x0 = (1,1,1), compressed gradient descent with Top1 and no error feedback diverges for
    every stepsize. docs/algorithms.md writes mu = 1; the EF21 paper uses mu = 1/2 (both diverge)."""

    name = "counterexample"
    A = np.array([[-3.0, 2.0, 2.0], [2.0, -3.0, 2.0], [2.0, 2.0, -3.0]])

    def __init__(self, mu: float = 1.0, x0: Optional[Sequence[float]] = None):
        if mu <= 0:
            raise InvalidArgument(f"counterexample: mu must be > 0, got {mu}")
        H = np.stack([2.0 * np.outer(a, a) + mu * np.eye(3) for a in self.A])
        super().__init__(H, np.zeros((3, 3)), np.zeros(3),
                         x0=np.ones(3) if x0 is None else np.asarray(x0, dtype=np.float64))


class LogisticRegression(Problem):
    """Binary logistic regression with the nonconvex regularizer of the EF21 experiments:
    f_i(x) = (1/m_i) sum_j log(1 + exp(-y_j a_j^T x)) + lam sum_k x_k^2 / (1 + x_k^2),
    labels y_j in {-1, +1}.

    The logistic loss has Hessian (1/m_i) A_i^T D A_i with D <= 1/4, and
    |d^2/dt^2 t^2/(1+t^2)| = |2 - 6t^2| / (1+t^2)^3 <= 2, so
    L_i = ||A_i||_2^2 / (4 m_i) + 2 lam and L = lambda_max((1/n) sum_i A_i^T A_i / (4 m_i)) + 2 lam.
    x* and f* are unknown (nonconvex): the runs report ||grad f(x)||^2 and f(x)."""

    name = "logreg"

    def __init__(self, A_i: Sequence[np.ndarray], y_i: Sequence[np.ndarray], lam: float = 0.1,
                 x0: Optional[np.ndarray] = None, name: Optional[str] = None):
        if len(A_i) != len(y_i) or not A_i:
            raise InvalidArgument("logreg: one feature matrix and one label vector per client")
        if not lam >= 0 or not math.isfinite(lam):
            raise InvalidArgument(f"logreg: lam must be a finite number >= 0, got {lam}")
        self.A_i = [np.asarray(a, dtype=np.float64) for a in A_i]
        self.y_i = [np.asarray(y, dtype=np.float64) for y in y_i]
        for a, y in zip(self.A_i, self.y_i):
            if a.ndim != 2 or len(a) != len(y) or len(a) == 0:
                raise InvalidArgument("logreg: every client needs m_i >= 1 rows and as many labels")
            if not np.all(np.abs(y) == 1):
                raise InvalidArgument("logreg: labels must be -1 or +1")
        self.lam = float(lam)
        d = self.A_i[0].shape[1]
        grams = [a.T @ a / (4 * len(a)) for a in self.A_i]
        L_i = [_lambda_max(g) + 2 * lam for g in grams]
        L = _lambda_max(np.mean(grams, axis=0)) + 2 * lam
        if name is not None:
            self.name = name
        super().__init__(n=len(self.A_i), d=d, L_i=L_i, L=L,
                         x0=np.zeros(d) if x0 is None else x0)

    def f_i(self, i, x):
        margins = self.y_i[i] * (self.A_i[i] @ x)
        x2 = x * x
        return float(np.mean(np.logaddexp(0.0, -margins)) + self.lam * np.sum(x2 / (1 + x2)))

    def grad_i(self, i, x):
        A, y = self.A_i[i], self.y_i[i]
        # d/dt log(1 + exp(-t)) = -sigmoid(-t); the regularizer's derivative is 2x/(1+x^2)^2.
        s = -y * _sigmoid(-y * (A @ x))
        return A.T @ s / len(y) + self.lam * 2 * x / (1 + x * x) ** 2


def _sigmoid(t: np.ndarray) -> np.ndarray:
    # Written through exp(-|t|) so that no overflow warning fires for large |t|.
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, 1 / (1 + e), e / (1 + e))


def split_rows(n: int, m: int, rng: np.random.Generator) -> list:
    """Shuffled row indices split into n nearly equal contiguous parts."""
    if n > m:
        raise InvalidArgument(f"cannot split {m} samples across {n} clients")
    return np.array_split(rng.permutation(m), n)


def breast_cancer(n: int = 10, lam: float = 0.1, seed: int = 0) -> LogisticRegression:
    """Logistic regression on scikit-learn's embedded Wisconsin breast cancer data (569 samples,
    30 features, standardized, plus an intercept column: d = 31), shuffled and split across n
    clients. Needs scikit-learn (``pip install efcomm[sim]``)."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise InvalidArgument("the logreg problem uses scikit-learn's embedded data set: "
                              "pip install scikit-learn (or efcomm[sim])") from None
    data = load_breast_cancer()
    X = data.data
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    X = np.hstack([X, np.ones((len(X), 1))])
    y = np.where(data.target == 1, 1.0, -1.0)
    parts = split_rows(n, len(X), np.random.default_rng(seed))
    return LogisticRegression([X[p] for p in parts], [y[p] for p in parts], lam=lam, name="logreg")


def synthetic_logreg(n: int = 10, d: int = 20, m: int = 50, l_ratio: float = 100.0,
                     lam: float = 0.1, seed: int = 0) -> LogisticRegression:
    """Logistic regression on synthetic data with controlled heterogeneity of the L_i: client i's
    Gaussian features are scaled by s_i, s_i^2 spaced geometrically over [1, l_ratio], so the data
    part of L_i spans about ``l_ratio`` (L_QM / L_AM grows with it). Labels come from a planted
    linear model on the unscaled features with 10% of them flipped."""
    if not l_ratio >= 1 or not math.isfinite(l_ratio):
        raise InvalidArgument(f"logreg-synth: l_ratio must be a finite number >= 1, got {l_ratio}")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    scales = np.sqrt(np.geomspace(1.0, l_ratio, n))
    A_i, y_i = [], []
    for i in range(n):
        X = rng.standard_normal((m, d))
        y = np.where(X @ w >= 0, 1.0, -1.0)
        y[rng.random(m) < 0.1] *= -1
        A_i.append(scales[i] * X)
        y_i.append(y)
    return LogisticRegression(A_i, y_i, lam=lam, name="logreg-synth")


#: the problems the command line offers, by name
PROBLEMS = ("logreg", "logreg-synth", "lsq", "counterexample")


def make_problem(name: str, *, clients: int = 10, seed: int = 0, lam: float = 0.1,
                 zeta: float = 1.0, l_ratio: Optional[float] = None, dim: int = 20,
                 samples: int = 50) -> Problem:
    """Builds one of :data:`PROBLEMS` from the command line's parameters (``clients`` is ignored
    by the counterexample, which always has 3)."""
    if name == "logreg":
        return breast_cancer(n=clients, lam=lam, seed=seed)
    if name == "logreg-synth":
        return synthetic_logreg(n=clients, d=dim, m=samples, lam=lam, seed=seed,
                                l_ratio=100.0 if l_ratio is None else l_ratio)
    if name == "lsq":
        return LeastSquares(n=clients, d=dim, m=samples, zeta=zeta, seed=seed,
                            l_ratio=1.0 if l_ratio is None else l_ratio)
    if name == "counterexample":
        return Counterexample()
    raise InvalidArgument(f"unknown problem {name!r}; expected one of {', '.join(PROBLEMS)}")
