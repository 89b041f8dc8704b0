"""The installed package: the ``efcomm`` command, and the CMake package export used by
examples/cpp (found through the wheel's ``cmake.root`` entry point or an install tree)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import efcomm as ef

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cpp"
BUILD_INFO_KEYS = {"version", "cuda", "nccl", "mpi", "simd", "openmp"}


def _cmake():
    exe = shutil.which("cmake")
    if exe is None:
        pytest.skip("cmake is not on PATH")
    return exe


def _generator_args():
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def _run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def _build_and_run_example(prefix, build_dir):
    _run([_cmake(), "-S", EXAMPLE, "-B", build_dir, *_generator_args(),
          "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_PREFIX_PATH={prefix}"])
    _run([_cmake(), "--build", build_dir, "-j", "2"])
    out = _run([Path(build_dir) / "compress_roundtrip"], timeout=60).stdout
    assert "topk:" in out and "exactly" in out, out
    reduced = _run([Path(build_dir) / "reduce_ranks"], timeout=60).stdout
    assert "bit-identical" in reduced and "reduce_scatter" in reduced, reduced


def _efcomm_cli(*args):
    # The console script installed with the package; `python -m efcomm.cli` where it is not on PATH.
    script = Path(sys.executable).parent / "efcomm"
    cmd = [script] if script.exists() else [sys.executable, "-m", "efcomm.cli"]
    return _run([*cmd, *args], timeout=120).stdout


def test_info_prints_build_configuration():
    out = _efcomm_cli("info")
    assert ef.__version__ in out
    for key in BUILD_INFO_KEYS:
        assert key in out
    # What this machine gives the build: its CUDA devices (or why none) and the libnccl found.
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    if ef.build_info()["cuda"]:
        assert "CUDA device(s)" in rows["gpu"] or "none usable (" in rows["gpu"]
    if ef.build_info()["nccl"]:
        assert rows["libnccl"].split(None, 1)[1].startswith(("not loadable: ", "2."))
    # The integrations' packages: a version, or how to install them.
    for name in ("mpi4py", "torch"):
        installed = importlib.util.find_spec(name) is not None
        assert ("not installed (pip install " in rows[name]) != installed, rows[name]


def test_info_json_has_build_info_keys():
    info = json.loads(_efcomm_cli("info", "--json"))
    assert BUILD_INFO_KEYS <= set(info)
    assert info["version"] == ef.__version__
    assert isinstance(info["cuda"], bool) and isinstance(info["nccl"], bool)
    assert info["mpi"] is None or isinstance(info["mpi"], str)
    # The build, and what the text output adds: the machine's GPUs and libnccl, the compressors.
    assert {k: info[k] for k in ef.build_info()} == ef.build_info()
    assert info["compressors"] == sorted(info["compressors"]) and "topk" in info["compressors"]
    if info["cuda"]:
        assert set(info["gpu"]) == {"available", "device_count", "reason"}
    for name in ("mpi4py", "torch"):
        assert (info[name]["version"] is None) == (importlib.util.find_spec(name) is None)
    if info["nccl"]:
        n = info["libnccl"]
        assert (n["version"] is None) == (n["error"] is not None) and (n["version"] or "2.").startswith("2.")


def test_python_m_efcomm_and_a_closed_pipe():
    # `python -m efcomm` is the efcomm command; output into a pipe whose reader left (`efcomm ...
    # --json | head`) ends quietly with 128 + SIGPIPE, no traceback.
    assert json.loads(_run([sys.executable, "-m", "efcomm", "info", "--json"], timeout=120).stdout)["version"]
    proc = subprocess.Popen([sys.executable, "-m", "efcomm", "info", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes: it starts in well over the time this takes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_cmake_root_entry_point_names_the_package():
    roots = {e.name: e.value for e in entry_points(group="cmake.root")}
    assert roots.get("efcomm") == "efcomm"


def test_wheel_is_find_package_able(tmp_path):
    """examples/cpp builds against the installed wheel and runs."""
    prefix = Path(ef.__file__).resolve().parent
    assert (prefix / "lib" / "cmake" / "efcomm" / "efcommConfig.cmake").is_file()
    assert (prefix / "include" / "efcomm" / "efcomm.hpp").is_file()
    _build_and_run_example(prefix, tmp_path / "build")


def test_install_tree_is_find_package_able(tmp_path):
    """The core library `cmake --install`ed from a plain CMake build into a prefix serves
    examples/cpp as well. Reuses the Release build scripts/test.sh makes (EFCOMM_CORE_BUILD_DIR,
    default build/tests) rather than compiling the core once more."""
    build = Path(os.environ.get("EFCOMM_CORE_BUILD_DIR", REPO / "build" / "tests"))
    if not (build / "CMakeCache.txt").is_file():
        pytest.skip(f"no configured CMake build in {build} (scripts/test.sh makes one)")
    prefix = tmp_path / "prefix"
    _run([_cmake(), "--build", build, "--target", "efcomm", "-j", "2"])
    _run([_cmake(), "--install", build, "--prefix", prefix])
    _build_and_run_example(prefix, tmp_path / "example")
