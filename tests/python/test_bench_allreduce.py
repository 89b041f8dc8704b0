"""``efcomm bench allreduce`` end to end on tiny vectors: real mpiexec ranks, real bytes on the
loopback (a smoke test: no timed assertions), and its argument parsers."""

import json

import pytest

from efcomm.bench import _netns
from efcomm.bench import allreduce as bench
from efcomm.cli import main

MPI_MISSING = bench.mpi_unavailable_reason(bench.find_mpiexec(None))
SIZE = 1 << 18  # float32 elements: a 1 MiB identity message, large against TCP/IP overheads


def test_parsers():
    assert [bench.parse_size(s) for s in ("65536", "64K", "16M", "4m")] == [65536, 1 << 16, 1 << 24, 1 << 22]
    assert bench.size_text(1 << 26) == "64M" and bench.size_text(3 << 10) == "3K" and bench.size_text(1000) == "1000"
    for bad in ("0", "1G", "-5", "x"):
        with pytest.raises(ValueError, match="size"):
            bench.parse_size(bad)
    assert _netns.parse_rate("unlimited") is None
    assert [_netns.parse_rate(r) for r in ("1gbit", "10Gbit", "500mbit")] == [10**9, 10**10, 5 * 10**8]
    assert [_netns.rate_arg(b) for b in (None, 10**9, 5 * 10**8)] == ["unlimited", "1gbit", "500mbit"]
    with pytest.raises(ValueError, match="rate"):
        _netns.parse_rate("1gbps")
    assert _netns.burst_bytes(10**9) == 500_000 and _netns.burst_bytes(10**6) == _netns.MIN_BURST_BYTES
    cfg = bench.Config.parse("quant:bits=8,block=256+ef21@reduce_scatter")
    assert (cfg.compressor, cfg.feedback, cfg.algorithm) == ("quant:bits=8,block=256", "ef21", "reduce_scatter")
    assert cfg.text == "quant:bits=8,block=256+ef21@reduce_scatter"
    for bad in ("topk:ratio=0.01+ef21", "topk@allgather", "+ef21@auto"):
        with pytest.raises(ValueError, match="COMPRESSOR"):
            bench.Config.parse(bad)
    # Specs and algorithms are checked at parse time, before any launch.
    for bad, message in (("topk:ratio=2+ef21@allgather", "ratio"), ("topk:ratio=0.01+ef21@ring", "unknown algorithm"),
                         ("topk:ratio=0.01+ef99@allgather", "unknown feedback")):
        with pytest.raises(ValueError, match=message):
            bench.Config.parse(bad)
    assert bench.Config.parse("topk:ratio=0.01+ef21w@allgather").feedback == "ef21w"
    with pytest.raises(SystemExit):
        main(["bench", "allreduce", "--ranks", "1"])


@pytest.mark.parametrize("argv, message", [
    # Rank 0 failed on default_rng(-1) and the others waited for it.
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--timeout", "nan"], "argument --timeout: must be a finite number > 0, got nan"),
])
def test_bad_numbers_are_rejected_by_the_parser(argv, message, capsys):
    from efcomm.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "allreduce", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_plot_without_matplotlib_fails_before_the_run(capsys, monkeypatch, tmp_path):
    """The plot is drawn after minutes of measuring: a missing matplotlib is bad input at once."""
    import sys

    from efcomm.cli import build_parser

    png = str(tmp_path / "scaling.png")
    assert build_parser().parse_args(["bench", "allreduce", "--plot", png]).plot == png
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "allreduce", "--plot", png])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --plot: the plot needs matplotlib: pip install matplotlib" in err


