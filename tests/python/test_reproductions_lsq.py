"""Issue 3, reproductions 4 and 5, small and deterministic versions of bench/reproduce_lsq.py:
EF14's error floor on heterogeneous least squares shrinks like gamma^2 while EF21 and EControl
reach machine precision, and the bits-to-accuracy table has a cell for every pair."""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repro():
    spec = importlib.util.spec_from_file_location("reproduce_lsq", ROOT / "bench" / "reproduce_lsq.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quick4(repro):
    return repro.run_repro4(quick=True)


def test_ef14_floor_shrinks_like_gamma_squared(quick4):
    floors = [row[3] for row in quick4.ef14]
    gammas = [row[1] for row in quick4.ef14]
    assert all(g2 == pytest.approx(g1 / 2) for g1, g2 in zip(gammas, gammas[1:]))
    for a, b in zip(floors, floors[1:]):
        assert 2.5 < a / b < 6.0, floors
    assert 1.6 < quick4.slope_dist < 2.4
    assert 1.6 < quick4.slope_f < 2.4
    assert all(row[3] > 1e-6 for row in quick4.ef14), "EF14 should stall, not converge"


def test_ef21_and_econtrol_reach_machine_precision(quick4):
    assert [fb for fb, _ in quick4.converged] == ["ef21", "econtrol:eta=0.1"]
    for fb, r in quick4.converged:
        assert not r.diverged, fb
        assert r.final["dist_sq"] < 1e-20, (fb, r.final)


def test_table_has_every_pair(repro):
    fbs, comps = ("none", "ef14", "ef21"), ("topk:ratio=0.1", "identity")
    cells = repro.build_table(feedbacks=fbs, compressors=comps, rounds=150)
    assert {(c.feedback, c.compressor) for c in cells} == {(f, c) for f in fbs for c in comps}
    ident = [c for c in cells if c.compressor == "identity"]
    assert all(c.rounds is not None and c.bits_per_client > 0 for c in ident)
    text = repro.table_text(cells, md=True)
    assert text.count("\n") == 1 + len(comps)
