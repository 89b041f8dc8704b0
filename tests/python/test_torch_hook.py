"""ef.torch.ddp_hook in real DDP training: 2 gloo ranks in separate processes (tests/torch/ddp_worker.py)."""

import math
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

import efcomm as ef
from helpers import has_module

pytestmark = pytest.mark.skipif(not has_module("torch"), reason="torch is not installed (pip install torch)")

WORKER = pathlib.Path(__file__).resolve().parents[1] / "torch" / "ddp_worker.py"
N = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(scenario, tmp_path):
    import torch

    subprocess.run([sys.executable, str(WORKER), scenario, str(N), str(tmp_path), str(_free_port())],
                   check=True, timeout=240)
    return [torch.load(tmp_path / f"{scenario}-{r}.pt", weights_only=False) for r in range(N)]


def test_identity_hook_equals_plain_ddp(tmp_path):
    import torch

    plain = _run("plain", tmp_path)
    hooked = _run("identity", tmp_path)
    torch.testing.assert_close(hooked[0]["params"], plain[0]["params"], rtol=1e-5, atol=1e-6)
    assert hooked[0]["stats"]["compressed_calls"] > 0
    assert torch.equal(hooked[0]["params"], hooked[1]["params"])


def test_complex_parameters_are_reduced_whole(tmp_path):
    # DDP holds a complex gradient as its real view (twice the elements); bucket.gradients()
    # shows half of them, and the other half stayed each rank's own: the ranks drifted apart.
    import torch

    plain = _run("complex_plain", tmp_path)
    hooked = _run("complex_identity", tmp_path)
    torch.testing.assert_close(hooked[0]["params"], plain[0]["params"], rtol=1e-5, atol=1e-6)
    assert torch.equal(hooked[0]["params"], hooked[1]["params"])
    topk = _run("complex_topk", tmp_path)
    assert torch.equal(topk[0]["params"], topk[1]["params"])