@pytest.mark.skipif(MPI_MISSING is not None, reason=f"needs MPI: {MPI_MISSING}")
def test_two_ranks_unlimited(capsys, tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- bench:allreduce:begin -->\nold\n<!-- bench:allreduce:end -->\n")
    assert main(["bench", "allreduce", "--sizes", "256K", "--ranks", "2", "--rates", "unlimited",
                 "--configs", "identity+none@allgather", "topk:ratio=0.01+ef21@allgather",
                 "--scaling-ranks", "2,3", "--scaling-size", "256K", "--repeats", "2", "--timeout", "120",
                 "--no-progress", "--json", "--write-docs", str(docs), "--plot", str(tmp_path / "s.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (tmp_path / "s.png").read_bytes().startswith(b"\x89PNG") and result["plot"].endswith("s.png")
    assert [(r["part"], r["ranks"], r["status"]) for r in result["runs"]] == [
        ("main", 2, "ok"), ("scaling", 2, "ok"), ("scaling", 3, "ok")], result["runs"]
    assert result["transport"]["mpi_library"]
    rows = {(r["part"], r["ranks"], r.get("config", "mpi")): r for r in result["rows"]}
    nbytes = 4 * SIZE

    mpi = rows[("main", 2, "mpi")]
    assert mpi["median_s"] > 0 and mpi["calls"] == 2
    identity = rows[("main", 2, "identity+none@allgather")]
    topk = rows[("main", 2, "topk:ratio=0.01+ef21@allgather")]
    for r in (identity, topk):
        assert r["status"] == "ok", r["reason"]
        assert r["median_s"] > 0 and r["speedup"] > 0 and r["calls"] == 2
    # An identity message is the raw vector plus a header and checksum.
    assert nbytes < identity["bytes_sent_per_rank"] < nbytes + 4096
    assert identity["rel_err_vs_mean"] < 1e-6
    # Two ranks: each receives the other's message and header.
    assert identity["payload_bytes"] == pytest.approx(
        2 * (identity["bytes_sent_per_rank"] + identity["control_bytes_per_rank"]))
    assert 0 < topk["bytes_sent_per_rank"] < nbytes / 20

    if result["transport"]["namespace"]:
        # With two ranks MPI_Allreduce sends at least one vector each way: the traffic is on lo.
        assert mpi["wire_bytes"] >= 2 * nbytes
        # The accounting the target checks, on the message large enough to leave no room
        # for hidden padding: every payload byte on the wire once, headers of a few percent at most.
        assert 1.0 <= identity["wire_ratio"] <= 1 + bench.WIRE_TOLERANCE, identity
        assert topk["wire_ratio"] >= 1.0
    else:
        assert "wire_bytes" not in identity and "wire_bytes" not in mpi

    two, three = (rows[("scaling", n, "topk:ratio=0.01+ef21@allgather")] for n in (2, 3))
    assert two["status"] == three["status"] == "ok"
    # allgather: a rank receives every other rank's message.
    assert three["bytes_received_per_rank"] == pytest.approx(2 * two["bytes_received_per_rank"], rel=0.05)
    assert {t["status"] for t in result["targets"]} <= {"PASS", "FAIL", "SKIP"}

    text = docs.read_text()
    assert "old" not in text and "#### MPI_Allreduce" in text and "| identity + none" in text
    assert "efcomm bench allreduce --sizes 256K --ranks 2 --rates unlimited" in text


def _row(part, ranks, algorithm, rate=None, size=bench.TARGET_SIZE, **fields):
    return {"part": part, "kind": "efcomm", "rate": rate, "ranks": ranks, "size": size,
            "compressor": "topk:ratio=0.01", "feedback": "ef21", "algorithm": algorithm, "status": "ok",
            "reason": None, "config": f"topk:ratio=0.01+ef21@{algorithm}", **fields}


def test_targets_from_rows():
    config = {"configs": ["topk:ratio=0.01+ef21@allgather", "topk:ratio=0.01+ef21@reduce_scatter",
                          "topk:ratio=0.01+ef21@auto"], "scaling": {"size": 1 << 22}}
    rows = [_row("main", 4, "allgather", rate=10**9, speedup=27.0, wire_ratio=1.01),
            _row("main", 4, "reduce_scatter", rate=10**9, speedup=9.0, wire_ratio=1.07),
            # 8 ranks send 1.75x what 2 do: measured on the wire where there is a wire count
            *[_row("scaling", n, "reduce_scatter", size=1 << 22, wire_bytes=n * 1000 * (2 - 2 / n),
                   bytes_sent_per_rank=1.0) for n in (2, 4, 8)]]
    runs = [{"part": "main", "rate": 10**9, "ranks": 4, "status": "ok", "reason": None}]
    result = {"config": config, "rows": rows, "runs": runs, "transport": {"namespace_unavailable": None}}
    status = [(t["status"], t["value"]) for t in bench.evaluate(result)]
    assert status[0] == ("PASS", 27.0) and status[1] == ("FAIL", 9.0)
    assert status[2] == ("SKIP", None)  # auto: no row at 64M, although the 1 Gbit/s run itself ran
    assert status[3][0] == "FAIL" and status[3][1] == pytest.approx(0.75)
    assert status[4][0] == "PASS" and status[4][1] == pytest.approx(0.0)  # exactly on the 2(n-1)/n bound
    assert status[5][0] == "FAIL" and status[5][1] == pytest.approx(0.07)

    runs[0].update(status="timeout", reason="no result within 60 s")
    rows[:2] = []
    assert [t["status"] for t in bench.evaluate(result)][:3] == ["ERROR"] * 3
