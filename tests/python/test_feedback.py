"""Error feedback: every method against a float64 numpy reference of docs/algorithms.md, the exact
reductions of issue 3, state dicts, the aggregate (PP, BC) and errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import efcomm as ef

COMPRESSORS = ["topk:ratio=0.1", "randk:ratio=0.2,seed=3", "quant:bits=4,block=32", "sign"]
METHODS = ["none", "ef14", "ef21", "ef21:init=compressed", "ef21w:weight=0.25,n=3", "ef21sgdm:momentum=0.3",
           "ef21sgdm:momentum=0.5,init=compressed", "econtrol:eta=0.2", "econtrol:eta=0.1,init=compressed"]




class Reference:
    """docs/algorithms.md's recursions in float64, one operation at a time."""

    def __init__(self, spec, comp):
        name, _, params = spec.partition(":")
        kv = dict(p.split("=") for p in params.split(",") if p)
        self.name, self.comp = name, comp
        self.full = kv.get("init", "full") == "full"
        self.a = 1.0 / (int(kv["n"]) * float(kv["weight"])) if name == "ef21w" else 1.0
        self.momentum = float(kv.get("momentum", 0.1))
        self.eta = float(kv.get("eta", 0.1))
        self.t = 0
        self.calls = 0  # the wrapped compressor's step counter: uncompressed first messages skip it

    def C(self, x):
        c = ef.compressor(self.comp)
        self.calls += 1
        return c.decompress(c.compress(x, step=self.calls - 1))

    def step(self, v):
        first = self.t == 0
        self.t += 1
        if self.name == "none":
            return self.C(v), None
        if self.name == "ef14":
            if first:
                self.e = np.zeros_like(v)
            p = v + self.e
            d = self.C(p)
            self.e = p - d
            return d, self.e
        if self.name == "econtrol":
            if first:
                self.e, self.h = np.zeros_like(v), np.zeros_like(v)
                if self.full:
                    self.h = v.copy()
                    return v.copy(), self.h
            d = self.C(self.eta * self.e + v - self.h)
            if not first:  # e^0 = 0: the compressed first message's error is not fed back
                self.e = self.e + v - self.h - d
            self.h = self.h + d
            return d, self.h
        if self.name == "ef21sgdm":
            self.u = v.copy() if first else (1 - self.momentum) * self.u + self.momentum * v
            target = self.u
        else:
            target = self.a * v
        if first:
            self.g = np.zeros_like(v)
            if self.full:
                self.g = target.copy()
                return target.copy(), self.g
        d = self.C(target - self.g)
        self.g = self.g + d
        return d, self.g


@pytest.mark.parametrize("comp", COMPRESSORS)
@pytest.mark.parametrize("spec", METHODS)
def test_matches_reference(spec, comp):
    rng = np.random.default_rng(1)
    fb = ef.feedback.make(spec, comp)
    ref = Reference(spec, comp)
    for _ in range(6):
        v = rng.standard_normal(200)
        msg = fb.step(v)
        want_msg, want_est = ref.step(v)
        np.testing.assert_allclose(ef.compressors.decompress(msg), want_msg, rtol=1e-12, atol=1e-12)
        if want_est is None:
            assert fb.estimate is None
        else:
            np.testing.assert_allclose(fb.estimate, want_est, rtol=1e-12, atol=1e-12)


def run(fb, vs):
    return [bytes(fb.step(v)) for v in vs], fb.estimate


@pytest.mark.parametrize("comp", ["topk:ratio=0.1", "randk:ratio=0.2,seed=5", "qsgd:levels=4,seed=2",
                                  "powersgd:rank=2,seed=1"])
