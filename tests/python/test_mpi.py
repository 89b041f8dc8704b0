"""The MPI backend across real processes: tests/mpi/worker.py under `mpiexec -n N` for N = 2, 3
and 4 (odd sizes matter), each launch bounded by a timeout. Skipped, with the reason, where
mpiexec, mpi4py or efcomm's MPI backend is missing; scripts/test.sh installs them."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

import efcomm as ef
from helpers import has_module

pytestmark = pytest.mark.mpi

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "mpi" / "worker.py"
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent),
                                                        os.environ.get("PATH", "")]))
SIZES = [2, 3, 4]

if MPIEXEC is None:
    pytest.skip("mpiexec not found (pip install mpich)", allow_module_level=True)
if not has_module("mpi4py"):
    pytest.skip("mpi4py not installed (pip install mpi4py)", allow_module_level=True)
if ef.build_info()["mpi"] is None:
    pytest.skip("efcomm was built without the MPI backend (no mpi.h at build time)", allow_module_level=True)


def launch(n: int, *args, timeout: float = 240.0) -> list[dict]:
    """Runs the worker on n ranks; returns the ranks' reports in rank order."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # n ranks share the cores already
    with tempfile.TemporaryDirectory(prefix="efcomm-mpi-") as outdir:
        cmd = [MPIEXEC, "-n", str(n), sys.executable, str(WORKER), outdir, *map(str, args)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s:\n{e.stdout}\n{e.stderr}")
        assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        reports = [json.loads(p.read_text()) for p in pathlib.Path(outdir).glob("rank*.json")]
    assert sorted(d["rank"] for d in reports) == list(range(n)), proc.stdout + proc.stderr
    assert all(d["size"] == n for d in reports)
    return sorted(reports, key=lambda d: d["rank"])


@pytest.mark.parametrize("n", SIZES)
def test_collectives_agree_across_processes(n):
    steps = 4
    ranks = launch(n, "collectives", steps)
    for d in ranks:
        assert (d["mpi_rank"], d["mpi_size"]) == (d["rank"], n)
        # identity + none is the float64 mean, up to the rounding of the sum
        assert d["mean_max_error"] < 1e-12
        assert d["thread_level"] == 3  # mpi4py initializes MPI_THREAD_MULTIPLE
    for field in ("mean_digest", "digests", "async_digests"):
        assert all(d[field] == ranks[0][field] for d in ranks), f"{field} differs between ranks"
    # Every step's aggregate is new, and is no rank's own input.
    for name, digests in ranks[0]["digests"].items():
        assert len(set(digests)) == steps, name
        assert all(d["own_digest_" + name] not in digests for d in ranks), name


@pytest.mark.parametrize("n", SIZES)
def test_mismatch_raises_on_every_rank(n):
    for d in launch(n, "mismatch"):
        for case in ("shape", "key"):
            assert d[case]["error"] == "MismatchError", (d["rank"], case, d[case])
        assert d["after"] == [sum(range(n)) / n] * 4


@pytest.mark.parametrize("n", SIZES)
def test_timeout_names_the_late_rank_and_never_hangs(n):
    collective_timeout, late = 1.0, 4.0
    ranks = launch(n, "timeout", collective_timeout, late, timeout=120.0)
    for d in ranks:
        assert d["error"] == "CollectiveTimeout", d
        assert d["culprits"] == [n - 1], d
        # The others fail at their timeout, not later; the late rank at once, told by them.
        assert d["seconds"] < (collective_timeout if d["rank"] < n - 1 else 0) + 5.0, d
        # ... and the communicator is unusable from then on, failing at once.
        assert d["after"] == "CollectiveTimeout" and d["after_seconds"] < 1.0, d


def test_derived_communicators():
    # Dup'ed and split communicators have handles with the high bit set (MPICH's 0x84...), which
    # mpi4py gives as unsigned 64-bit numbers: they wrap as any other.
    n = 3
    for d in launch(n, "derived"):
        r = d["rank"]
        assert d["dup"] == {"rank": r, "size": n, "mean": [sum(range(n)) / n] * 4}, d
        peers = [q for q in range(n) if q % 2 == r % 2]
        assert d["split"] == {"rank": peers.index(r), "size": len(peers),
                              "mean": [sum(peers) / len(peers)] * 4}, d
        assert "intercommunicator" in d["inter"] and "COMM_NULL" in d["null"], d


@pytest.mark.parametrize("n", SIZES)
def test_state_dict_restart_continues_bit_identically(n, tmp_path):
    k, m = 3, 4
    a = launch(n, "state", "save", tmp_path, k, m)
    assert len(list(tmp_path.glob("rank*.pkl"))) == n
    b = launch(n, "state", "resume", tmp_path, k, m)
    for da, db in zip(a, b):
        assert da["digests"] == db["digests"], f"rank {da['rank']}: the restarted run diverged"
        assert da["digests"] == a[0]["digests"]


def test_errors_without_mpiexec():
    """MPI not initialized -> BackendUnavailable saying so; not a communicator -> InvalidArgument."""
    code = "\n".join([
        "import mpi4py",
        "mpi4py.rc.initialize = mpi4py.rc.finalize = False",
        "from mpi4py import MPI",
        "import efcomm as ef",
        "try:",
        "    ef.Communicator.mpi()",
        "except ef.BackendUnavailable as e:",
        "    print('BackendUnavailable:', e)",
        "MPI.Init()",
        "try:",
        "    ef.Communicator.mpi('world')",
        "except ef.InvalidArgument as e:",
        "    print('InvalidArgument:', e)",
        "print(ef.Communicator.mpi(timeout=5))",
        "MPI.Finalize()",
    ])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BackendUnavailable: efcomm: MPI is not initialized" in proc.stdout, proc.stdout
    assert "InvalidArgument: Communicator.mpi: expected an mpi4py communicator, got str" in proc.stdout
    assert "Communicator(rank=0, size=1)" in proc.stdout
