"""The research simulator: n clients in one process, any error feedback x compressor, bits
counted from the real wire payloads.

```
p = ef.sim.Counterexample()
r = ef.sim.run(p, "ef21", "topk:k=1", rounds=500, stepsize="theory")
r.final["dist_sq"], r.history["bits"][-1]
```
"""

from .plots import plot_all, plot_runs
from .problems import (PROBLEMS, Counterexample, LeastSquares, LogisticRegression, Problem, Quadratic,
                       breast_cancer, make_problem, synthetic_logreg)
from .runner import COLUMNS, FEEDBACKS, RunResult, parse_spec, run
from .theory import Constants, beta, constants, ef21_stepsize, ef21w_weights, problem_constants, stepsize, theta, xi

__all__ = ["PROBLEMS", "Problem", "Quadratic", "LeastSquares", "Counterexample", "LogisticRegression",
           "breast_cancer", "synthetic_logreg", "make_problem", "run", "RunResult", "COLUMNS", "FEEDBACKS",
           "parse_spec", "Constants", "constants", "problem_constants", "theta", "beta", "xi",
           "ef21_stepsize", "stepsize", "ef21w_weights", "plot_runs", "plot_all"]
