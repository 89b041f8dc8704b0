"""The compressor benchmark runs end to end on a small input (a smoke test: no timed assertions)."""

import json

import pytest

from efcomm.bench import compressors as bench
from efcomm.cli import main

SMALL = ["bench", "compressors", "--size", "65536", "--repeats", "1", "--min-time", "0", "--no-progress"]


def run_json(capsys, *extra):
    assert main([*SMALL, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_every_compressor_and_target(capsys):
    assert main(["bench", "compressors", "--size", "65536", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["size"] == 65536
    assert {"memcpy", "torch_topk", "argpartition", "packbits"} <= set(result["baselines"])
    assert result["baselines"]["memcpy"]["gbps"] > 0
    rows = {r["key"]: r for r in result["compressors"]}
    assert list(rows) == [c.key for c in bench.CASES]
    for row in rows.values():
        if row["error"] is None:
            for direction in ("compress", "decompress"):
                assert row[direction]["gbps"] > 0 and row[direction]["memcpy_fraction"] > 0
            assert row["compression_ratio"] > 0
        else:
            assert isinstance(row["error"], str) and row["error"]
    assert rows["identity"]["error"] is None and rows["identity"]["relative_error"] == 0
    assert rows["cast-bf16"]["error"] is None
    assert [t["target"] for t in result["targets"]] == [t.text for t in bench.TARGETS]
    # 64K elements sit in cache: values show, verdicts wait for the 64 MiB the targets are set for.
    assert {t["status"] for t in result["targets"]} <= {"SKIP", "ERROR"}
    assert any(t["value"] is not None and "--size 65536" in t["reason"] for t in result["targets"])
    assert all(t["status"] in ("PASS", "FAIL", "SKIP", "ERROR") for t in result["targets"])


def test_only_and_an_extra_spec(capsys):
    result = run_json(capsys, "--only", "cast", "--spec", "topk:ratio=0.001")
    rows = {r["key"]: r for r in result["compressors"]}
    assert list(rows) == ["cast-bf16", "cast-fp16", "topk:ratio=0.001"]
    assert rows["topk:ratio=0.001"]["error"] is None
    statuses = {t["target"]: t["status"] for t in result["targets"]}
    assert statuses["ScaledSign compress >= 40% memcpy"] == "SKIP"


@pytest.mark.parametrize("extra, message", [
    (["--only", "nosuch"], "--only: unknown compressor(s) nosuch"),
    (["--spec", "nosuchcompressor"], "unknown compressor 'nosuchcompressor'"),
    (["--spec", "topk:ratio=5"], "ratio must be in (0, 1]"),
])
def test_bad_compressors_are_bad_input_before_the_run(extra, message, capsys):
    assert main([*SMALL, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efcomm bench compressors: error: ") and message in err and err.count("\n") == 1
    assert "[cpp/" not in err  # the native source location is for bug reports, not the command line


def test_text_table_and_docs_section(capsys, tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:compressors:begin -->\nold\n"
                    "<!-- bench:compressors:end -->\n\nTail.\n")
    assert main([*SMALL, "--only", "identity", "--write-docs", str(docs)]) == 0
    out = capsys.readouterr().out
    assert "identity" in out and "Targets" in out
    text = docs.read_text()
    assert "old" not in text and text.startswith("# Benchmarks\n") and text.endswith("Tail.\n")
    assert "| identity" in text and "efcomm bench compressors --size 65536" in text


def test_feedback_benchmark_json(capsys):
    assert main(["bench", "feedback", "--size", "65536", "--repeats", "1", "--min-time", "0", "--json",
                 "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in result["methods"]] == ["none", "ef14", "ef21", "ef21sgdm", "econtrol"]
    assert all(r["gbps"] > 0 and r["fraction_of_compressor"] > 0 for r in result["methods"])
    # Set for 64 MiB: the value shows, the verdict waits for a full-size run; the command repeats the run.
    assert result["target"]["status"] == "SKIP" and result["target"]["value"] > 0
    assert result["command"] == "efcomm bench feedback --size 65536 --repeats 1 --min-time 0"


def test_gradient_energy_script(capsys, monkeypatch):
    """bench/gradient_energy.py: the energy fractions of TopK 1 % and rank 1/2 on the DDP benchmark's model."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "gradient_energy.py"
    spec = importlib.util.spec_from_file_location("gradient_energy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr("sys.argv", ["gradient_energy.py", "--steps", "0,3"])
    import torch

    threads = torch.get_num_threads()
    try:
        assert mod.main() == 0
    finally:
        torch.set_num_threads(threads)  # the script runs single-threaded, like a benchmark rank
    rows = [ln.split("|")[1:-1] for ln in capsys.readouterr().out.splitlines()[2:]]
    assert len(rows) == 6  # 2 steps x 3 weight matrices
    for step, _name, top, r1, r2 in rows:
        top, r1, r2 = float(top), float(r1), float(r2)
        assert 0 < top <= 1 and 0 < r1 <= r2 <= 1
        assert top < r2  # the MLP's gradients are close to low-rank: rank 2 keeps more than TopK 1 %


def test_load_warning_at_the_end_discounts_the_benchmarks_own_ranks():
    from efcomm.bench._util import load_warnings

    result = {"machine": {"usable_cores": 2, "load_average": 0.2}, "load_average_end": 4.3}
    assert any("when the run ended" in w for w in load_warnings(result))
    result["load_average_own"] = 4  # its 4 ranks, busy until the end
    assert load_warnings(result) == []
    result["load_average_end"] = 6.0  # 2 more than its own: other work
    assert any("beyond the benchmark's own 4 processes" in w for w in load_warnings(result))
    result["machine"]["load_average"] = 1.5  # busy from the start: one warning, the first
    assert len(load_warnings(result)) == 1 and "when the run started" in load_warnings(result)[0]


def test_rows_beside_the_targets_do_not_count():
    import types

    from efcomm.bench._util import check_status, result_text, target_summary

    result = {"targets": [{"status": "PASS", "counted": True}, {"status": "FAIL", "counted": False},
                          {"status": "PASS"}]}
    assert check_status(result, types.SimpleNamespace(check=True)) == 0
    assert target_summary(result) == "2 PASS (beside them: 1 FAIL)"
    assert result_text(result["targets"][1]) == "FAIL (not a target)" and result_text(result["targets"][2]) == "PASS"
    result["targets"][0]["status"] = "FAIL"
    assert check_status(result, types.SimpleNamespace(check=True)) == 1


@pytest.mark.parametrize("argv, message", [
    (["bench", "feedback", "--size", "-5"], "argument --size: must be > 0, got -5"),
    (["bench", "feedback", "--repeats", "0"], "argument --repeats: must be > 0, got 0"),
    (["bench", "feedback", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    ([*SMALL, "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    ([*SMALL, "--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
])
def test_bad_numbers_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    # An infinite --min-time timed forever; a negative or NaN one was taken silently.
    ([*SMALL, "--min-time", "inf"], "argument --min-time: must be a finite number >= 0, got inf"),
    ([*SMALL, "--min-time", "-1"], "argument --min-time: must be a finite number >= 0, got -1"),
    (["bench", "feedback", "--min-time", "nan"], "argument --min-time: must be a finite number >= 0, got nan"),
    (["bench", "feedback", "--min-time", "inf"], "argument --min-time: must be a finite number >= 0, got inf"),
    (["bench", "faults", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
])
def test_bad_numbers_are_rejected_by_the_parser(argv, message, capsys):
    """Parsing only: a value the parser let through would run (and an infinite --min-time, forever)."""
    from efcomm.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bad_input_is_one_line_and_status_2(capsys, tmp_path):
    assert main(["bench", "feedback", "--size", "64", "--compressor", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efcomm bench feedback: error: unknown compressor 'bogus'") and err.count("\n") == 1
    docs = tmp_path / "nosuch" / "benchmarks.md"
    assert main([*SMALL, "--only", "identity", "--write-docs", str(docs)]) == 2
    err = capsys.readouterr().err
    assert err == (f"efcomm bench compressors: error: --write-docs {docs}: cannot write it (No such file or "
                   "directory): name a markdown file in an existing, writable directory\n")
    docs = tmp_path / "benchmarks.md"
    docs.write_text("<!-- bench:compressors:end -->\n<!-- bench:compressors:begin -->\n")
    assert main([*SMALL, "--only", "identity", "--write-docs", str(docs)]) == 2
    assert "unbalanced markers for section 'bench:compressors'" in capsys.readouterr().err


def test_gpu_report_renders_a_device_run_and_fits_the_size_sweep(tmp_path, capsys, monkeypatch):
    """bench/gpu/gpu_report.py on results shaped like efcomm_gpu_bench's (no GPU here): the
    tables, the targets and the fixed cost + rate split of the size sweep (a known line)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "gpu" / "gpu_report.py"
    spec = importlib.util.spec_from_file_location("gpu_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n, copy = 1 << 20, 2000.0  # GB/s

    def call(msg, fixed, gbps, size=n):  # a call of `fixed` s plus the bytes moved at `gbps`
        return fixed + (4 * size + msg) / (gbps * 1e9)

    specs = {"identity": 4 * n, "cast:dtype=bf16": 2 * n, "sign": n // 8, "quant:bits=8,block=256": n + n // 64,
             "topk:ratio=0.01": 80000}
    result = {"device": "Test GPU", "size": n, "repeats": 3, "copy_seconds": 8 * n / copy / 1e9, "copy_gbps": copy,
              "compressors": [{"spec": s, "message_bytes": m, "compress_seconds": call(m, 20e-6, 1500),
                               "decompress_seconds": call(m, 30e-6, 1000),
                               "decompress_beside_seconds": call(m, 0, 1600),
                               "decompress_beside_quarter_error": "boom",
                               "compress_gbps": (4 * n + m) / call(m, 20e-6, 1500) / 1e9,
                               "decompress_gbps": (4 * n + m) / call(m, 30e-6, 1000) / 1e9}
                              for s, m in specs.items()],
              "sync_floor_seconds": 7e-6,
              "scaling": [{"spec": "sign", "size": size, "message_bytes": size // 8,
                           "compress_seconds": call(size // 8, 20e-6, 1500, size),
                           "decompress_seconds": call(size // 8, 30e-6, 1000, size)}
                          for size in (n // 64, n // 16, n // 4, n)] + [{"spec": "identity", "size": 4, "error": "x"}],
              "feedback": [{"feedback": "ef21", "compressor": "topk:ratio=0.01", "message_bytes": 1,
                            "step_seconds": 1e-3, "step_gbps_in": 1.0, "over_topk": 1.2}],
              "reducer": [{"algorithm": "allgather", "compressor": "topk:ratio=0.01", "feedback": "ef21",
                           "error": "no NCCL"}]}
    (tmp_path / "r.json").write_text(json.dumps(result))
    monkeypatch.setattr(mod, "torch_topk_seconds", lambda n, k, repeats: (None, None, "no GPU here"))
    monkeypatch.setattr("sys.argv", ["gpu_report.py", str(tmp_path / "r.json"), "--out", str(tmp_path / "t.md")])
    assert mod.main() == 1  # the made-up calls miss the 60 % targets
    text = capsys.readouterr().out
    assert text == (tmp_path / "t.md").read_text()
    assert "Device check on **Test GPU**" in text and "a stream synchronize: 7.0 us" in text
    rows = {ln.split("|")[2].strip(): ln for ln in text.splitlines() if ln.startswith("| `sign` |")}
    assert "| `sign` | compress | 20.0 us | 1500 |" in rows["compress"]
    assert "| `sign` | decompress | 30.0 us | 1000 |" in rows["decompress"]
    assert rows["decompress"].endswith("| 50 % |")  # 1000 of 2000 GB/s once the fixed cost is gone
    assert "| TopK 1 % at least 2x faster than torch.topk | no GPU here | SKIP |" in text
    after = text.split("with the checksum beside the decode")[1]
    beside = next(ln for ln in after.splitlines() if ln.startswith("| `sign` |"))
    assert "| 80 % | error: boom |" in beside  # 1600 of 2000 GB/s; the quarter's run failed
    assert "| EF21 step within 1.5x of TopK alone | 1.20x | PASS |" in text


def test_min_time_zero_is_exactly_the_repeats(capsys):
    assert main([*SMALL, "--only", "identity", "--json"]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)["compressors"]}
    assert rows["identity"]["compress"]["calls"] == 1


def test_out_of_memory_names_the_options_of_the_command_that_ran(monkeypatch, capsys):
    def exhausted(args):
        raise MemoryError("Unable to allocate 373. GiB for an array with shape (100000000000,)")

    monkeypatch.setattr(bench, "main", exhausted)  # (a real one: --size 100000000000)
    assert main([*SMALL, "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efcomm bench compressors: error: out of memory (Unable to allocate 373. GiB") and \
        err.endswith("ask for a smaller problem (--size)\n") and "--dim" not in err, err


@pytest.mark.parametrize("what", ["compressors", "feedback", "allreduce", "ddp", "faults", "plan"])
def test_help_descriptions_are_plain_text(what, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", what, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and f"efcomm bench {what}" in " ".join(out.split())
    assert "``" not in out and ":mod:" not in out and "SURVIVE_SIGUSR1" not in out, out


def test_json_output_is_strict(capsys):
    """A throughput of a call too quick for the clock is infinite: --json writes null, not Infinity."""
    import types

    from efcomm.bench._util import emit

    args = types.SimpleNamespace(json=True, markdown=False, write_docs=None)
    emit({"gbps": float("inf"), "ratio": float("nan"), "rows": [(1, 2.5)]}, args, str, str, "bench:x")
    assert json.loads(capsys.readouterr().out, parse_constant=pytest.fail) == \
        {"gbps": None, "ratio": None, "rows": [[1, 2.5]]}


@pytest.mark.parametrize("argv", [["info"], ["demo"], ["sim"], ["plan"], ["doctor"], ["bench", "compressors"],
                                  ["bench", "feedback"], ["bench", "allreduce"], ["bench", "ddp"], ["bench", "faults"],
                                  ["bench", "plan"]])
def test_every_command_documents_its_exit_status(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "exit status: 0 " in capsys.readouterr().out