@pytest.mark.parametrize("spec", ["ef14", "ef21", "ef21sgdm", "econtrol", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_continues_bit_identically(spec, comp, dtype):
    rng = np.random.default_rng(2)
    vs = [rng.standard_normal((12, 10)).astype(dtype) for _ in range(8)]
    fb = ef.feedback.make(spec, comp)
    run(fb, vs[:4])
    state = pickle.loads(pickle.dumps(fb.state_dict()))
    want_msgs, want_est = run(fb, vs[4:])
    restored = ef.feedback.make(spec, comp)
    restored.load_state_dict(state)
    got_msgs, got_est = run(restored, vs[4:])
    assert got_msgs == want_msgs
    if want_est is not None:
        assert got_est.tobytes() == want_est.tobytes()


def test_econtrol_eta0_is_ef21_compressed():
    rng = np.random.default_rng(3)
    vs = [rng.standard_normal(300) for _ in range(10)]
    for comp in ["topk:ratio=0.05", "randk:ratio=0.1,seed=4"]:
        a = run(ef.feedback.make("econtrol:eta=0,init=compressed", comp), vs)
        b = run(ef.feedback.make("ef21:init=compressed", comp), vs)
        assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes()


@pytest.mark.parametrize("comp", ["topk:k=1", "sign"])
def test_econtrol_compressed_init_starts_with_zero_error(comp):
    # ALGORITHMS.md: e^0 = 0, h^0 = C(g^0): the first message's compression error is not fed
    # into the next (it was: e = g^0 - C(g^0), and the second message carried eta times it).
    fb = ef.feedback.make("econtrol:eta=0.5,init=compressed", comp)
    g0 = np.array([3.0, 1.0, 0.5])
    m0 = ef.compressors.decompress(fb.step(g0))
    assert not fb.state_dict()["tensors"]["e"].any()
    np.testing.assert_array_equal(fb.state_dict()["tensors"]["h"], m0)
    g1 = np.array([3.0, 1.0, 0.9])
    want = ef.compressor(comp).decompress(ef.compressor(comp).compress(g1 - m0, step=1))  # eta * 0 + g1 - h
    np.testing.assert_array_equal(ef.compressors.decompress(fb.step(g1)), want)


def test_sgdm_momentum1_is_ef21():
    rng = np.random.default_rng(4)
    vs = [rng.standard_normal(300).astype(np.float32) for _ in range(10)]
    for init in ["full", "compressed"]:
        a = run(ef.feedback.make(f"ef21sgdm:momentum=1,init={init}", "topk:ratio=0.05"), vs)
        b = run(ef.feedback.make(f"ef21:init={init}", "topk:ratio=0.05"), vs)
        assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes()


@pytest.mark.parametrize("spec", ["ef21", "ef21:init=compressed", "econtrol:eta=0.1"])
def test_aggregate_mirrors_workers_with_partial_participation(spec):
    n, d = 4, 64
    rng = np.random.default_rng(5)
    workers = [ef.feedback.make(spec, "topk:ratio=0.1") for _ in range(n)]
    agg = ef.feedback.Aggregate(spec, n, dim=d, dtype="float64")
    full = ef.feedback.Aggregate(spec, n, dim=d, dtype="float64")
    for t in range(12):
        present = [t < 2 or rng.random() < 0.6 for _ in range(n)]  # all present at first
        msgs = [w.step(rng.standard_normal(d)) if p else None for w, p in zip(workers, present)]
        g = agg.update(msgs)
        np.testing.assert_allclose(g, sum(w.estimate for w in workers) / n, rtol=1e-12, atol=1e-13)
    # PP with everyone present is EF21: the same messages through both give the same g.
    rng = np.random.default_rng(6)
    workers = [ef.feedback.make(spec, "topk:ratio=0.1") for _ in range(n)]
    for t in range(5):
        msgs = [w.step(rng.standard_normal(d)) for w in workers]
        g = full.update(msgs)
    np.testing.assert_allclose(g, sum(w.estimate for w in workers) / n, rtol=1e-12, atol=1e-13)


def test_aggregate_ef14_mean():
    rng = np.random.default_rng(7)
    vs = [rng.standard_normal(50) for _ in range(3)]
    msgs = [ef.compressor("topk:k=5").compress(v) for v in vs]
    agg = ef.feedback.Aggregate("ef14", 3, dim=50, dtype="float64")
    want = sum(ef.compressors.decompress(m) for m in msgs) / 3
    np.testing.assert_allclose(agg.update(msgs), want, rtol=1e-14)
    np.testing.assert_allclose(agg.update(msgs), want, rtol=1e-14)  # not accumulated
    np.testing.assert_allclose(agg.update([msgs[0], None, None]), ef.compressors.decompress(msgs[0]) / 3)
    assert not agg.additive and not ef.feedback.Aggregate("none", 3, dim=50).additive


@pytest.mark.parametrize("spec", ["ef21", "ef21:init=compressed", "ef21sgdm", "econtrol"])
def test_aggregate_additive_methods_accumulate(spec):
    msg = ef.compressor("topk:k=2").compress(np.array([3.0, -1.0, 0.5, 4.0]))
    agg = ef.feedback.Aggregate(spec, 1, dim=4, dtype="float64")
    assert agg.additive
    agg.update([msg])
    np.testing.assert_array_equal(agg.update([msg]), [6.0, 0.0, 0.0, 8.0])


def test_broadcast_compression_and_mirror():
    n, d = 3, 40
    rng = np.random.default_rng(8)
    workers = [ef.feedback.EF21("topk:ratio=0.2") for _ in range(n)]
    server = ef.feedback.Aggregate("ef21", n, dim=d, dtype="float64", broadcast="topk:ratio=0.25")
    plain = ef.feedback.Aggregate("ef21", n, dim=d, dtype="float64")
    mirror = ef.feedback.Aggregate("ef21", 1, weights=[1], dim=d, dtype="float64")
    b = np.zeros(d)
    for _ in range(10):
        msgs = [w.step(rng.standard_normal(d)) for w in workers]
        g = plain.update(msgs)
        out = server.update(msgs)
        delta = ef.compressors.decompress(server.last_broadcast)
        b = b + delta
        np.testing.assert_array_equal(out, b)
        np.testing.assert_array_equal(mirror.update([server.last_broadcast]), out)
        assert np.linalg.norm(out - g) <= np.linalg.norm(g) + 1e-12


def test_aggregate_state_dict_round_trip():
    rng = np.random.default_rng(9)
    workers = [ef.feedback.EF21("randk:ratio=0.2,seed=1") for _ in range(2)]
    agg = ef.feedback.Aggregate("ef21", 2, dim=30, dtype="float32", broadcast="randk:ratio=0.5,seed=2")
    rounds = [[w.step(rng.standard_normal(30).astype(np.float32)) for w in workers] for _ in range(6)]
    for r in rounds[:3]:
        agg.update(r)
    state = pickle.loads(pickle.dumps(agg.state_dict()))
    want = [agg.update(r) for r in rounds[3:]]
    other = ef.feedback.Aggregate("ef21", 2, dim=30, dtype="float32", broadcast="randk:ratio=0.5,seed=2")
    other.load_state_dict(state)
    for r, w in zip(rounds[3:], want):
        assert other.update(r).tobytes() == w.tobytes()
    with pytest.raises(ef.MismatchError):
        ef.feedback.Aggregate("ef21", 2, dim=30, dtype="float32").load_state_dict(state)
    with pytest.raises(ef.MismatchError):
        ef.feedback.Aggregate("ef21", 2, dim=31, dtype="float32", broadcast="randk:ratio=0.5,seed=2").load_state_dict(state)


def test_ef21w_iterates_equal_ef21_for_topk():
    # Least squares f_i(x) = 0.5 ||A_i x - b_i||^2 with heterogeneous L_i; w_i = L_i / sum_j L_j.
    n, d, gamma = 4, 20, None
    rng = np.random.default_rng(10)
    A = [rng.standard_normal((30, d)) * s for s in (0.5, 1.0, 2.0, 4.0)]
    bs = [rng.standard_normal(30) for _ in range(n)]
    L = np.array([np.linalg.eigvalsh(a.T @ a).max() for a in A])
    w = L / L.sum()
    gamma = 0.1 / L.max()
    grad = lambda i, x: A[i].T @ (A[i] @ x - bs[i])

    def iterate(make_worker, weights):
        workers = [make_worker(i) for i in range(n)]
        agg = ef.feedback.Aggregate("ef21", n, weights=weights, dim=d, dtype="float64")
        x, xs = np.zeros(d), []
        for _ in range(50):
            g = agg.update([wk.step(grad(i, x)) for i, wk in enumerate(workers)])
            x = x - gamma * g
            xs.append(x)
        return np.array(xs)

    x21 = iterate(lambda i: ef.feedback.EF21("topk:k=4"), None)
    x21w = iterate(lambda i: ef.feedback.EF21W("topk:k=4", weight=w[i], n=n), list(w))
    np.testing.assert_allclose(x21w, x21, rtol=1e-12, atol=1e-12 * np.abs(x21).max())


@pytest.mark.parametrize("comp", ["topk:ratio=0.2", "randk:k=2,seed=3"])
@pytest.mark.parametrize("spec", ["none", "ef14", "ef21", "ef21:init=compressed", "ef21w:weight=0.5,n=2",
                                  "ef21sgdm:momentum=0.3", "econtrol:eta=0.2"])
def test_non_finite_step_leaves_state_unchanged(spec, comp):
    if spec == "none" and comp.startswith("randk"):
        pytest.skip("no state: RandK alone checks only what it sends (test_compressors)")
    rng = np.random.default_rng(11)
    fb, twin, probe = (ef.feedback.make(spec, comp) for _ in range(3))
    vs = [rng.standard_normal(40) for _ in range(5)]
    for v in vs[:2]:
        fb.step(v)
        twin.step(v)
        probe.step(v)
    # The NaN goes where the step's message sends nothing: RandK never reads it, yet it would
    # enter the state.
    sent = ef.compressors.decompress(probe.step(vs[2]))
    bad = vs[2].copy()
    bad[int(np.flatnonzero(sent == 0)[0])] = np.nan
    before = fb.state_dict()
    with pytest.raises(ef.NonFiniteError):
        fb.step(bad)
    after = fb.state_dict()
    assert after["meta"] == before["meta"]
    for k in before["tensors"]:
        assert after["tensors"][k].tobytes() == before["tensors"][k].tobytes()
    assert run(fb, vs[2:]) [0] == run(twin, vs[2:])[0]


def test_failed_first_step_fixes_nothing():
    fb = ef.feedback.EF21("topk:k=1")
    with pytest.raises(ef.NonFiniteError):
        fb.step(np.array([1.0, np.inf]))
    assert not fb.initialized and fb.estimate is None
    fb.step(np.ones(3, dtype=np.float32))
    assert fb.estimate.dtype == np.float32 and fb.estimate.shape == (3,)


def test_errors():
    fb = ef.feedback.EF21("topk:k=1")
    fb.step(np.ones((2, 3)))
    with pytest.raises(ef.InvalidArgument, match=r"\[3, 2\].*\[2, 3\]"):
        fb.step(np.ones((3, 2)))
    with pytest.raises(ef.InvalidArgument):
        fb.step(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ef.InvalidArgument, match="float32 or float64"):
        ef.feedback.EF14("topk:k=1").step(np.ones(3, dtype=np.float16))
    for spec in ["ef22", "ef21:init=half", "ef21:eta=1", "ef21w:weight=0.5", "ef21w:weight=0,n=2",
                 "ef21sgdm:momentum=0", "econtrol:eta=2", "ef14:x=1"]:
        with pytest.raises(ef.InvalidArgument):
            ef.feedback.make(spec, "topk:k=1")
    # A weight whose 1 / (n w) overflows: said so at construction, not a NaN "input" at the step.
    with pytest.raises(ef.InvalidArgument, match="1 / \\(n weight\\) overflow float32"):
        ef.feedback.make("ef21w:weight=1e-300,n=2", "topk:k=1")
    with pytest.raises(ef.InvalidArgument):
        ef.feedback.make("ef21", 3)
    good = fb.state_dict()
    for entry, value in (("tensors", None), ("meta", 3), ("tensors", [])):  # not dicts: never a TypeError
        with pytest.raises(ef.InvalidArgument, match=f"load_state_dict: '{entry}' must be a dict"):
            fb.load_state_dict({**good, entry: value})
    state = fb.state_dict()
    with pytest.raises(ef.MismatchError):
        ef.feedback.make("ef21:init=compressed", "topk:k=1").load_state_dict(state)
    with pytest.raises(ef.MismatchError):
        ef.feedback.EF21("topk:k=2").load_state_dict(state)
    broken = dict(state, tensors={"g": np.ones(5)})
    fresh = ef.feedback.EF21("topk:k=1")
    with pytest.raises(ef.MismatchError):
        fresh.load_state_dict(broken)
    assert not fresh.initialized
    with pytest.raises(ef.InvalidArgument):
        fresh.load_state_dict({"spec": "ef21:init=full"})
    agg = ef.feedback.Aggregate("ef21", 2, dim=3, dtype="float64")
    with pytest.raises(ef.InvalidArgument):
        agg.update([None])
    with pytest.raises(ef.InvalidArgument):
        agg.update([ef.compressor("topk:k=1").compress(np.ones(4)), None])
    with pytest.raises(ef.InvalidArgument):
        ef.feedback.Aggregate("ef21", 2, weights=[1.0], dim=3)
    for n, dim in ((0, 3), (2 ** 40, 3), (2.0, 3), (2, "x"), (2, -1), (2, 2 ** 70)):
        with pytest.raises(ef.InvalidArgument):  # never pybind's TypeError
            ef.feedback.Aggregate("ef21", n, dim=dim)


def test_make_params_and_classes():
    fb = ef.feedback.make("ef21", ef.compressors.TopK(k=2), init="compressed")
    assert isinstance(fb, ef.feedback.EF21) and fb.spec == "ef21:init=compressed"
    assert ef.feedback.EControl("topk:k=1", eta=0.05).spec == "econtrol:eta=0.05,init=full"
    assert ef.feedback.EF21W("topk:k=1", weight=0.25, n=4).spec == "ef21w:weight=0.25,n=4,init=full"
    assert ef.feedback.EF21SGDM("topk:k=1").spec == "ef21sgdm:momentum=0.1,init=full"
    assert fb.compressor.spec == "topk:k=2"
    assert sorted(ef.feedback.names()) == ["econtrol", "ef14", "ef21", "ef21sgdm", "ef21w", "none"]


def test_torch_input():
    torch = pytest.importorskip("torch")
    fb = ef.feedback.EF21("topk:k=2", init="compressed")
    x = torch.arange(6, dtype=torch.float32, requires_grad=True)
    fb.step(x)
    np.testing.assert_array_equal(fb.estimate, [0, 0, 0, 0, 4, 5])


def test_compressor_state_dict_powersgd():
    rng = np.random.default_rng(12)
    xs = [rng.standard_normal((8, 6)) for _ in range(4)]
    c = ef.compressor("powersgd:rank=2,seed=3")
    for x in xs[:2]:
        c.compress(x)
    state = c.state_dict()
    want = [bytes(c.compress(x)) for x in xs[2:]]
    other = ef.compressor("powersgd:rank=2,seed=3")
    other.load_state_dict(state)
    assert [bytes(other.compress(x)) for x in xs[2:]] == want
    with pytest.raises(ef.InvalidArgument, match="'warm' must be 0 or 1, got 5"):  # not taken for 1
        other.load_state_dict({**state, "meta": {**state["meta"], "warm": "5"}})


def _stepped(kind):
    """An object of `kind` with state, and the name of one of its state tensors."""
    rng = np.random.default_rng(13)
    if kind == "powersgd":
        c = ef.compressor("powersgd:rank=2,seed=3")
        c.compress(rng.standard_normal((8, 6)))
        return c, "q"
    if kind == "aggregate":
        a = ef.feedback.Aggregate("ef21", 2, dim=6)
        w = ef.feedback.make("ef21", "topk:k=2")
        a.update([w.step(rng.standard_normal(6).astype(np.float32))] * 2)
        return a, "g"
    fb = ef.feedback.make(kind, "topk:k=2")
    fb.step(rng.standard_normal(6))
    return fb, {"ef14": "e", "ef21sgdm": "u", "econtrol": "h"}[kind]


@pytest.mark.parametrize("kind", ["ef14", "ef21sgdm", "econtrol", "aggregate", "powersgd"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_damaged_state_is_refused(kind, bad):
    # A NaN or Inf in a saved state (efcomm's states are finite) is refused at the load, with the
    # object unchanged, instead of making this rank's results differ from the others' later.
    obj, name = _stepped(kind)
    before = obj.state_dict()
    damaged = obj.state_dict()
    damaged["tensors"][name] = damaged["tensors"][name].copy()
    damaged["tensors"][name].flat[1] = bad
    with pytest.raises(ef.InvalidArgument, match=f"tensor '{name}' holds (NaN|Inf) at flat index 1"):
        obj.load_state_dict(damaged)
    after = obj.state_dict()
    for k, v in before["tensors"].items():
        assert after["tensors"][k].tobytes() == v.tobytes()


def test_state_tensor_numpy_cannot_read_is_invalid_argument():
    # A bfloat16 torch tensor (numpy has no such dtype) is InvalidArgument naming the entry, not
    # numpy's TypeError.
    torch = pytest.importorskip("torch")
    obj, name = _stepped("ef14")
    damaged = obj.state_dict()
    damaged["tensors"][name] = torch.from_numpy(damaged["tensors"][name]).to(torch.bfloat16)
    with pytest.raises(ef.InvalidArgument, match=f"tensor '{name}' \\(a Tensor\\) is not an array numpy reads"):
        obj.load_state_dict(damaged)


@pytest.mark.parametrize("kind", ["ef14", "ef21sgdm", "econtrol", "aggregate", "powersgd"])
def test_state_with_entries_the_object_does_not_keep_is_refused(kind):
    # torch's strict=True: an unknown entry (a misspelling, tensors beside initialized=0, PowerSGD's
    # q beside warm=0) is InvalidArgument naming it, and the object keeps its state.
    obj, name = _stepped(kind)
    before = obj.state_dict()
    for damaged, entry in (({**before, "meta": {**before["meta"], "stepp": "3"}}, "'stepp'"),
                           ({**before, "tensors": {**before["tensors"], name + "x": before["tensors"][name]}},
                            f"tensor '{name}x'")):
        with pytest.raises(ef.InvalidArgument, match=f"entries this object does not keep: {entry}"):
            obj.load_state_dict(damaged)
        after = obj.state_dict()
        assert after["meta"] == before["meta"]
        assert all(after["tensors"][k].tobytes() == v.tobytes() for k, v in before["tensors"].items())
    if kind == "ef14":  # a state of an object that had not stepped, with the tensors of one that had
        fresh = ef.feedback.make("ef14", "topk:k=2").state_dict()
        with pytest.raises(ef.InvalidArgument, match="does not keep: tensor 'e'"):
            obj.load_state_dict({**fresh, "tensors": before["tensors"]})