def test_float64_model_keeps_float64_precision(tmp_path):
    # The hook compresses and averages a float64 model's gradients in float64 (it had rounded
    # them to float32: a relative error of ~1e-7 in every step).
    import torch

    plain = _run("plain_f64", tmp_path)
    hooked = _run("identity_f64", tmp_path)
    assert hooked[0]["params"].dtype == torch.float64
    torch.testing.assert_close(hooked[0]["params"], plain[0]["params"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scenario", ["topk", "topk_bf16", "topk_accumulate"])
def test_topk_ef21_trains_identically_on_every_rank(tmp_path, scenario):
    import torch

    res = _run(scenario, tmp_path)
    assert torch.equal(res[0]["params"], res[1]["params"])
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in res)
    stats = res[0]["stats"]
    assert stats["compressed_calls"] > 0 and stats["bytes_sent"] > 0
    # The hook state pickles (torch.save) and keeps its slots; torch.load's default
    # weights_only=True reads it back.
    state = torch.load(tmp_path / f"{scenario}-0.pt")["state"]
    assert state.state_dict()["slots"] and state.iter == 6
    assert state.state_dict()["slots"].keys() == res[0]["state"].state_dict()["slots"].keys()


@pytest.mark.parametrize("suffix", ["", "@allreduce"])
def test_powersgd_factors_each_weight_as_its_matrix(tmp_path, suffix):
    # Each rank's weight gradient is rank-1 (one sample): PowerSGD of rank 1 keeps it exactly
    # when it factors the 10 x 64 weight as such, so the hook's mean equals DDP's. Gathered
    # (allgather), each rank's factors are exact; summed (allreduce), the mean of two rank-1
    # matrices is not rank-1, and the first power iteration keeps part of it.
    import torch

    plain = _run("rank1_plain", tmp_path)
    hooked = _run("rank1_powersgd" + suffix, tmp_path)
    assert hooked[0]["stats"]["compressed_calls"] == 1
    assert torch.equal(hooked[0]["grad"], hooked[1]["grad"])
    if not suffix:
        torch.testing.assert_close(hooked[0]["grad"], plain[0]["grad"], rtol=1e-5, atol=1e-6)
    else:
        err = (hooked[0]["grad"] - plain[0]["grad"]).norm() / plain[0]["grad"].norm()
        assert 0 < err < 1


def test_ef21w_with_topk_trains_as_ef21(tmp_path):
    # Each rank's worker gets its own weight (0.25, 0.75) from weights=; TopK is positively
    # homogeneous, so EF21-W's iterates are EF21's (docs/algorithms.md) up to rounding.
    import torch

    w = _run("topk_ef21w", tmp_path)
    plain = _run("topk", tmp_path)
    assert torch.equal(w[0]["params"], w[1]["params"])
    torch.testing.assert_close(w[0]["params"], plain[0]["params"], rtol=1e-4, atol=1e-5)
    assert w[0]["state"].feedback == "ef21w:init=full" and w[0]["state"].weights == [0.25, 0.75]
    assert w[0]["stats"]["compressed_calls"] > 0


def test_hook_ef21w_arguments():
    import pickle

    # ef21w without weights is 1/n each; its state (weights []) pickles and comes back as it was.
    state, _ = ef.torch.ddp_hook("topk:ratio=0.05", "ef21w")
    assert state.feedback == "ef21w:init=full" and state.weights == []
    again = pickle.loads(pickle.dumps(state))
    assert again.weights == [] and again.feedback == state.feedback
    with pytest.raises(ef.InvalidArgument, match="weights="):
        ef.torch.ddp_hook("topk:ratio=0.05", "ef21w:weight=0.5,n=2")
    with pytest.raises(ef.InvalidArgument, match="EF21-W"):
        ef.torch.ddp_hook("topk:ratio=0.05", "ef21", weights=[0.5, 0.5])
    with pytest.raises(ef.InvalidArgument, match=r"\(0, 1\]"):
        ef.torch.ddp_hook("topk:ratio=0.05", "ef21w", weights=[0.5, 1.5])


def test_compression_sends_fewer_bytes(tmp_path):
    ident = _run("identity", tmp_path)[0]["stats"]
    topk = _run("topk", tmp_path)[0]["stats"]
    # 6 steps: identity sends every value each time (~6 vectors); TopK 5% + EF21 sends 2 warm-up
    # allreduces and 4 messages of 5% of the values with indices (~2.4 vectors): the last warm-up
    # step starts EF21's estimates, so no compressed step sends a whole vector (that would be 3.4).
    assert topk["bytes_sent"] < 0.5 * ident["bytes_sent"]


@pytest.mark.parametrize("suffix", ["", "@reduce_scatter"])
def test_checkpoint_resumes_bit_identically(tmp_path, suffix):
    import torch

    _run("resume_a" + suffix, tmp_path)
    a = [torch.load(tmp_path / f"resume_a{suffix}-{r}.pt", weights_only=False) for r in range(N)]
    b = _run("resume_b" + suffix, tmp_path)
    for r in range(N):
        assert torch.equal(a[r]["params"], b[r]["params"])
        assert b[r]["keys"] == ["p0:96x64", "p2:10x96"]


def test_hooks_configured_differently_fail_every_rank(tmp_path):
    for r in _run("config_mismatch", tmp_path):
        assert r["error"] is not None and "MismatchError" in r["error"] and "hooks differ" in r["error"], r


def test_damaged_reducer_checkpoint_fails_at_load_or_on_every_rank_at_once(tmp_path):
    r0, r1 = _run("damaged_checkpoint@reduce_scatter", tmp_path)
    entry = f"'{r1['deleted']}'"  # the whole name, as the saved dict spells it
    assert r0["load_error"] is None
    assert "InvalidArgument" in r1["load_error"] and entry in r1["load_error"], r1
    # Loaded outside the group: at the first bucket, rank 1 says why, rank 0 that they differ.
    assert "InvalidArgument" in r1["error"] and entry in r1["error"], r1
    assert "MismatchError" in r0["error"] and "did not load" in r0["error"], r0


def test_hook_state_dict_is_a_copy_and_keeps_the_saved_world():
    import torch

    state, _ = ef.torch.ddp_hook("topk:ratio=0.1", "ef21w", weights=[0.3, 0.7])
    state.state_dict()["weights"][0] = 0.9
    assert state.weights == [0.3, 0.7]
    # A reducer state is copied in and out: changing the caller's dict changes nothing here.
    red, _ = ef.torch.ddp_hook("topk:ratio=0.1", "ef21", algorithm="reduce_scatter")
    saved = dict(red.state_dict(), world=2, reducer={"meta": {"reducer.keys": "0"}, "tensors": {"t": torch.ones(2)}})
    red.load_state_dict(saved)
    saved["reducer"]["tensors"]["t"].mul_(0.5)
    saved["reducer"]["meta"]["reducer.keys"] = "7"
    again = red.state_dict()
    assert torch.equal(again["reducer"]["tensors"]["t"], torch.ones(2)) and again["reducer"]["meta"]["reducer.keys"] == "0"
    again["reducer"]["tensors"]["t"].mul_(0.5)
    assert torch.equal(red.state_dict()["reducer"]["tensors"]["t"], torch.ones(2))
    # Outside a process group a loaded state keeps the world it was saved by (it re-saved as 1).
    assert again["world"] == 2
    red.load_state_dict(again)
    assert "compressed parameters=0" in repr(red)
    red.load_state_dict(dict(again, reducer={"meta": {"reducer.keys": "x"}, "tensors": {}}))
    assert "compressed parameters=0" in repr(red)  # checked when it loads; repr does not raise


@pytest.mark.parametrize("suffix", ["", "@reduce_scatter"])
def test_nonfinite_gradient_is_nan_on_every_rank_and_training_goes_on(tmp_path, suffix):
    # Rank 1's NaN: the compressed (2-d) gradients are NaN on every rank, as DDP's allreduce
    # leaves them, a warning names rank 1, the step is skipped, and the next steps train (an
    # exception from the hook would leave DDP's reducer unusable). Through a Reducer, rank 0
    # learns that rank 1 skipped the round, and rank 1 says what its own vector held.
    res = _run("nonfinite" + suffix, tmp_path)
    for r in res:
        assert r["grads_finite"][0] is False and r["grads_finite"][2] is False, r["grads_finite"]
        named = ("rank(s) [1] had non-finite gradients",) if not suffix else ("rank 1 has a non-finite vector",
                                                                             "on rank 1: ")
        assert any(any(t in w for t in named) for w in r["warnings"]), r["warnings"]
        assert r["stats"]["nonfinite_rounds"] == 1
        assert all(math.isfinite(x) for x in r["losses"]) and bool(r["params"].isfinite().all())
    assert res[0]["params"].tolist() == res[1]["params"].tolist()


# ---- ef.Communicator.torch and the hook's Reducer algorithms ----------------------------------

COMM_WORKER = pathlib.Path(__file__).resolve().parents[1] / "torch" / "comm_worker.py"


def _run_comm(scenario, n, tmp_path):
    import torch

    subprocess.run([sys.executable, str(COMM_WORKER), scenario, str(n), str(tmp_path), str(_free_port())],
                   check=True, timeout=240)
    return [torch.load(tmp_path / f"{scenario}-{r}.pt", weights_only=False) for r in range(n)]


@pytest.mark.parametrize("n", [2, 3])
def test_torch_communicator_reduces_as_the_in_process_backend(tmp_path, n):
    # A Reducer over gloo gives every rank the bits the in-process backend gives, for every
    # algorithm: allgather and reduce_scatter move bytes only; the allreduce algorithm's sums are
    # torch's all_reduce, which on 2 ranks is x0 + x1 as the in-process rank-order sum (3 ranks:
    # the same bits on every rank, compared with the in-process ones within rounding).
    sys.path.insert(0, str(COMM_WORKER.parent))
    try:
        import comm_worker
    finally:
        sys.path.pop(0)
    got = _run_comm("reduce", n, tmp_path)
    want = ef.testing.run_ranks(n, comm_worker.reduce_all)
    for case in comm_worker.CASES:
        ys = [r[case][0] for r in got]
        for y in ys[1:]:
            assert y.tobytes() == ys[0].tobytes(), case  # bit-identical on every rank
        if n == 2 or case[2] != "allreduce":
            assert ys[0].tobytes() == want[0][case][0].tobytes(), case
        else:
            np.testing.assert_allclose(ys[0], want[0][case][0], rtol=1e-5, atol=1e-5, err_msg=str(case))
        stats = got[0][case][1]
        assert stats["bytes_sent"] == want[0][case][1]["bytes_sent"] > 0, case
        assert stats["algorithm"] == want[0][case][1]["algorithm"], case


def test_torch_communicator_learns_block_sizes(tmp_path):
    # A Reducer call's collectives (labelled) take one torch collective each when their sizes fit:
    # the first (16 bytes here) a fixed capacity, the others what the same collective of the last
    # round needed (an eighth more); two otherwise. Unlabelled ones always two (sizes, then
    # bytes). Every rank gets the right bytes either way.
    for r in _run_comm("blocks", 3, tmp_path):
        assert all(gathered and exchanged for gathered, exchanged, _ in r), r
        # 1 for the first + the others': 100 (new), 100, 90 (fit), 170 (some ranks' blocks outgrow
        # the capacity, 176, others not), 300 (grew), 0 (fits), 5000 (grew), 5000; unlabelled 300
        assert [c for _, _, c in r] == [5, 3, 3, 5, 5, 3, 5, 3, 6], r


def test_torch_communicator_ranks_whose_learned_sizes_differ(tmp_path):
    # Blocks of different sizes would abort gloo: keys that disagree still meet the agreement
    # (MismatchError on both ranks), and a rank on a new communicator (nothing learned) with its
    # saved state continues with the others, the same bits on both.
    r0, r1 = _run_comm("relearn", 2, tmp_path)
    assert r0["error"] == r1["error"] == "MismatchError"
    for a, b in zip(r0["after"], r1["after"]):
        assert a.tobytes() == b.tobytes()


def test_torch_communicator_timeout_raises_collective_timeout(tmp_path):
    r0 = _run_comm("timeout", 2, tmp_path)[0]
    assert r0["error"] == "CollectiveTimeout", r0
    assert "barrier" in r0["message"] and "within 2 s" in r0["message"]
    assert r0["seconds"] < 5
    for name, same, seconds in r0["later"]:  # raised at once, the same error
        assert name == "CollectiveTimeout" and same and seconds < 0.5, r0["later"]


def test_torch_communicator_under_a_health_monitor(tmp_path):
    r0, r1 = _run_comm("monitor", 2, tmp_path)
    for r in (r0, r1):
        assert r["error"] == "CollectiveTimeout" and r["culprits"] == [1], r
        assert ("hang", [1]) in r["anomalies"], r
    assert r0["seconds"] < 8, r0  # the verdict, not rank 1's return after 10 s


def test_torch_communicator_needs_an_initialized_gloo_group():
    with pytest.raises(ef.InvalidArgument, match="init_process_group"):
        ef.Communicator.torch()


def test_hook_algorithm_argument():
    import pickle

    with pytest.raises(ef.InvalidArgument, match="unknown algorithm"):
        ef.torch.ddp_hook("topk:ratio=0.05", "ef21", algorithm="ring")
    # Checked when the hook is made: DDP does not recover from an error in its first compressed step.
    for compressor in ("topk:ratio=0.05", "sign", "quant:bits=8", "qsgd:levels=4", "natural"):
        with pytest.raises(ef.InvalidArgument, match="payloads add"):
            ef.torch.ddp_hook(compressor, "ef21", algorithm="allreduce")
    with pytest.raises(ef.InvalidArgument, match="ProcessGroup"):
        ef.torch.ddp_hook("topk:ratio=0.05", "ef21", process_group="pg")
    for bad in (dict(start_iter=True), dict(start_iter=-1), dict(min_compress_numel=1.5)):
        with pytest.raises(ef.InvalidArgument, match=next(iter(bad))):
            ef.torch.ddp_hook("topk:ratio=0.05", "ef21", **bad)
    # EF21-W's weights, one per rank: checked at the first bucket, before any collective.
    weighted, _ = ef.torch.ddp_hook("topk:ratio=0.05", "ef21w", weights=[0.2, 0.3, 0.5])
    weighted._world = lambda: 2
    with pytest.raises(ef.InvalidArgument, match="3 EF21-W weights for a process group of 2"):
        weighted._agree("cpu")
    state, _ = ef.torch.ddp_hook("powersgd:rank=2", "ef14", algorithm="allreduce")
    again = pickle.loads(pickle.dumps(state))
    assert again.algorithm == "allreduce" and "algorithm='allreduce'" in repr(again)
    other, _ = ef.torch.ddp_hook("powersgd:rank=2", "ef14")
    with pytest.raises(ef.InvalidArgument, match="algorithm"):
        other.load_state_dict(state.state_dict())


@pytest.mark.parametrize("algorithm", ["reduce_scatter", "allreduce"])
def test_reducer_algorithm_identity_hook_equals_plain_ddp(tmp_path, algorithm):
    import torch

    plain = _run("plain", tmp_path)
    hooked = _run(f"identity@{algorithm}", tmp_path)
    torch.testing.assert_close(hooked[0]["params"], plain[0]["params"], rtol=1e-5, atol=1e-6)
    assert hooked[0]["stats"]["compressed_calls"] > 0 and hooked[0]["stats"]["bytes_sent"] > 0
    assert torch.equal(hooked[0]["params"], hooked[1]["params"])


@pytest.mark.parametrize("scenario", ["topk@reduce_scatter", "powersgd@allreduce", "topk_ef21w@reduce_scatter"])
def test_reducer_algorithm_hook_trains_identically_on_every_rank(tmp_path, scenario):
    import torch

    res = _run(scenario, tmp_path)
    assert torch.equal(res[0]["params"], res[1]["params"])
    assert all(math.isfinite(x) for r in res for x in r["losses"])
    assert res[0]["stats"]["compressed_calls"] > 0
    ident = _run("identity@allreduce", tmp_path)[0]["stats"]
    assert 0 < res[0]["stats"]["bytes_sent"] < 0.6 * ident["bytes_sent"]


def test_load_state_dict_refuses_malformed_states():
    # Every malformed field is InvalidArgument naming it (not a ValueError, TypeError or KeyError
    # of the parsing), and nothing changes: the state loads afterwards as it was.
    state, _ = ef.torch.ddp_hook("topk:ratio=0.05", "ef21")
    good = state.state_dict()
    for name, value, match in (("world", "x", "world"), ("iter", None, "iter"), ("iter", True, "iter"),
                               ("start_iter", -1, "start_iter"), ("stats", None, "stats"), ("slots", [], "slots"),
                               ("reducer", 5, "reducer"), ("reducer", {"meta": 1, "tensors": {}}, "reducer"),
                               ("slots", {"p0:3x3": {"shape": [3, 3]}}, "has no worker")):
        with pytest.raises(ef.InvalidArgument, match=match):
            state.load_state_dict(dict(good, **{name: value}))
    state.load_state_dict(good)
    assert state.state_dict()["iter"] == good["iter"] and repr(state).startswith("DDPHookState(")


def test_torch_communicator_needs_a_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path}/store")
    try:
        with pytest.raises(ef.InvalidArgument, match="ProcessGroup"):
            ef.Communicator.torch("pg")
        assert ef.Communicator.torch().size == 1
    finally:
        dist.destroy_process_group()
