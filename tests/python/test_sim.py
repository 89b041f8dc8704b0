"""The simulator: problems' gradients and smoothness constants against brute force, the stepsize
formulas, output files, the command line, and reproduction 1 of issue 3."""

import csv
import json
import math
import os

import numpy as np
import pytest

import efcomm as ef
from efcomm import sim
from efcomm.cli import main as cli_main
from helpers import has_module


def _problems():
    probs = [sim.Counterexample(), sim.LeastSquares(n=3, d=4, m=6, zeta=2.0, l_ratio=5.0, seed=1),
             sim.synthetic_logreg(n=3, d=4, m=7, l_ratio=10.0, lam=0.3, seed=2)]
    if has_module("sklearn"):
        probs.append(sim.breast_cancer(n=4, lam=0.1))
    return probs


def _num_grad(f, x, h=1e-6):
    e = np.eye(len(x))
    return np.array([(f(x + h * e[j]) - f(x - h * e[j])) / (2 * h) for j in range(len(x))])


def _num_hessian(g, x, h=1e-5):
    e = np.eye(len(x))
    H = np.stack([(g(x + h * e[j]) - g(x - h * e[j])) / (2 * h) for j in range(len(x))])
    return (H + H.T) / 2


@pytest.mark.parametrize("prob", _problems(), ids=lambda p: p.name)
def test_gradients_match_finite_differences(prob):
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.standard_normal(prob.d)
        for i in range(prob.n):
            num = _num_grad(lambda z: prob.f_i(i, z), x)
            np.testing.assert_allclose(prob.grad_i(i, x), num, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(prob.grads(x).mean(axis=0), prob.grad(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prob", _problems(), ids=lambda p: p.name)
def test_smoothness_bounds_numerical_hessian(prob):
    """L_i and L bound the numerical Hessian's spectral norm at random points; for quadratics
    they are exact."""
    rng = np.random.default_rng(1)
    exact = isinstance(prob, sim.Quadratic)
    for x in [prob.x0, *rng.standard_normal((3, prob.d))]:
        for i in range(prob.n):
            lam = np.abs(np.linalg.eigvalsh(_num_hessian(lambda z: prob.grad_i(i, z), x))).max()
            assert lam <= prob.L_i[i] * (1 + 1e-6)
            if exact:
                assert lam == pytest.approx(prob.L_i[i], rel=1e-6)
        lam = np.abs(np.linalg.eigvalsh(_num_hessian(prob.grad, x))).max()
        assert lam <= prob.L * (1 + 1e-6)
        if exact:
            assert lam == pytest.approx(prob.L, rel=1e-6)


def test_logreg_bound_attained_at_zero_without_data_curvature_loss():
    """At x = 0 every sigmoid' is 1/4 and the regularizer's curvature is its maximum 2 lam, so the
    Hessian of f_i there is exactly A_i^T A_i/(4 m_i) + 2 lam I: the bound L_i is tight."""
    p = sim.synthetic_logreg(n=2, d=3, m=5, lam=0.5, seed=3)
    for i in range(p.n):
        lam = np.linalg.eigvalsh(_num_hessian(lambda z: p.grad_i(i, z), np.zeros(p.d)))[-1]
        assert lam == pytest.approx(p.L_i[i], rel=1e-6)


def test_quadratic_optimum():
    p = sim.LeastSquares(n=4, d=5, m=8, zeta=3.0, seed=4)
    np.testing.assert_allclose(p.grad(p.x_star), 0, atol=1e-12)
    A = np.vstack([a / math.sqrt(len(a)) for a in p.A_i])
    b = np.concatenate([bi / math.sqrt(len(bi)) for bi in p.b_i])
    np.testing.assert_allclose(p.x_star, np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-10)
    x = np.ones(5)
    assert p.f_gap(x) == pytest.approx(p.f(x) - p.f_star, rel=1e-9)
    c = sim.Counterexample()
    np.testing.assert_allclose(c.L_i, 35.0, rtol=1e-13)
    assert c.f_star == 0 and not c.x_star.any()
    # zeta = 0 and no noise: every client's minimizer is x*, so every grad f_i(x*) = 0
    p0 = sim.LeastSquares(n=3, d=4, m=8, zeta=0.0, seed=5)
    np.testing.assert_allclose(p0.grads(p0.x_star), 0, atol=1e-12)


def test_heterogeneity_of_L_i():
    p = sim.synthetic_logreg(n=8, d=10, m=40, l_ratio=100.0, lam=0.0)
    assert 30 < p.L_i.max() / p.L_i.min() < 300
    c = sim.problem_constants(p)
    assert c.L <= c.L_AM <= c.L_QM
    assert c.L_AM == pytest.approx(np.mean(p.L_i)) and c.L_QM == pytest.approx(np.sqrt(np.mean(p.L_i ** 2)))
    assert sim.problem_constants(sim.synthetic_logreg(n=8, l_ratio=1.0, lam=0.0)).ratio < c.ratio


def test_stepsize_formulas():
    for a in (0.01, 1 / 3, 0.5, 0.9):
        th, be = 1 - math.sqrt(1 - a), (1 - a) / (1 - math.sqrt(1 - a))
        assert sim.theta(a) == pytest.approx(th) and sim.beta(a) == pytest.approx(be)
        assert sim.xi(a) == pytest.approx(math.sqrt(be / th))
        # xi(alpha) <= 2/alpha - 1 (EF21 paper, Lemma 3's simplification)
        assert sim.xi(a) <= 2 / a - 1 + 1e-12
    assert sim.xi(1.0) == 0 and sim.theta(1.0) == 1
    c = sim.constants(2.0, [1.0, 3.0])
    assert c.L_AM == 2.0 and c.L_QM == pytest.approx(math.sqrt(5))
    a = 0.25
    assert sim.stepsize("theory", c, a) == pytest.approx(1 / (2 + math.sqrt(5) * sim.xi(a)))
    assert sim.stepsize("theory-am", c, a, multiplier=3) == pytest.approx(3 / (2 + 2 * sim.xi(a)))
    assert sim.stepsize("theory", c, 1.0) == pytest.approx(1 / c.L)
    np.testing.assert_allclose(sim.ef21w_weights([1, 3]), [0.25, 0.75])
    with pytest.raises(ef.InvalidArgument):
        sim.xi(0.0)
    with pytest.raises(ef.InvalidArgument):
        sim.stepsize("nope", c, a)
    with pytest.raises(ef.InvalidArgument):
        sim.ef21_stepsize(1.0, 1.0, 0.5, multiplier=0)


def test_parse_spec():
    assert sim.parse_spec("ef21") == ("ef21", {})
    assert sim.parse_spec("econtrol:eta=0.1") == ("econtrol", {"eta": 0.1})
    assert sim.parse_spec("ef21:init=compressed") == ("ef21", {"init": "compressed"})
    with pytest.raises(ef.InvalidArgument):
        sim.parse_spec("ef21:init")


def test_make_problem_names():
    for name in sim.PROBLEMS:
        if name == "logreg" and not has_module("sklearn"):
            continue
        p = sim.make_problem(name, clients=4)
        assert p.n == (3 if name == "counterexample" else 4)
    with pytest.raises(ef.InvalidArgument):
        sim.make_problem("nope")


# ---- runs (need ef.feedback) -------------------------------------------------------------------

def test_run_records_history_and_bits(tmp_path):
    p = sim.LeastSquares(n=4, d=6, m=10, seed=0)
    r = sim.run(p, "ef21", "topk:k=2", rounds=30, csv_path=tmp_path / "run.csv")
    assert not r.diverged and r.rounds_run == 30
    assert len(r.history["round"]) == 31 and r.history["bits"][0] == 0
    # bits come from the messages: 4 clients, round 1 carries the full gradient, then TopK-2
    topk = ef.compressor("topk:k=2").wire_bytes(6, "float64") * 8
    assert r.history["bits"][-1] >= 29 * 4 * topk * 0.5
    assert np.all(np.diff(r.history["bits"]) > 0)
    assert r.history["dist_sq"][-1] < r.history["dist_sq"][0]
    rows = list(csv.DictReader(open(tmp_path / "run.csv")))
    assert len(rows) == 31 and list(rows[0]) == list(sim.COLUMNS)
    assert float(rows[-1]["bits"]) == r.history["bits"][-1]


def test_ef21w_weights_are_the_problems():
    p = sim.Counterexample()
    for spec in ("ef21w:n=3", "ef21w:weight=0.5,init=full"):
        with pytest.raises(ef.InvalidArgument, match="EF21-W's weight and n come from the problem"):
            sim.run(p, spec, "topk:k=1", rounds=2)
    assert not sim.run(p, "ef21w:init=compressed", "topk:k=1", rounds=2).diverged


def test_client_seeds_stay_in_range():
    from efcomm.sim.runner import client_specs

    # base * 1000 + i passed the core's int64 seeds for a large base: the clients' seeds wrap around.
    specs = client_specs("randk:ratio=0.5,seed=18446744073709551", 3)
    seeds = [int(s.rsplit("seed=", 1)[1]) for s in specs]
    assert len(set(seeds)) == 3 and all(0 <= v < 2 ** 63 for v in seeds)
    assert [ef.compressor(s).spec for s in specs]
    assert client_specs("randk:ratio=0.5,seed=2", 2) == ["randk:ratio=0.5,seed=2000", "randk:ratio=0.5,seed=2001"]
    with pytest.warns(RuntimeWarning, match="is unbiased"):  # the theory stepsize, for an unbiased RandK
        r = sim.run(sim.Counterexample(), "ef21", "randk:ratio=0.5,seed=9223372036854775807", rounds=3)
    assert r.rounds_run == 3


def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    p = sim.Counterexample()
    rs = [sim.run(p, fb, "topk:k=1", rounds=20, stepsize=0.01) for fb in ("none", "ef21")]
    paths = sim.plot_all(rs, tmp_path)
    assert paths and all(open(q, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for q in paths)


def test_reproduction_1_counterexample():
    """Issue 3, reproduction 1: on the 3-client counterexample with Top1, compressed gradient
    descent without feedback diverges, while EF14 and EF21 converge to x* = 0."""
    p = sim.Counterexample()
    gamma = 0.05
    none = sim.run(p, "none", "topk:k=1", rounds=2000, stepsize=gamma)
    assert none.diverged or none.final["dist_sq"] > 1e3 * none.history["dist_sq"][0]
    for fb in ("ef14", "ef21"):
        r = sim.run(p, fb, "topk:k=1", rounds=2000, stepsize=gamma)
        assert not r.diverged
        assert r.final["dist_sq"] < 1e-10, (fb, r.final)
    # the theoretical EF21 stepsize converges too
    r = sim.run(p, "ef21", "topk:k=1", rounds=2000, stepsize="theory")
    assert r.final["dist_sq"] < 1e-6


# ---- command line ------------------------------------------------------------------------------

def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["sim", "--help"])
    assert e.value.code == 0
    assert "--feedback" in capsys.readouterr().out


def test_cli_json(tmp_path, capsys):
    rc = cli_main(["sim", "--problem", "counterexample", "--feedback", "none", "ef21",
                   "--compressor", "topk:k=1", "--rounds", "50", "--stepsize", "0.05",
                   "--out", str(tmp_path), "--json", "--no-progress"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["feedback"] for r in out["runs"]] == ["none", "ef21"]
    assert out["constants"]["L_QM"] == pytest.approx(35.0)
    assert (tmp_path / "summary.json").exists()
    assert len(list(tmp_path.glob("*.csv"))) == 2
    if has_module("matplotlib"):
        assert list(tmp_path.glob("*.png"))


def test_cli_json_is_strict_when_a_run_diverges(tmp_path, capsys):
    """A diverged run's infinite |grad f|^2 is null in stdout and summary.json, not Infinity."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the overflow is the divergence, not a warning
        assert cli_main(["sim", "--rounds", "50", "--stepsize", "1e200", "--json", "--no-plots", "--no-progress",
                         "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)
    assert out == json.loads((tmp_path / "summary.json").read_text(), parse_constant=pytest.fail)
    run = out["runs"][0]
    assert run["diverged"] and run["final"]["grad_norm_sq"] is None
    r = sim.run(sim.Counterexample(), "ef21", "topk:k=1", rounds=50, stepsize=1e200)
    assert math.isinf(r.final["grad_norm_sq"])  # the API's history keeps the number
    json.dumps(r.to_dict(history=True), allow_nan=False)


def test_cli_without_matplotlib_notes_on_stderr(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert cli_main(["sim", "--rounds", "5", "--out", str(tmp_path), "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["plots"] == []
    assert captured.err.startswith("note: no plots (plots need matplotlib")


def test_cli_table(capsys):
    rc = cli_main(["sim", "--problem", "lsq", "--clients", "3", "--dim", "5", "--samples", "8",
                   "--feedback", "ef21", "--compressor", "topk:k=2", "--rounds", "20"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "L_QM" in out and "ef21" in out and "topk" in out


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "-1"], "argument --rounds: must be >= 0, got -1"),
    (["--clients", "-2"], "argument --clients: must be > 0, got -2"),
    (["--participation", "2"], "argument --participation: must be in (0, 1], got 2"),
    (["--multiplier", "0"], "argument --multiplier: must be a finite number > 0, got 0"),
    (["--multiplier", "inf"], "argument --multiplier: must be a finite number > 0, got inf"),
    (["--problem", "lsq", "--dim", "0"], "argument --dim: must be > 0, got 0"),
    (["--problem", "lsq", "--samples", "-3"], "argument --samples: must be > 0, got -3"),
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
])
def test_cli_rejects_bad_numbers(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["sim", "--no-plots", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--compressor", "bogus"], "unknown compressor 'bogus'"),
    (["--feedback", "bogus"], "unknown feedback 'bogus'"),
    (["--stepsize", "bogus"], "--stepsize must be theory or theory-am or a finite number > 0, got 'bogus'"),
    (["--stepsize", "inf"], "--stepsize must be theory or theory-am or a finite number > 0, got 'inf'"),
    (["--stepsize", "-0.1"], "--stepsize must be theory or theory-am or a finite number > 0, got '-0.1'"),
    (["--problem", "lsq", "--l-ratio", "0.5"], "l_ratio must be a finite number >= 1"),
    (["--problem", "lsq", "--l-ratio", "nan"], "l_ratio must be a finite number >= 1, got nan"),
    (["--problem", "logreg-synth", "--l-ratio", "inf"], "l_ratio must be a finite number >= 1, got inf"),
    (["--problem", "lsq", "--zeta", "inf"], "zeta and noise must be finite"),
    (["--problem", "logreg-synth", "--lam", "nan"], "lam must be a finite number >= 0, got nan"),
    # PowerSGD guarantees no contraction (alpha = 0): the theory's stepsize does not exist for it.
    (["--compressor", "powersgd:rank=1", "--problem", "lsq", "--dim", "5", "--samples", "5"],
     "the theory stepsize needs a contractive compressor (alpha > 0), but powersgd:rank=1 has alpha = 0: "
     "give a number instead"),
    # EF21-W's weights are the problem's: given in the spec as well, make() got them twice (a TypeError).
    (["--feedback", "ef21w:weight=0.5"], "ef21w:weight=0.5: EF21-W's weight and n come from the problem"),
    (["--feedback", "ef21w:n=3"], "drop n= from the feedback spec"),
    # A client's seed derives from the spec's: the error names the seed as given.
    (["--compressor", "randk:ratio=0.5,seed=1.5"], "randk: parameter seed='1.5' is not an integer"),
    # Fewer data than dimensions: x* is not unique (numpy's LinAlgError, or a wrong x* silently).
    (["--problem", "lsq", "--clients", "1", "--samples", "1", "--dim", "5"], "the mean Hessian is singular"),
    (["--problem", "lsq", "--clients", "3", "--l-ratio", "1e300"], "the smoothness constants overflow"),
    (["--feedback", "ef21", "ef21"], "a --feedback/--compressor pair given twice (ef21__topk_k=1)"),
])
def test_cli_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert cli_main(["sim", "--rounds", "2", "--no-plots", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efcomm sim: error: ") and message in err and err.count("\n") == 1


def test_cli_out_of_memory_is_one_line_and_status_2(monkeypatch, capsys):
    # (A real one: --problem lsq --dim 100000 asks numpy for 74.5 GiB.)
    import efcomm.sim.cli as sim_cli

    def exhausted(args):
        raise MemoryError("Unable to allocate 74.5 GiB for an array with shape (100000, 100000)")

    monkeypatch.setattr(sim_cli, "main", exhausted)
    assert cli_main(["sim", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efcomm sim: error: out of memory (Unable to allocate 74.5 GiB") and "--dim" in err, err


def test_cli_numeric_stepsize_runs_a_compressor_without_alpha(capsys):
    assert cli_main(["sim", "--compressor", "powersgd:rank=1", "--problem", "lsq", "--dim", "5", "--samples", "5",
                     "--stepsize", "0.01", "--rounds", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["rounds_run"] == 5


def test_cli_out_that_cannot_be_a_directory(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    for out, why in ((file, "File exists"), (file / "sub", "Not a directory")):
        assert cli_main(["sim", "--rounds", "2", "--no-plots", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"efcomm sim: error: --out {out}: cannot create the directory ({why})"), err
    assert file.read_text() == ""


def test_cli_out_not_writable(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    if os.access(out, os.W_OK):
        pytest.skip("this user writes into read-only directories (root)")
    assert cli_main(["sim", "--rounds", "2", "--no-plots", "--out", str(out)]) == 2
    assert f"--out {out}: cannot write into this directory" in capsys.readouterr().err
    assert not list(out.iterdir())


def test_theory_stepsize_with_an_unbiased_compressor_warns_and_the_label_keeps_the_seed():
    # alpha(d) of an unbiased C is that of C/(1 + omega), which EF21 does not apply.
    with pytest.warns(RuntimeWarning, match=r"natural:seed=5 is unbiased \(omega = 0.125\).*alpha = 1 - omega = 0.875"):
        r = sim.run(sim.Counterexample(), "ef21", "natural:seed=5", rounds=2)
    assert r.compressor == "natural:seed=5"  # the user's spec, not client 0's derived seed


def test_a_diverged_run_writes_inf_not_an_empty_cell(tmp_path):
    import csv

    p = sim.make_problem("lsq", clients=3, seed=0, dim=5, samples=5)
    r = sim.run(p, "ef21", "identity", rounds=400, stepsize=1e3, csv_path=str(tmp_path / "run.csv"))
    assert r.diverged
    rows = list(csv.DictReader(open(tmp_path / "run.csv")))
    assert rows[-1]["f"] == "inf" or float(rows[-1]["f"]) > 1e12, rows[-1]
    assert rows[-1]["f_gap"] != "", rows[-1]
