"""examples/recovery.py end to end: a rank killed mid-training is named by every other rank, the
job relaunches from the last checkpoint (model + Reducer state) and ends bit-identical to an
uninterrupted run. Skipped where mpiexec, mpi4py or the MPI backend is missing."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

import efcomm as ef
from efcomm.bench import faults
from helpers import has_module

pytestmark = pytest.mark.mpi

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "recovery.py"

if faults.mpiexec() is None or not has_module("mpi4py") or ef.build_info()["mpi"] is None:
    pytest.skip("needs mpiexec, mpi4py and efcomm's MPI backend (pip install mpich mpi4py)", allow_module_level=True)


def test_killed_rank_is_named_and_the_relaunch_resumes_bit_identically(tmp_path):
    cmd = [sys.executable, str(EXAMPLE), "--ranks", "3", "--steps", "24", "--every", "5", "--kill-rank", "1",
           "--kill-step", "13", "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "every surviving rank named rank 1: yes" in out
    # steps 1-12 or 13 of the crashed job (rank 0 may lose the collective rank 1 had finished
    # before dying: the verdict aborts it), 11-24 of the relaunch: each equal to the reference's
    compared = re.search(r"equals the uninterrupted run's, bit for bit \((\d+) compared\): yes", out)
    assert compared and int(compared.group(1)) in (26, 27), out
    assert "relaunch from the checkpoint of step 10" in out
    # the survivors' flight records of the crashed job: efcomm doctor names the dead rank
    flight = tmp_path / "run" / "flight"
    assert sorted(p.name for p in flight.glob("*.json")) == ["efcomm-flight-rank0.json", "efcomm-flight-rank2.json"]
    doctor = subprocess.run([sys.executable, "-m", "efcomm.cli", "doctor", str(flight), "--json", "--no-plots"],
                            capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    faults = json.loads(doctor.stdout)["faults"]
    assert faults[0]["kind"] in ("crash", "hang") and faults[0]["ranks"] == [1], faults
