"""ef.Reducer and ef.testing.run_ranks on in-process ranks: the mean, bit-identical results on
every rank, mismatches and exceptions that fail every rank instead of hanging, state dicts."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

import efcomm as ef

SIZES = [1, 2, 3, 4]


def _grad(rank, step, shape=(37, 5), dtype=np.float32):
    rng = np.random.default_rng(1000 * rank + step)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identity_none_is_the_mean(n, dtype):
    def fn(comm):
        r = ef.Reducer(comm, compressor="identity", feedback="none", algorithm="allgather")
        return [r.allreduce(_grad(comm.rank, s, dtype=dtype), key="w") for s in range(3)]

    outs = ef.testing.run_ranks(n, fn)
    for s in range(3):
        mean = np.mean([_grad(r, s, dtype=dtype).astype(np.float64) for r in range(n)], axis=0)
        first = outs[0][s]
        assert first.dtype == dtype and first.shape == mean.shape
        np.testing.assert_allclose(first, mean, rtol=1e-6, atol=1e-7)
        for r in range(1, n):
            assert outs[r][s].tobytes() == first.tobytes()


@pytest.mark.parametrize("n", SIZES)
def test_ef21_topk_bit_identical(n):
    def fn(comm):
        r = ef.Reducer(comm, compressor="topk:ratio=0.1", feedback="ef21")
        assert r.algorithm == "auto"
        outs = [r.allreduce(_grad(comm.rank, s), key="a") for s in range(4)]
        outs.append(r.allreduce(_grad(comm.rank, 9, shape=(11,), dtype=np.float64), key="b"))
        return outs, r.stats

    res = ef.testing.run_ranks(n, fn)
    for r in range(1, n):
        for a, b in zip(res[0][0], res[r][0]):
            assert a.tobytes() == b.tobytes()
    for _, stats in res:
        assert set(stats) == {"a", "b"}
        assert stats["a"]["calls"] == 4 and stats["b"]["calls"] == 1
        if n > 1:  # a single rank sends nothing
            assert stats["a"]["bytes_sent"] > 0 and stats["b"]["bytes_sent"] > 0
            assert stats["a"]["bytes_received"] > 0


def test_torch_in_torch_out():
    torch = pytest.importorskip("torch")

    def fn(comm):
        r = ef.Reducer(comm, compressor="identity", feedback="none")
        x = torch.from_numpy(_grad(comm.rank, 0)).requires_grad_(True)
        return r.allreduce(x, key="t")

    outs = ef.testing.run_ranks(2, fn)
    assert isinstance(outs[0], torch.Tensor) and outs[0].dtype == torch.float32 and tuple(outs[0].shape) == (37, 5)
    mean = (_grad(0, 0).astype(np.float64) + _grad(1, 0)) / 2
    np.testing.assert_allclose(outs[0].numpy(), mean, rtol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_shape_mismatch_raises_on_every_rank(n):
    def fn(comm):
        r = ef.Reducer(comm, compressor="identity", feedback="none")
        shape = (8,) if comm.rank == n - 1 else (7,)
        try:
            r.allreduce(np.ones(shape, np.float32), key="x")
        except ef.MismatchError as e:
            return type(e)
        return None

    assert ef.testing.run_ranks(n, fn, timeout=20.0) == [ef.MismatchError] * n


def test_exception_in_one_rank_propagates_and_releases_the_others():
    class Boom(Exception):
        pass

    def fn(comm):
        if comm.rank == 1:
            raise Boom("rank 1 failed")
        r = ef.Reducer(comm, compressor="identity", feedback="none")
        r.allreduce(np.ones(4, np.float32), key="x")  # rank 1 never arrives: aborted, not a hang

    with pytest.raises(Boom, match="rank 1 failed"):
        ef.testing.run_ranks(3, fn, timeout=30.0)


@pytest.mark.parametrize("n", [1, 3])
def test_state_dict_round_trip_continues_bit_identically(n):
    spec = dict(compressor="topk:ratio=0.2", feedback="ef21")

    def fn(comm):
        a = ef.Reducer(comm, **spec)
        for s in range(3):
            a.allreduce(_grad(comm.rank, s), key="w")
        state = pickle.loads(pickle.dumps(a.state_dict()))
        b = ef.Reducer(comm, **spec)
        b.load_state_dict(state)
        outs_a = [a.allreduce(_grad(comm.rank, s), key="w") for s in range(3, 6)]
        outs_b = [b.allreduce(_grad(comm.rank, s), key="w") for s in range(3, 6)]
        return outs_a, outs_b

    for outs_a, outs_b in ef.testing.run_ranks(n, fn):
        for x, y in zip(outs_a, outs_b):
            assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("algorithm", ["allgather", "allreduce", "reduce_scatter"])
def test_state_dict_of_other_weights_or_damaged_is_refused_naming_the_entry(algorithm):
    def save(comm):
        red = ef.Reducer(comm, "identity", "ef21", algorithm=algorithm, weights=[0.9, 0.1])
        red.allreduce(_grad(comm.rank, 0), key="w")
        return red.state_dict()

    saved = ef.testing.run_ranks(2, save)

    def load(comm):
        red = ef.Reducer(comm, "identity", "ef21", algorithm=algorithm, weights=[0.1, 0.9])
        with pytest.raises(ef.MismatchError,
                           match=r"weights \(entry 'reducer.weights'\) is '0.9,0.1', this object's is '0.1,0.9'"):
            red.load_state_dict(saved[comm.rank])
        same = ef.Reducer(comm, "identity", "ef21", algorithm=algorithm, weights=[0.9, 0.1])
        damaged = dict(saved[comm.rank], tensors=dict(saved[comm.rank]["tensors"]))
        entry = sorted(damaged["tensors"])[0]
        del damaged["tensors"][entry]
        with pytest.raises(ef.InvalidArgument, match=f"missing tensor '{entry}'"):  # the whole name
            same.load_state_dict(damaged)
        same.load_state_dict(saved[comm.rank])
        # A slot beyond reducer.keys would be dropped silently: refused, naming its entries.
        fewer = dict(saved[comm.rank], meta=dict(saved[comm.rank]["meta"], **{"reducer.keys": "0"}))
        with pytest.raises(ef.InvalidArgument, match="entries this object does not keep: 'slot/0/"):
            same.load_state_dict(fewer)
        assert same.state_dict()["meta"]["reducer.keys"] == "1"  # unchanged

    ef.testing.run_ranks(2, load)


@pytest.mark.parametrize("bad", [
    lambda red: red.allreduce(np.arange(10), key="a"),                       # an integer array
    lambda red: red.allreduce(np.ones(10, np.float32), key=5),               # a key that is no string
    lambda red: red.allreduce(np.ones(20, np.float32)[::2], key="a"),        # not contiguous
    lambda red: red.allreduce(np.ones(10, np.float32).astype(">f4"), key="a"),  # big-endian
    lambda red: red.allreduce_async(np.arange(10), key="a").wait(),
    lambda red: red.allreduce_coalesced([np.ones(10, np.float32), np.arange(3)], key="a"),
], ids=["int", "key", "strided", "big-endian", "async", "coalesced"])
def test_arguments_rejected_before_the_call_still_release_the_others(bad):
    # Rank 1's arguments fail their conversion before any native call: it still takes part in
    # the call, so rank 0 raises MismatchError naming it at once (not a timeout), and both go on.
    def fn(comm):
        red = ef.Reducer(comm, compressor="topk:ratio=0.5", algorithm="allgather")
        red.allreduce(np.ones(10, np.float32), key="a")
        try:
            if comm.rank == 1:
                bad(red)
            elif "allreduce_coalesced" in bad.__code__.co_names:
                red.allreduce_coalesced([np.ones(10, np.float32), np.ones(3, np.float32)], key="a")
            else:
                red.allreduce(np.ones(10, np.float32), key="a")
        except ef.Error as e:
            got = (type(e), str(e))
        return got, red.allreduce(np.full(10, comm.rank, np.float32), key="a")[0]

    t0 = time.monotonic()
    (e0, after0), (e1, after1) = ef.testing.run_ranks(2, fn, timeout=30.0)
    assert e0[0] is ef.MismatchError and "rank 1 rejected its arguments" in e0[1], e0
    assert e1[0] is ef.InvalidArgument, e1
    assert after0 == after1 and time.monotonic() - t0 < 10


@pytest.mark.parametrize("mine", [
    [np.ones(8, np.float32), np.ones(8, np.float32)],   # two buckets against one
    [],                                                  # no call at all, before
    np.float32(1.0),                                     # not a list
    [np.ones(4, np.float32), np.ones(4, np.float32)],    # the same bytes, other tensors
    [np.ones((2, 4), np.float32)],                       # the same elements, another shape
], ids=["more-buckets", "empty", "not-a-list", "same-bytes", "same-numel"])
def test_coalesced_lists_that_differ_fail_on_every_rank_at_once(mine):
    # Rank 0 reduces one bucket, rank 1 another list: both fail at the coalesced call (the
    # number of buckets is part of each bucket's agreement), and the next call pairs correctly.
    def fn(comm):
        red = ef.Reducer(comm, "identity", "none", algorithm="allgather", bucket_bytes=32)
        try:
            red.allreduce_coalesced([np.ones(8, np.float32)] if comm.rank == 0 else mine, key="g")
            got = None
        except ef.Error as e:
            got = type(e)
        return got, red.allreduce(np.full(4, comm.rank + 1.0, np.float32), key="w")[0]

    t0 = time.monotonic()
    (e0, after0), (e1, after1) = ef.testing.run_ranks(2, fn, timeout=30.0)
    assert e0 is ef.MismatchError and e1 in (ef.MismatchError, ef.InvalidArgument)
    assert after0 == after1 == 1.5 and time.monotonic() - t0 < 10


def test_a_rank_that_finished_is_named_at_once():
    # Rank 1 returns after one call; rank 0's second call waits for it: it fails at once naming
    # rank 1 (not rank 0 at the run's timeout).
    def fn(comm):
        red = ef.Reducer(comm, compressor="topk:ratio=0.5", algorithm="allgather")
        red.allreduce(np.ones(8, np.float32), key="a")
        if comm.rank == 0:
            red.allreduce(np.ones(8, np.float32), key="a")

    t0 = time.monotonic()
    with pytest.raises(ef.CollectiveTimeout, match="rank.s. 1 finished without calling it") as info:
        ef.testing.run_ranks(2, fn, timeout=30.0)
    assert info.value.culprits == [1] and time.monotonic() - t0 < 10


def test_huge_timeouts_mean_no_timeout():
    # A timeout beyond any run (1e10 s) waits; it used to overflow the clock and fail at once.
    def fn(comm):
        comm.barrier(timeout=1e10)
        red = ef.Reducer(comm, compressor="identity", feedback="none")
        return red.allreduce_async(np.ones(3, np.float32), key="x").wait(timeout=1e10).tolist()

    assert ef.testing.run_ranks(2, fn, timeout=1e10) == [[1.0, 1.0, 1.0]] * 2


def test_run_ranks_returns_in_rank_order():
    assert ef.testing.run_ranks(4, lambda c: (c.rank, c.size)) == [(r, 4) for r in range(4)]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ["allgather", "reduce_scatter", "allreduce"])
def test_every_algorithm_gives_the_mean_with_identity(n, algorithm):
    def fn(comm):
        r = ef.Reducer(comm, compressor="identity", feedback="none", algorithm=algorithm)
        out = r.allreduce(_grad(comm.rank, 0, dtype=np.float64), key="w")
        assert r.stats["w"]["algorithm"] == algorithm
        return out

    outs = ef.testing.run_ranks(n, fn)
    mean = np.mean([_grad(r, 0, dtype=np.float64) for r in range(n)], axis=0)
    np.testing.assert_allclose(outs[0], mean, rtol=1e-12, atol=1e-14)
    assert all(o.tobytes() == outs[0].tobytes() for o in outs)


def test_async_coalesced_and_auto():
    def fn(comm):
        r = ef.Reducer(comm, compressor="topk:ratio=0.1", feedback="ef21", algorithm="auto", bucket_bytes=4096)
        works = [r.allreduce_async(_grad(comm.rank, s), key="w") for s in range(3)]
        outs = [w.wait(timeout=30) for w in works]
        assert all(w.is_completed() for w in works)
        tensors = [_grad(comm.rank, 9, shape=(100,)), _grad(comm.rank, 8, shape=(2000,)), _grad(comm.rank, 7, shape=(3,))]
        fused = r.allreduce_coalesced(tensors, key="grads")
        assert [f.shape for f in fused] == [t.shape for t in tensors]
        stats = r.stats
        assert stats["w"]["algorithm"] in ("allgather", "reduce_scatter") and stats["w"]["calls"] == 3
        assert {"grads#0", "grads#1"} <= set(stats)  # 400 + 8000 bytes > 4096: two buckets at least
        assert set(r.link) == {"alpha_seconds", "beta_seconds_per_byte"}
        return outs, fused

    res = ef.testing.run_ranks(3, fn)
    for outs, fused in res[1:]:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(outs, res[0][0]))
        assert all(a.tobytes() == b.tobytes() for a, b in zip(fused, res[0][1]))


def test_run_ranks_arguments():
    for n in (0, True, 2.0, ef.testing.MAX_RANKS + 1):
        with pytest.raises(ef.InvalidArgument, match="n must be"):
            ef.testing.run_ranks(n, lambda comm: None)
    for timeout in ("x", None, 0, -1.0):
        with pytest.raises(ef.InvalidArgument, match="timeout"):
            ef.testing.run_ranks(2, lambda comm: None, timeout=timeout)


def test_bad_algorithms():
    def fn(comm):
        with pytest.raises(ef.InvalidArgument, match="payloads add"):
            ef.Reducer(comm, compressor="topk:ratio=0.1", algorithm="allreduce")
        with pytest.raises(ef.InvalidArgument):
            ef.Reducer(comm, algorithm="ring")
        assert ef.Reducer(comm, algorithm="auto").algorithm == "auto"

    ef.testing.run_ranks(1, fn)


W3 = [0.2, 0.3, 0.5]


@pytest.mark.parametrize("algorithm", ["allgather", "reduce_scatter"])
def test_ef21w_gives_each_rank_its_weight(algorithm):
    # EF21-W through the Reducer: rank i's worker is EF21W(weight=W[i], n=3), the aggregate
    # sum_i W[i] g_i. allgather equals the bare objects bit for bit; both algorithms are bit-identical
    # on every rank, and with the identity compressor the result is the mean.
    def fn(comm, compressor):
        r = ef.Reducer(comm, compressor, "ef21w", algorithm=algorithm, weights=W3)
        assert r.feedback == "ef21w:init=full"
        return [r.allreduce(_grad(comm.rank, s), key="w") for s in range(4)]

    res = ef.testing.run_ranks(3, lambda comm: fn(comm, "topk:k=20"))
    for r in (1, 2):
        for a, b in zip(res[0], res[r]):
            assert a.tobytes() == b.tobytes()
    if algorithm == "allgather":
        workers = [ef.feedback.EF21W("topk:k=20", weight=W3[i], n=3) for i in range(3)]
        agg = ef.feedback.Aggregate("ef21w", 3, weights=W3, dim=37 * 5, dtype="float32")
        for s in range(4):
            want = agg.update([w.step(_grad(i, s), step=s) for i, w in enumerate(workers)])
            assert res[0][s].reshape(-1).tobytes() == want.tobytes()
    for outs in ef.testing.run_ranks(3, lambda comm: fn(comm, "identity")):
        for s, out in enumerate(outs):
            mean = np.mean([_grad(i, s).astype(np.float64) for i in range(3)], axis=0)
            np.testing.assert_allclose(out, mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compressor", ["topk:ratio=0.1", "sign"])
def test_reduce_scatter_keeps_ef14s_error_feedback(compressor):
    """EF14's aggregate is the round's sum: the chunk owners re-compress it with EF14 (the error
    fed back at the owner too), so the running sum of the results stays as close to the true one
    as under allgather. (EF21-BC tracking of that sum lost the residual: 1.78 relative error
    against allgather's 0.075, worse than no feedback at all.)"""
    d, n, steps = 64, 2, 200

    def vec(r, t):
        return np.random.default_rng(1000 * r + t).standard_normal(d)

    truth = sum(np.mean([vec(i, t) for i in range(n)], 0) for t in range(steps))

    def error(algorithm, feedback):
        def fn(comm):
            red = ef.Reducer(comm, compressor, feedback, algorithm=algorithm)
            return sum(red.allreduce(vec(comm.rank, t), key="k") for t in range(steps))

        out = ef.testing.run_ranks(n, fn)
        assert out[0].tobytes() == out[1].tobytes()
        return np.linalg.norm(out[0] - truth) / np.linalg.norm(truth)

    ef14 = error("reduce_scatter", "ef14")
    assert ef14 < 2 * error("allgather", "ef14") and ef14 < 0.25
    assert ef14 < error("reduce_scatter", "none") / 3


@pytest.mark.parametrize("name", ["topk", "randk"])
def test_reduce_scatter_explicit_k_counts_the_whole_vector(name):
    """k= is the vector's k: the chunks keep their shares (about k together), as ratio=k/d does,
    not k each (n times the bytes)."""
    d, n = 10000, 4

    def sent(spec):
        def fn(comm):
            red = ef.Reducer(comm, spec, "ef21", algorithm="reduce_scatter")
            x = np.random.default_rng(comm.rank).standard_normal(d).astype(np.float32)
            for t in range(3):
                red.allreduce(x + t, key="k")
            return red.stats["k"]["bytes_sent"]

        return ef.testing.run_ranks(n, fn)[0]

    assert sent(f"{name}:k=100") == sent(f"{name}:ratio=0.01")


@pytest.mark.parametrize("compressor", ["powersgd:rank=2", "randk:ratio=0.25,seed=1", "cast:dtype=bf16", "identity"])
@pytest.mark.parametrize("feedback", ["ef21", "econtrol", "ef21sgdm"])
def test_allreduce_algorithm_recovers_from_a_failed_first_round(compressor, feedback):
    """Rank 1's first vector is NaN: every rank raises NonFiniteError, and the round never
    happened (init=full: the workers that sent their whole first vector would compress next while
    rank 1 still sends its whole one; payloads of two layouts do not add, and PowerSGD's P round
    desynchronized the ranks for good). The next calls work, the same bits on every rank."""
    def fn(comm):
        red = ef.Reducer(comm, compressor, feedback, algorithm="allreduce")
        out = []
        for call in range(4):
            x = np.random.default_rng([comm.rank, call]).standard_normal((8, 8)).astype(np.float32)
            if call == 0 and comm.rank == 1:
                x[:] = np.nan
            try:
                out.append(red.allreduce(x, key="w"))
            except ef.NonFiniteError as e:
                out.append(str(e))
        return out

    r0, r1 = ef.testing.run_ranks(2, fn)
    # Both name the call; rank 1 also its own input's NaN.
    assert "Reducer.allreduce(key 'w'): rank 1" in r0[0] and "Reducer.allreduce(key 'w'): rank 1 (this rank)" in r1[0]
    assert "NaN" in r1[0]
    for a, b in zip(r0[1:], r1[1:]):
        assert a is not None and a.tobytes() == b.tobytes()
    if compressor == "identity" and feedback == "ef21":  # the first round again: the exact mean
        mean = np.mean([np.random.default_rng([r, 1]).standard_normal((8, 8)).astype(np.float32) for r in (0, 1)], 0)
        np.testing.assert_allclose(r0[1], mean, rtol=1e-6)


def test_ef21w_weights_must_agree_with_the_spec():
    def fn(comm):
        ok = ef.Reducer(comm, "topk:k=2", f"ef21w:weight={W3[comm.rank]},n=3", weights=W3)  # the same: accepted
        assert ok.feedback == "ef21w:init=full"
        with pytest.raises(ef.InvalidArgument, match="weights"):
            ef.Reducer(comm, "topk:k=2", "ef21w:weight=0.9,n=3", weights=W3)
        return ef.Reducer(comm, "topk:k=2", "ef21w").allreduce(np.ones(8, np.float32), key="u")  # 1/n each

    for out in ef.testing.run_ranks(3, fn):
        np.testing.assert_allclose(out, np.ones(8), rtol=1e-6)  # init=full: the first round is the mean
    with pytest.raises(ef.InvalidArgument, match="weights"):
        ef.feedback.Aggregate("ef21w", 3, dim=4)
    with pytest.raises(ef.InvalidArgument, match="n=4"):
        ef.feedback.Aggregate("ef21w:weight=0.25,n=4", 3, weights=W3, dim=4)


def test_argument_types_are_invalid_argument():
    # Never pybind's TypeError nor float()'s ValueError: an ef.InvalidArgument naming the argument.
    def fn(comm):
        for kw, what in ((dict(bucket_bytes=2 ** 70), "bucket_bytes"), (dict(weights="ab"), "weights"),
                         (dict(weights=[0.5, "x"]), "weights")):
            with pytest.raises(ef.InvalidArgument, match=f"Reducer: {what}"):
                ef.Reducer(comm, **kw)

    ef.testing.run_ranks(1, fn)
    for bad in (2 ** 40, None, "x", 0):
        with pytest.raises(ef.InvalidArgument, match="set_num_threads: n"):
            ef.set_num_threads(bad)
    with pytest.raises(ef.InvalidArgument, match="Aggregate: spec"):
        ef.feedback.Aggregate(None, 2, dim=4)
    with pytest.raises(ef.InvalidArgument, match="Aggregate: weights"):
        ef.feedback.Aggregate("ef21", 2, weights="ab", dim=4)
    message = ef.feedback.make("ef21", "topk:k=2").step(np.ones(4, np.float32))
    with pytest.raises(ef.InvalidArgument, match="Aggregate.update: messages must be a list"):
        ef.feedback.Aggregate("ef21", 1, dim=4).update(message)
