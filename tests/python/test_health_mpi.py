"""ef.health.Monitor across real MPI processes (efcomm.bench.faults, the fault-injection
campaign's own trials, small): a killed or stopped rank, or one that left early, is named on every
live rank within seconds, the coordinator's own rank included; a NaN, a mismatched call, a straggler and a slow
link are attributed; a fault-free run raises no alarm. Skipped where mpiexec, mpi4py or the MPI
backend is missing."""

from __future__ import annotations

import pytest

import efcomm as ef
from efcomm.bench import faults
from helpers import has_module

pytestmark = pytest.mark.mpi

if faults.mpiexec() is None:
    pytest.skip("mpiexec not found (pip install mpich)", allow_module_level=True)
if not has_module("mpi4py"):
    pytest.skip("mpi4py not installed (pip install mpi4py)", allow_module_level=True)
if ef.build_info()["mpi"] is None:
    pytest.skip("efcomm was built without the MPI backend", allow_module_level=True)


def check(job: dict) -> dict:
    s = job["score"]
    assert not s["problems"], (s, job["stderr"])
    assert not s["false_alarms"], (s, job["ranks"])
    return s


@pytest.mark.parametrize("kind,rank", [("crash", 1), ("hang", 2), ("crash", 0), ("hang", 0), ("leave", 0),
                                       ("leave", 2)])
def test_dead_stopped_or_departed_rank_is_named_within_5_s(kind, rank):
    s = check(faults.trial(kind, 3, rank=rank, step=3, steps=12))
    assert s["detected"], s
    assert s["latency"] < 5.0, s


def test_fault_free_run_raises_no_alarm():
    s = check(faults.trial(None, 3, steps=30))
    assert s["detected"] is None


@pytest.mark.parametrize("kind", ["nonfinite", "mismatch"])
def test_bad_step_is_attributed_and_skipped(kind):
    job = faults.trial(kind, 3, rank=1, step=2, steps=6)
    s = check(job)
    assert s["detected"], (s, job["ranks"])
    for r in job["ranks"]:
        assert r["steps_done"] == 6 and [k["step"] for k in r["skipped_steps"]] == [2]


def test_straggler_is_localized():
    s = check(faults.trial("straggler", 4, rank=2, step=3, steps=40, factor=2.0))
    assert s["detected"], s


def test_slow_link_is_localized():
    s = check(faults.trial("slow_link", 3, rank=0, peer=2, steps=40, delay=0.03))
    assert s["detected"], s


def test_campaign_quick_run_reports_every_target(tmp_path):
    import json
    import subprocess
    import sys

    doc = tmp_path / "reliability.md"
    proc = subprocess.run([sys.executable, "-m", "efcomm.cli", "bench", "faults", "--quick", "--json", "--no-progress",
                           "--write-docs", str(doc)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [s["kind"] for s in result["summary"]] == list(faults.KINDS)
    assert len(result["targets"]) == 7  # crash, hang, leave; straggler, slow link; overhead; no false alarm
    assert {r["compute"] for r in result["fault_free"]} == {"sleep", "busy"}
    assert result["overhead"]["collectives_per_allreduce"] == 2
    text = doc.read_text()
    assert "<!-- bench:faults:begin -->" in text and "Faults injected: detection per kind" in text
