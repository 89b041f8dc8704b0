"""``efcomm demo`` and ``efcomm bench ddp`` end to end with tiny settings: real rank processes,
torch DDP over gloo on the loopback, real bytes; and what happens when a rank dies."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import has_module

MISSING = [name for module, name in (("torch", "torch"), ("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"))
           if not has_module(module)]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}: pip install {' '.join(MISSING)}")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _efcomm(*args, timeout):
    return subprocess.run([sys.executable, "-m", "efcomm.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_demo_two_ranks(tmp_path):
    from efcomm import _ddp_train

    png = tmp_path / "demo.png"
    p = _efcomm("demo", "--ranks", "2", "--epochs", "2", "--json", "--no-progress", "--out", str(png), timeout=300)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert png.read_bytes()[:8] == PNG_MAGIC and result["plot"] == str(png)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["ddp", "topk-ef21", "topk-none"]
    for r in rows.values():
        assert r["status"] == "ok", r["reason"]
        pts = r["points"]
        assert [p["epoch"] for p in pts] == [0, 1, 2]
        assert pts[0]["bytes_sent"] == 0 and pts[1]["bytes_sent"] < pts[2]["bytes_sent"]
        assert pts[-1]["loss"] < pts[0]["loss"] and r["accuracy"] > 30  # chance is 10%
        assert r["wall_s"] > 0
    ddp, ef21, none = rows["ddp"], rows["topk-ef21"], rows["topk-none"]
    # Two ranks: a ring allreduce sends the whole gradient once per step.
    cfg = result["config"]
    steps = 2 * (result["data"]["train"] // (2 * cfg["batch"]))
    assert ddp["bytes_sent_per_rank"] == steps * _ddp_train.model_bytes(cfg["hidden"])
    assert ddp["accuracy"] > 70
    for r in (ef21, none):
        assert 0 < r["bytes_sent_per_rank"] < ddp["bytes_sent_per_rank"] / 5
        assert r["compression"] == pytest.approx(ddp["bytes_sent_per_rank"] / r["bytes_sent_per_rank"])
        stats = r["hook_stats"]
        assert len(stats) == 2 and all(s["compressed_calls"] > 0 and s["bytes_sent"] > 0 for s in stats)


def test_demo_text_output(tmp_path):
    png = tmp_path / "out.png"
    p = _efcomm("demo", "--ranks", "2", "--epochs", "1", "--ratio", "0.05", "--out", str(png), timeout=300)
    assert p.returncode == 0, p.stderr
    for text in ("uncompressed DDP", "TopK 5% + EF21", "TopK 5%, no feedback", "test accuracy", "sent per rank",
                 f"plot: {png}"):
        assert text in p.stdout
    assert png.read_bytes()[:8] == PNG_MAGIC


def _ranks_of(parent: int) -> dict:
    """{rank: pid} of the _ddp_train ranks whose parent is `parent`."""
    out = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"efcomm._ddp_train" in argv:
            out[int(argv[argv.index(b"--rank") + 1])] = int(entry)
    return out


def _rank_pid(rank: int):
    """The pid of this process's child running rank `rank` of _ddp_train, or None."""
    return _ranks_of(os.getpid()).get(rank)


def test_a_dead_rank_stops_the_run_not_the_others(tmp_path):
    """SIGKILL to rank 1 in the middle of a method: the run reports it within seconds (not the
    collective timeout), leaves no rank behind, and the next method runs in a fresh launch."""
    from efcomm import _ddp_train

    cfg = _ddp_train.TrainConfig(ranks=2, epochs=3)
    data = str(tmp_path / "digits.npz")
    _ddp_train.prepare_data(data, cfg)
    methods = [_ddp_train.Method("victim", "victim", "ddp"), _ddp_train.Method("after", "after", "ddp")]
    killed = []

    def on_point(point):
        if point["method"] == "victim" and point["epoch"] == 1 and not killed:
            pid = _rank_pid(1)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed.append(time.monotonic())

    rows = _ddp_train.run(methods, cfg, data, timeout=120, on_point=on_point)
    assert killed and time.monotonic() - killed[0] < _ddp_train.COLLECTIVE_TIMEOUT_S
    assert [r["method"] for r in rows] == ["victim", "after"]
    victim, after = rows
    assert victim["status"] == "failed" and "rank 1 was killed by SIGKILL" in victim["reason"]
    assert "during victim" in victim["reason"]
    assert after["status"] == "ok" and [p["epoch"] for p in after["points"]] == [0, 1, 2, 3]
    assert _rank_pid(0) is None and _rank_pid(1) is None


