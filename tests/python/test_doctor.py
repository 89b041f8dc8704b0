"""``efcomm doctor`` on synthetic flight records: a small generator writes the dumps of a 4-rank job
(50 collectives, lognormal jitter) with one fault injected, and the verdict must name it; fault-free
runs must raise no alarm."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import has_module

from efcomm import doctor
from efcomm.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = 1_795_000_000.0


def make_dumps(path, size=4, seqs=50, seed=0, compute=0.050, link=0.003, jitter=0.2, straggler=None,
               slow_link=None, hang=None, mismatch=None, no_dump=(), peers=True, job=None, left=None):
    """Writes efcomm-flight-rank<R>.json for a synchronous job into path. Even seqs follow the step's
    compute (gap ~ compute), odd ones are issued right after (gap ~ 0.2 ms), as a Reducer's two keys.
    straggler=(rank, factor[, from seq]); slow_link=(src, dst, factor); hang=(rank, seq): that rank never issues
    seq, the others wait inside it (pending); mismatch=(rank, seq, op): that rank calls op there, every
    rank fails with a MismatchError and stops; left=(rank, seq): that rank closes its monitor before
    seq, where the others fail (their next collective times out without it); job: the dumps' job
    token."""
    rng = np.random.default_rng(seed)
    records = [[] for _ in range(size)]
    last_end = np.full(size, T0)
    stop = seqs
    for s in range(seqs):
        base = compute if s % 2 == 0 else 0.0002
        gap = base * rng.lognormal(0.0, jitter, size)
        if straggler and s % 2 == 0 and s >= (straggler[2] if len(straggler) > 2 else 0):
            gap[straggler[0]] *= straggler[1]
        enq = last_end + gap
        if s == 0:
            gap[:] = np.nan
        p = link * rng.lognormal(0.0, jitter, (size, size))  # [src, dst]
        if slow_link:
            p[slow_link[0], slow_link[1]] *= slow_link[2]
        np.fill_diagonal(p, np.nan)
        start = enq.max()
        end = start + np.nanmax(p, axis=0) + 0.0001
        ops = ["allgatherv"] * size
        status, error = ["ok"] * size, [None] * size
        if mismatch and s == mismatch[1]:
            ops[mismatch[0]] = mismatch[2]
            status = ["failed"] * size
            error = [f"MismatchError: collective {s}: rank {mismatch[0]} called {mismatch[2]}, "
                     "rank 0 allgatherv"] * size
            stop = s + 1
        if left and s == left[1]:
            status = ["failed"] * size
            error = [f"CollectiveTimeout: collective #{s} cannot complete: rank {left[0]} closed its monitor"] * size
            stop = s + 1
        for r in range(size):
            if hang and s >= hang[1] and (r == hang[0] or s > hang[1]):
                continue
            if left and s >= left[1] and r == left[0]:
                continue
            pending = bool(hang) and s == hang[1]
            key = "w" if s % 2 == 0 else "b"
            records[r].append({
                "seq": s, "op": ops[r], "key": key, "algorithm": "allgather",
                "bytes": int(1000 + 10 * r + s), "enqueue": float(enq[r]),
                "start": None if pending else float(start), "end": None if pending else float(end[r]),
                "status": "pending" if pending else status[r], "error": error[r],
                "gap": None if not np.isfinite(gap[r]) else float(gap[r]),
                "peer_seconds": ([None if not np.isfinite(v) else float(v) for v in p[:, r]]
                                 if peers and not pending else None)})
        last_end = end
        if s + 1 >= stop:
            break
    written = float(last_end.max()) + (12.0 if hang else 0.5)
    for r in range(size):
        if r in no_dump:
            continue
        dump = {"format": "efcomm-flight-record", "version": 1, "rank": r, "size": size, "host": "node0",
                "pid": 1000 + r, "efcomm": "0.1.0",
                "reason": "close" if left and r == left[0] else "timeout" if hang or mismatch or left else "close",
                "written": written,
                "options": {"timeout_floor": 5.0, "timeout_factor": 4.0, "heartbeat_interval": 0.2,
                            "heartbeat_timeout": 2.0, "capacity": 4096, "window": 20},
                "dropped": 0, "records": records[r], "anomalies": [], "coordinator": None}
        if job is not None:
            dump["job"] = job
        (path / f"efcomm-flight-rank{r}.json").write_text(json.dumps(dump))
    return path


def doctor_json(capsys, *paths):
    code = main(["doctor", *map(str, paths), "--json", "--no-plots"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.parametrize("seed", range(5))
def test_fault_free_raises_no_alarm(capsys, tmp_path, seed):
    code, res = doctor_json(capsys, make_dumps(tmp_path, seed=seed))
    assert code == 0, res["verdict"]
    assert res["faults"] == [] and res["verdict"].startswith("No fault found")
    assert res["missing_ranks"] == [] and res["divergence"] is None
    assert res["complete_seqs"] == 50 and res["stragglers"]["flagged"] == [] and res["links"]["flagged"] == []
    assert all(0.8 < row["gap_ratio"] < 1.2 for row in res["stragglers"]["rows"])
    assert res["links"]["matrix_s"][0][0] is None and 0.002 < res["links"]["matrix_s"][0][1] < 0.005


def test_fault_free_text(capsys, tmp_path):
    assert main(["doctor", str(make_dumps(tmp_path)), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "VERDICT: No fault found" in out and "NTP" in out
    assert "src\\dst" in out and "gap median" in out


def test_hang_names_the_rank_and_seq(capsys, tmp_path):
    code, res = doctor_json(capsys, make_dumps(tmp_path, hang=(2, 30)))
    assert code == 1
    top = res["faults"][0]
    assert top["kind"] == "hang" and top["ranks"] == [2] and top["seq"] == 30
    assert res["divergence"]["seq"] == 30 and res["divergence"]["absent"] == [2]
    assert sorted(p["rank"] for p in res["pending"] if p["stuck"]) == [0, 1, 3]
    assert "rank 2 never reached seq 30" in res["verdict"] and "ranks 0, 1, 3 are stuck inside seq 30" in res["verdict"]


def test_missing_dump_names_the_rank(capsys, tmp_path):
    code, res = doctor_json(capsys, make_dumps(tmp_path, hang=(3, 30), no_dump=(3,)))
    assert code == 1 and res["missing_ranks"] == [3]
    top = res["faults"][0]
    assert top["ranks"] == [3] and top["seq"] == 30 and "rank 3 wrote no dump" in top["summary"]


def test_crash_is_placed_at_the_collective_the_others_failed_in(capsys, tmp_path):
    # The monitor's crash finding carries the last arrival the coordinator had heard of (seq 33;
    # arrivals travel in batches); the survivors' records say where it happened: their seq 39
    # failed without rank 2.
    make_dumps(tmp_path, seqs=40, no_dump=(2,))
    crash = {"kind": "crash", "ranks": [2], "seq": 33, "time": T0 + 5,
             "detail": "rank 2 crashed: its control connection was lost without a goodbye"}
    for r in (0, 1, 3):
        f = tmp_path / f"efcomm-flight-rank{r}.json"
        d = json.loads(f.read_text())
        d["records"][-1].update(status="failed", error="efcomm health: rank 2 crashed")
        d["anomalies"], d["reason"] = [crash], "timeout"
        f.write_text(json.dumps(d))
    code, res = doctor_json(capsys, tmp_path)
    assert code == 1
    top = res["faults"][0]
    assert top["kind"] == "crash" and top["ranks"] == [2] and top["seq"] == 39, top
    assert top["summary"].startswith("Crash of rank 2 at seq 39: ")
    assert "the other ranks' seq 39 failed without it" in top["summary"]


def test_stale_dump_is_not_a_hang(capsys, tmp_path):
    make_dumps(tmp_path)
    f = tmp_path / "efcomm-flight-rank1.json"
    d = json.loads(f.read_text())
    d["records"] = d["records"][:20]
    d["written"] = d["records"][-1]["end"] + 0.001
    d["reason"] = "demand"
    f.write_text(json.dumps(d))
    code, res = doctor_json(capsys, tmp_path)
    assert code == 0, res["verdict"]
    assert res["stale_dumps"] == [1] and "older" in res["verdict"]


def test_dump_taken_while_running_is_not_a_hang(capsys, tmp_path):
    make_dumps(tmp_path)  # SIGUSR1 mid-run: rank 1 still computes, the others are inside seq 49
    dumps = {r: json.loads((tmp_path / f"efcomm-flight-rank{r}.json").read_text()) for r in range(4)}
    issued = min(d["records"][49]["enqueue"] for r, d in dumps.items() if r != 1)
    for r, d in dumps.items():
        d["reason"], d["written"] = "signal", issued + 0.03
        if r == 1:
            d["records"].pop()
        else:
            d["records"][49].update(status="pending", start=None, end=None, peer_seconds=None)
        (tmp_path / f"efcomm-flight-rank{r}.json").write_text(json.dumps(d))
    code, res = doctor_json(capsys, tmp_path)
    assert code == 0, res["verdict"]
    assert res["behind"] == [1] and "behind, not stuck" in res["verdict"]
    assert [p["stuck"] for p in res["pending"]] == [False] * 3 and "3 in flight" in res["verdict"]


def test_mismatch_names_the_seq_and_rank(capsys, tmp_path):
    code, res = doctor_json(capsys, make_dumps(tmp_path, mismatch=(1, 12, "broadcast")))
    assert code == 1
    top = res["faults"][0]
    assert top["kind"] == "mismatch" and top["ranks"] == [1] and top["seq"] == 12
    assert "rank 1 called broadcast" in top["summary"] and "ranks 0, 2, 3 called allgatherv" in top["summary"]
    assert res["failed"][0]["seq"] == 12 and len(res["faults"]) == 1


def test_straggler_names_the_rank(capsys, tmp_path):
    code, res = doctor_json(capsys, make_dumps(tmp_path, straggler=(3, 1.5)))
    assert code == 1
    assert [(f["kind"], f["ranks"]) for f in res["faults"]] == [("straggler", [3])]
    row = res["stragglers"]["rows"][3]
    assert 1.3 < row["gap_ratio"] < 1.7 and row["late_median_s"] > 0.015 and row["straggler"]
    assert "rank 3" in res["verdict"]


def test_straggler_that_began_late_is_named(capsys, tmp_path):
    # 2.5x from seq 70 of 100 (the last 15 of 50 compute collectives): diluted in the whole
    # record's median (the monitor's windowed finding then looked like "a passing slowdown").
    make_dumps(tmp_path, seqs=100, straggler=(2, 2.5, 70))
    code, res = doctor_json(capsys, tmp_path)
    row = next(x for x in res["stragglers"]["rows"] if x["rank"] == 2)
    assert code == 1 and res["stragglers"]["flagged"] == [2] and row["gap_ratio"] < 1.25 < row["recent_ratio"]
    f = res["faults"][0]
    assert (f["kind"], f["ranks"]) == ("straggler", [2]) and "it began late and lasts to the end" in f["summary"]


def test_straggler_whose_peers_do_not_compute_is_named(capsys, tmp_path):
    """Only rank 2 computes (50 ms before each step; the others call back to back): those
    collectives carry compute because one rank's gap reaches the floor, as the live monitor counts
    (the median gap, 0.2 ms, once hid them: "no collective carried compute")."""
    code, res = doctor_json(capsys, make_dumps(tmp_path, compute=0.0002, straggler=(2, 250)))
    assert code == 1
    assert [(f["kind"], f["ranks"]) for f in res["faults"]] == [("straggler", [2])]
    assert res["stragglers"]["compute_seqs"] == 24 and res["stragglers"]["rows"][2]["gap_ratio"] > 100


def test_slow_link_names_it(capsys, tmp_path):
    code, res = doctor_json(capsys, make_dumps(tmp_path, slow_link=(1, 2, 3.0)))
    assert code == 1
    assert [(f["kind"], f["ranks"]) for f in res["faults"]] == [("slow_link", [1, 2])]
    assert res["links"]["slowest"]["src"] == 1 and res["links"]["slowest"]["dst"] == 2
    assert "Slow link 1 -> 2" in res["verdict"]


def test_slow_send_side_is_a_row(capsys, tmp_path):
    make_dumps(tmp_path, size=6, slow_link=None, seed=3)
    # rank 4's data arrives late everywhere: its send side
    for f in tmp_path.glob("efcomm-flight-rank*.json"):
        d = json.loads(f.read_text())
        for rec in d["records"]:
            if rec["peer_seconds"] and rec["peer_seconds"][4] is not None:
                rec["peer_seconds"][4] *= 3
        # The live monitor named the same side: confirmed, one fault (not "not confirmed" twice).
        d["anomalies"] = [{"kind": "slow_link", "ranks": [4], "seq": 20, "detail": "rank 4's send side is slow",
                           "time": T0 + 1}]
        f.write_text(json.dumps(d))
    code, res = doctor_json(capsys, tmp_path)
    assert code == 1 and res["links"]["slow_send"] == [4] and res["links"]["slow_recv"] == []
    assert [(f["kind"], f["ranks"]) for f in res["faults"]] == [("slow_link", [4])]
    assert "do not confirm" not in res["verdict"]
    assert "rank 4's send side" in res["verdict"]


def test_no_peer_times(capsys, tmp_path):
    code, res = doctor_json(capsys, make_dumps(tmp_path, peers=False))
    assert code == 0 and res["links"]["matrix_s"] is None and "links were not compared" in res["verdict"]


def test_anomalies_are_merged(capsys, tmp_path):
    make_dumps(tmp_path)
    for r in range(4):
        f = tmp_path / f"efcomm-flight-rank{r}.json"
        d = json.loads(f.read_text())
        d["anomalies"] = [{"kind": "nonfinite", "ranks": [2], "seq": 17, "detail": "NaN in rank 2's gradient 'w'",
                           "time": T0 + 1}]
        f.write_text(json.dumps(d))
    code, res = doctor_json(capsys, tmp_path)
    assert code == 1 and len(res["anomalies"]) == 1 and res["anomalies"][0]["reported_by"] == [0, 1, 2, 3]
    assert res["faults"][0]["kind"] == "nonfinite" and res["faults"][0]["ranks"] == [2]


def test_unreadable_dump_is_left_out_and_its_rank_missing(capsys, tmp_path):
    # One damaged dump (a rank killed mid-write) does not hide the others': it is named, its rank
    # counts as missing; only when no dump can be read is the input bad (exit 2).
    make_dumps(tmp_path)
    bad = tmp_path / "efcomm-flight-rank1.json"
    for text, why in (("{not json", "not valid JSON"), (json.dumps({"format": "something-else"}),
                                                          "not an efcomm flight record"),
                      (json.dumps({"format": "efcomm-flight-record", "version": 9}), "version 9")):
        bad.write_text(text)
        code, res = doctor_json(capsys, tmp_path)
        assert code == 1 and res["missing_ranks"] == [1], res["verdict"]
        assert any(w.startswith(f"{bad} was left out: ") and why in w for w in res["warnings"]), res["warnings"]
    assert main(["doctor", str(bad), "--no-plots"]) == 2
    assert "no readable dump" in capsys.readouterr().err
    # --json: an object on stdout too, for a script that reads it.
    assert main(["doctor", str(bad), "--no-plots", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == 2 and "no readable dump" in out["error"]


def test_bad_input_exits_2(capsys, tmp_path):
    make_dumps(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["doctor", str(empty)]) == 2
    assert "no efcomm-flight-rank*.json" in capsys.readouterr().err
    assert main(["doctor", str(tmp_path / "nosuch")]) == 2


def test_anomaly_naming_a_rank_outside_the_job_is_a_damaged_dump(capsys, tmp_path):
    make_dumps(tmp_path)
    f = tmp_path / "efcomm-flight-rank0.json"
    d = json.loads(f.read_text())
    d["anomalies"] = [{"kind": "crash", "ranks": [99], "seq": 3, "detail": "", "time": T0}]
    f.write_text(json.dumps(d))
    code, res = doctor_json(capsys, tmp_path)
    assert code == 1 and res["missing_ranks"] == [0]
    assert any("names rank 99 of a job of 4" in w for w in res["warnings"]), res["warnings"]


def test_sizes_disagree_is_bad_input(capsys, tmp_path):
    # Dumps of different jobs (or a damaged one) mixed: no diagnosis of a job that is not there.
    make_dumps(tmp_path)
    f = tmp_path / "efcomm-flight-rank3.json"
    d = json.loads(f.read_text())
    d["size"] = 8
    for rec in d["records"]:
        rec["peer_seconds"] = rec["peer_seconds"] and rec["peer_seconds"] + [None] * 4
    f.write_text(json.dumps(d))
    assert main(["doctor", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "the dumps disagree on the number of ranks: ranks 0, 1, 2 say 4; rank 3 says 8" in err, err


def test_dumps_of_another_run_are_left_out(capsys, tmp_path):
    # Rank 2 crashed in this run and left no dump; its dump of an earlier run (another job token,
    # written minutes before) is still in the directory: left out, rank 2 named, not the others.
    make_dumps(tmp_path, seed=1, job="00000000000000aa")
    old = json.loads((tmp_path / "efcomm-flight-rank2.json").read_text())
    make_dumps(tmp_path, hang=(2, 30), no_dump=(2,), job="00000000000000bb")
    (tmp_path / "efcomm-flight-rank2.json").write_text(json.dumps(dict(old, written=old["written"] - 600)))
    code, res = doctor_json(capsys, tmp_path)
    assert code == 1 and res["missing_ranks"] == [2], res["verdict"]
    assert [(f["kind"], f["ranks"]) for f in res["faults"]][0][1] == [2]
    assert any("1 dump(s) of another run left out" in w and "this run is job 00000000000000bb" in w
               for w in res["warnings"]), res["warnings"]


def test_the_latest_run_is_diagnosed_though_an_older_one_left_more_dumps(capsys, tmp_path):
    # A 4-rank run, then a 2-rank one in the same directory: ranks 2 and 3's dumps are the old run's.
    make_dumps(tmp_path, job="00000000000000aa")
    make_dumps(tmp_path, size=2, seed=3, job="00000000000000bb")
    for r in (0, 1):
        f = tmp_path / f"efcomm-flight-rank{r}.json"
        f.write_text(json.dumps(dict(json.loads(f.read_text()), written=T0 + 3600)))
    code, res = doctor_json(capsys, tmp_path)
    assert code == 0 and res["size"] == 2 and res["ranks"] == [0, 1], res["verdict"]
    assert any("2 dump(s) of another run left out" in w for w in res["warnings"]), res["warnings"]


def test_rank_that_left_early_is_named_as_such(capsys, tmp_path):
    make_dumps(tmp_path, left=(3, 12))
    code, res = doctor_json(capsys, tmp_path)
    assert code == 1 and res["left"] == [3] and res["behind"] == [] and res["ends_early"] == [{"rank": 3, "seq": 12}]
    f = res["faults"][0]
    assert (f["kind"], f["ranks"], f["seq"]) == ("left", [3], 12), f
    assert f["summary"].startswith("Rank 3 left the job early at seq 12: rank 3 left the job: it closed its monitor")


def _set_size(path, rank, size):
    f = path / f"efcomm-flight-rank{rank}.json"
    d = json.loads(f.read_text())
    d["size"] = size
    f.write_text(json.dumps(d))


def test_implausible_size_is_a_damaged_dump(capsys, tmp_path):
    # No per-peer times, so no list of that length vouches for the size: before the check, the
    # doctor looped over range(size) and allocated (seqs, size, size) arrays.
    _set_size(make_dumps(tmp_path, peers=False), 3, (1 << 20) + 1)
    code, res = doctor_json(capsys, tmp_path)  # that dump is left out: rank 3 is missing
    assert code == 1 and res["size"] == 4 and res["missing_ranks"] == [3]
    assert f"{tmp_path / 'efcomm-flight-rank3.json'} was left out: size 1048577 is not a number of ranks a job has " \
           "(at most 1048576)" in res["warnings"][0]
    assert main(["doctor", str(tmp_path / "efcomm-flight-rank3.json"), "--no-plots"]) == 2  # nothing else to read


def test_large_size_skips_the_link_analysis(capsys, tmp_path):
    make_dumps(tmp_path, peers=False)
    for r in range(4):
        _set_size(tmp_path, r, 100_000)
    code, res = doctor_json(capsys, tmp_path)
    assert code == 1 and res["size"] == 100_000 and len(res["missing_ranks"]) == 100_000 - 4
    assert res["links"]["matrix_s"] is None
    assert res["links"]["note"].startswith("links were not compared: 100000 ranks are more than the 256")


def test_link_analysis_is_bounded(capsys, tmp_path, monkeypatch):
    make_dumps(tmp_path, slow_link=(1, 2, 3.0))
    monkeypatch.setattr(doctor, "LINKS_MAX_VALUES", 20 * 4 * 4)  # 4 ranks: the latest 20 collectives
    code, res = doctor_json(capsys, tmp_path)
    assert code == 1 and [(f["kind"], f["ranks"]) for f in res["faults"]] == [("slow_link", [1, 2])]
    assert res["links"]["seqs"] == 20 and "latest 20 of the 50 collectives" in res["links"]["note"]
    monkeypatch.setattr(doctor, "LINKS_MAX_RANKS", 3)
    code, res = doctor_json(capsys, tmp_path)
    assert code == 0 and res["links"]["matrix_s"] is None
    assert "links were not compared: 4 ranks are more than the 3" in res["verdict"]
    assert main(["doctor", str(tmp_path), "--no-plots"]) == 0
    assert "Links were not compared: 4 ranks" in capsys.readouterr().out


def test_explicit_files(capsys, tmp_path):
    make_dumps(tmp_path, hang=(2, 30))
    files = [str(tmp_path / f"efcomm-flight-rank{r}.json") for r in (0, 1, 2)]
    code, res = doctor_json(capsys, files[0], *files[1:])
    assert code == 1 and res["missing_ranks"] == [3] and 2 in res["faults"][0]["ranks"]


@pytest.mark.skipif(not has_module("matplotlib"), reason="needs matplotlib: pip install matplotlib")
def test_plots_and_the_module_entry_point(tmp_path):
    make_dumps(tmp_path, slow_link=(1, 2, 3.0))
    out = tmp_path / "plots"
    p = subprocess.run([sys.executable, "-m", "efcomm.cli", "doctor", str(tmp_path), "--json", "--plots", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    res = json.loads(p.stdout)
    for name in ("links", "lateness"):
        png = out / f"efcomm-doctor-{name}.png"
        assert res["plots"][name] == str(png) and png.read_bytes()[:8] == PNG_MAGIC


def test_plots_default_to_the_dump_directory(capsys, tmp_path):
    make_dumps(tmp_path)
    res = doctor.run([str(tmp_path)])
    if has_module("matplotlib"):
        assert (tmp_path / "efcomm-doctor-links.png").exists() and (tmp_path / "efcomm-doctor-lateness.png").exists()
    else:
        assert "matplotlib" in res["plots"]["skipped"]
    assert "Plots" in doctor.render_text(res)


def test_without_matplotlib_the_plots_are_skipped(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    make_dumps(tmp_path)
    assert main(["doctor", str(tmp_path)]) == 0
    assert "Plots skipped: matplotlib is not installed" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.png"))


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    out = capsys.readouterr().out
    assert "exit status: 0 no fault found, 1 a fault found, 2 bad input" in out and "--no-plots" in out