def _running(pid: int) -> bool:
    """Whether pid is a process that has not exited (a zombie waiting to be reaped has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_no_rank_outlives_a_killed_parent(tmp_path):
    """SIGKILL to the process that launched the ranks (no cleanup can run there), while they
    start (importing torch; nothing to write to the closed pipe yet): they die with it at once,
    instead of living on until they train, or until their collective timeout."""
    script = ("import sys\nfrom efcomm import _ddp_train as t\n"
              "cfg = t.TrainConfig(ranks=2, epochs=200)\n"
              "t.prepare_data(sys.argv[1], cfg)\n"
              "t.run([t.Method('ddp', 'ddp', 'ddp')], cfg, sys.argv[1], timeout=300)\n")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "digits.npz")])
    try:
        deadline = time.monotonic() + 120
        while len(_ranks_of(parent.pid)) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.01)
        ranks = list(_ranks_of(parent.pid).values())
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 1.0
        while any(map(_running, ranks)) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [pid for pid in ranks if _running(pid)]
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        assert not alive, "ranks outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_method_that_cannot_start_is_a_row_with_its_reason(tmp_path):
    from efcomm import _ddp_train

    cfg = _ddp_train.TrainConfig(ranks=2, epochs=1)
    data = str(tmp_path / "digits.npz")
    _ddp_train.prepare_data(data, cfg)
    methods = [_ddp_train.Method("bad", "bad", "efcomm", "topk:ratio=7", "ef21"),
               _ddp_train.Method("good", "good", "ddp")]
    bad, good = _ddp_train.run(methods, cfg, data, timeout=120)
    assert bad["status"] == "failed" and "InvalidArgument" in bad["reason"] and "ratio" in bad["reason"]
    assert good["status"] == "ok"


@pytest.mark.parametrize("argv, message", [
    (["--out", "demo.txt"], "--out: must name a .png file"),
    (["--out", "/nonexistent/demo.png"], "does not exist or is not writable"),
    (["--seed", "-1"], "--seed: must be >= 0"),
    (["--seed", "4294967296"], "--seed: must be < 2^32 = 4294967296, got 4294967296"),  # scikit-learn's bound
    (["--ratio", "abc"], "--ratio: must be a number"),
    (["--timeout", "0"], "--timeout: must be a finite number > 0"),
    (["--ranks", "43"], "43 ranks x 32 images per step exceed the 1347 training images: at most 42 ranks"),
])
def test_demo_bad_input_fails_before_training(argv, message):
    p = _efcomm("demo", *argv, timeout=60)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("argv, message", [
    # 0 meant "estimate" and a negative or NaN timeout was taken silently; demo --timeout refuses them.
    (["--timeout", "0"], "argument --timeout: must be a finite number > 0, got 0"),
    (["--timeout", "-1"], "argument --timeout: must be a finite number > 0, got -1"),
    (["--timeout", "nan"], "argument --timeout: must be a finite number > 0, got nan"),
])
def test_bench_ddp_bad_input_is_rejected_by_the_parser(argv, message, capsys):
    from efcomm.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "ddp", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bench_ddp_plot_without_matplotlib_fails_before_training(capsys, monkeypatch, tmp_path):
    from efcomm.cli import build_parser

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "ddp", "--plot", str(tmp_path / "ddp.png")])
    assert e.value.code == 2 and "argument --plot: the plot needs matplotlib" in capsys.readouterr().err


def test_bench_ddp_quick(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:allreduce:begin -->\nkeep\n<!-- bench:allreduce:end -->\n")
    png = tmp_path / "ddp.png"
    p = _efcomm("bench", "ddp", "--quick", "--rates", "unlimited", "--json", "--no-progress",
                "--write-docs", str(docs), "--plot", str(png), timeout=600)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["plot"] == str(png.resolve()) and png.read_bytes().startswith(b"\x89PNG")
    from efcomm.bench import ddp as bench

    summary = {s["method"]: s for s in result["summary"]}
    assert list(summary) == [m.key for m in bench.METHODS]
    for s in summary.values():
        assert not s["errors"], s["errors"]
        assert s["accuracy"] > 30 and s["bytes_sent_per_rank"] > 0 and s["by_rate"]["unlimited"]["wall_s"] > 0
    ddp = summary["ddp"]
    # What the methods send, relative to DDP's full-precision allreduce: half for fp16, far less for the rest.
    assert summary["fp16"]["bytes_sent_per_rank"] == pytest.approx(ddp["bytes_sent_per_rank"] / 2)
    for key in ("powersgd-1", "topk-ef21", "sign-ef14"):
        assert summary[key]["bytes_sent_per_rank"] < ddp["bytes_sent_per_rank"] / 5, key
    assert summary["quant8-ef21"]["bytes_sent_per_rank"] < ddp["bytes_sent_per_rank"] / 2
    if result["transport"]["namespace"]:
        # The loopback carried every accounted byte, plus TCP/IP headers and gloo's own messages.
        for s in summary.values():
            assert s["wire_bytes_per_rank"] >= 0.99 * s["bytes_sent_per_rank"], s
        assert ddp["wire_bytes_per_rank"] < 1.2 * ddp["bytes_sent_per_rank"]
    assert {t["status"] for t in result["targets"]} <= {"PASS", "FAIL", "SKIP"}
    text = docs.read_text()
    assert "keep" in text and "<!-- bench:ddp:begin -->" in text and "| efcomm TopK 1% + EF21" in text
    assert "efcomm bench ddp --quick --rates unlimited" in text


def _summary(key, kind, accuracy, wire, t1g):
    return {"method": key, "label": key, "kind": kind, "accuracy": accuracy, "accuracies": [accuracy],
            "errors": [], "bytes_sent_per_rank": wire, "wire_bytes_per_rank": wire,
            "by_rate": {"1gbit": {"wall_s": 10.0, "time_to_accuracy_s": t1g, "accuracy": accuracy}}}


def test_targets():
    from efcomm.bench import ddp as bench

    summary = [_summary("ddp", "ddp", 97.0, 2000.0, 20.0), _summary("topk-ef21", "efcomm", 96.6, 95.0, 5.0),
               _summary("powersgd-1", "powersgd", 96.0, 10.0, None),
               _summary("powersgd-2", "powersgd", 97.0, 20.0, 6.0)]
    for s in summary:
        s["fewer_bytes"] = 2000.0 / s["wire_bytes_per_rank"]
    summary[1]["by_rate"]["1gbit"]["wall_s"] = 8.0
    result = {"summary": summary, "config": {"seeds": 3, "epochs": 30},
              "runs": [{"rate": None, "status": "ok"}, {"rate": 10**9, "status": "ok"}]}
    status = [(t["status"], t["value"]) for t in bench.evaluate(result)]
    assert status[0][0] == "PASS" and status[0][1] == pytest.approx(-0.4)
    assert status[1][0] == "PASS" and status[1][1] == pytest.approx(2000 / 95)
    # 30 epochs in 8 s against 10 s, 0.4 points below the best PowerSGD run.
    assert status[2][0] == "PASS" and status[2][1] == pytest.approx(10.0 / 8.0)
    assert status[3][0] == "PASS" and status[3][1] == pytest.approx(6.0 / 5.0)  # rank 1 never got there
    assert [t["counted"] for t in bench.evaluate(result)] == [True, True, True, False]
    summary[1].update(accuracy=96.4, wire_bytes_per_rank=101.0, fewer_bytes=2000 / 101)
    summary[1]["by_rate"]["1gbit"]["time_to_accuracy_s"] = 7.0
    assert [t["status"] for t in bench.evaluate(result)] == ["FAIL", "FAIL", "FAIL", "FAIL"]  # 0.6 points below
    summary[1].update(accuracy=96.6)
    summary[1]["by_rate"]["1gbit"]["wall_s"] = 12.0
    assert bench.evaluate(result)[2]["status"] == "FAIL"  # slower
    result["runs"][1].update(status="skipped", reason="needs root")
    assert [(t["status"], t["reason"]) for t in bench.evaluate(result)][2:] == [("SKIP", "needs root")] * 2
    assert bench.time_to([{"seconds": 1.0, "accuracy": 90.0}, {"seconds": 2.0, "accuracy": 95.0}], 95.0) == 2.0
    # A short run (--quick: 2 epochs) shows its values, but its verdicts are SKIP, not FAIL.
    result["config"]["epochs"] = 2
    short = bench.evaluate(result)
    assert [t["status"] for t in short] == ["SKIP"] * 4 and "2 epochs" in short[0]["reason"]
    assert short[0]["value"] == pytest.approx(96.6 - 97.0)


def test_targets_powersgd_time_to_accuracy_row():
    # With efcomm's PowerSGD in the run, a row beside the targets compares its time to 95% with
    # every torch PowerSGD run's (not counted).
    from efcomm.bench import ddp as bench

    summary = [_summary("ddp", "ddp", 97.0, 2000.0, 20.0), _summary("topk-ef21", "efcomm", 96.6, 95.0, 5.0),
               _summary("powersgd-2", "powersgd", 97.0, 20.0, 6.0),
               _summary("powersgd2-ef21", "efcomm", 97.0, 25.0, 4.0)]
    for s in summary:
        s["fewer_bytes"] = 2000.0 / s["wire_bytes_per_rank"]
    result = {"summary": summary, "config": {"seeds": 3, "epochs": 30},
              "runs": [{"rate": None, "status": "ok"}, {"rate": 10**9, "status": "ok"}]}
    rows = bench.evaluate(result)
    assert len(rows) == 5 and "efcomm PowerSGD rank 2 + EF21 reaches 95%" in rows[4]["target"]
    assert (rows[4]["status"], rows[4]["counted"]) == ("PASS", False)
    assert rows[4]["value"] == pytest.approx(6.0 / 4.0)
    summary[3]["by_rate"]["1gbit"]["time_to_accuracy_s"] = None
    assert bench.evaluate(result)[4]["status"] == "FAIL"
    del summary[2]  # no torch PowerSGD run: nothing to compare with
    assert bench.evaluate(result)[4]["status"] == "SKIP"
