"""Property tests of every compressor in SPEC.md's table against the constants of docs/algorithms.md:
spec round trips, shapes and dtypes, exact contraction identities where they are exact,
unbiasedness and variance statistically where they are expectations, determinism, reproducible
draws (also in another process with another thread count), wire sizes, non-finite input and
invalid specs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import efcomm as ef
import helpers as H
from helpers import SPECS

HERE = pathlib.Path(__file__).resolve().parent

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DETERMINISTIC = [s for s in SPECS if not H.is_randomized(s) and not H.is_stateful(s)]
RANDOMIZED = [s for s in SPECS if H.is_randomized(s)]

# ----------------------------------------------------------------------------------------------
# inputs

KINDS = ("normal", "ties", "sparse", "wide", "constant", "onehot", "positive")
SHAPES = st.one_of(
    st.sampled_from([(), (0,), (1,), (2,), (3, 0), (0, 4), (3, 5), (2, 3, 4, 5), (1, 1, 1, 1), (4, 33), (65,)]),
    st.integers(0, 300).map(lambda n: (n,)),
    st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple),
)


def make_array(shape, dtype, seed: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if kind == "normal":
        v = rng.standard_normal(n)
    elif kind == "ties":
        v = np.round(rng.standard_normal(n) * 2)
    elif kind == "sparse":
        v = rng.standard_normal(n) * (rng.random(n) < 0.2)
    elif kind == "wide":
        v = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-3, 3, n)
    elif kind == "constant":
        v = np.full(n, rng.choice([-1.5, 0.0, 2.0]))
    elif kind == "onehot":
        v = np.zeros(n)
        if n:
            v[rng.integers(n)] = rng.standard_normal() * 10 + 0.5
    elif kind == "positive":
        v = np.abs(rng.standard_normal(n)) + 0.1
    else:
        raise AssertionError(kind)
    return np.ascontiguousarray(v.astype(dtype).reshape(shape))


@st.composite
def arrays(draw, dtypes=(np.float32, np.float64), shapes=SHAPES, kinds=KINDS):
    shape = draw(shapes)
    dtype = draw(st.sampled_from(dtypes))
    return make_array(shape, dtype, draw(st.integers(0, 2 ** 32 - 1)), draw(st.sampled_from(kinds)))


def vectors(min_n=1, max_n=300, dtypes=(np.float32, np.float64), kinds=KINDS):
    return arrays(dtypes=dtypes, shapes=st.integers(min_n, max_n).map(lambda n: (n,)), kinds=kinds)


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def rel_eps(dtype) -> float:
    """Loose relative tolerance for values computed in, or rounded to, the input's precision."""
    return {np.dtype(np.float16): 4e-3, np.dtype(np.float32): 2e-5}.get(np.dtype(dtype), 1e-9)


ALL_NP = (np.float32, np.float64, np.float16)


# ----------------------------------------------------------------------------------------------
# spec strings, classes, constants

@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trip(spec):
    c = ef.compressor(spec)
    name, given_params = H.parse_spec(spec)
    assert type(c).__name__ == H.CLASS_OF[name]
    assert isinstance(c, ef.Compressor)
    assert c.spec.split(":")[0] == name
    again = ef.compressor(c.spec)
    assert again.spec == c.spec and type(again) is type(c) and again == c
    assert ef.compressor(again.spec).spec == c.spec
    # the canonical spec carries every given parameter with the same value
    _, canon = H.parse_spec(c.spec)
    for k, v in given_params.items():
        assert k in canon, f"{c.spec!r} lost parameter {k}"
        if v in ("true", "false"):
            assert canon[k] in (v, "1" if v == "true" else "0", v.capitalize())
        elif k == "dtype":
            assert canon[k] == v
        else:
            assert float(canon[k]) == float(v), (k, canon[k], v)
    assert repr(c)


@pytest.mark.parametrize("ctor,spec", [
    (lambda C: C.Identity(), "identity"),
    (lambda C: C.Cast("fp16"), "cast:dtype=fp16"),
    (lambda C: C.Cast(), "cast:dtype=bf16"),
    (lambda C: C.TopK(ratio=0.1), "topk:ratio=0.1"),
    (lambda C: C.TopK(k=3), "topk:k=3"),
    (lambda C: C.RandK(ratio=0.25, seed=1), "randk:seed=1,ratio=0.25"),
    (lambda C: C.RandK(k=3, seed=7, scaled=False), "randk:scaled=false,k=3,seed=7"),
    (lambda C: C.ScaledSign(), "sign"),
    (lambda C: C.QSGD(levels=16, seed=3), "qsgd:seed=3,levels=16"),
    (lambda C: C.QSGD(), "qsgd"),
    (lambda C: C.Natural(), "natural"),
    (lambda C: C.Natural(seed=2), "natural:seed=2"),
    (lambda C: C.BlockQuant(bits=4, block=24), "quant:block=24,bits=4"),
    (lambda C: C.BlockQuant(), "quant"),
    (lambda C: C.PowerSGD(rank=2, seed=4), "powersgd:seed=4,rank=2"),
    (lambda C: C.PowerSGD(), "powersgd"),
])
def test_class_constructor_equals_spec(ctor, spec):
    """The Python classes' keyword defaults agree with the spec parser's, and the canonical
    spec does not depend on the order parameters were written in."""
    a = ctor(ef.compressors)
    b = ef.compressor(spec)
    assert a.spec == b.spec and type(a) is type(b)


@pytest.mark.parametrize("spec", SPECS)
def test_constants(spec):
    c = ef.compressor(spec)
    for d in (1, 2, 3, 10, 100, 1000, 10 ** 6):
        biased, alpha, omega = H.expected_constants(spec, d)
        a, w = c.alpha(d), c.omega(d)
        assert isinstance(c.biased, bool) and c.biased == biased
        assert 0.0 <= a <= 1.0, (d, a)
        assert (w is None) == c.biased, (d, w)
        if alpha is not ...:
            assert a == pytest.approx(alpha, rel=1e-12, abs=1e-15), (d, a, alpha)
        if omega is not None:
            assert w == pytest.approx(omega, rel=1e-12, abs=1e-15), (d, w, omega)
            assert a == pytest.approx(1.0 / (1.0 + w), rel=1e-12), "alpha of the 1/(1+omega)-scaled version"
    if not H.is_stateful(spec):
        assert c.randomized == H.is_randomized(spec)


# ----------------------------------------------------------------------------------------------
# any shape, every numpy dtype: messages, shapes, wire sizes and budgets


def payload_budget(spec: str, x: np.ndarray) -> int | None:
    """Upper bound on the payload bytes of what SPEC.md says travels (None: not fixed)."""
    name, p = H.parse_spec(spec)
    d, isz = x.size, x.itemsize
    if name == "identity":
        return d * isz
    if name == "cast":
        return 2 * d
    if name == "topk":
        k = H.keep_count(d, p)
        return k * isz + int(1.25 * min(-(-d // 8), 5 * k)) + 32
    if name == "randk":
        return H.keep_count(d, p) * isz + 16
    if name == "sign":
        return -(-d // 8) + 16
    if name == "qsgd":
        s = int(p.get("levels", 16))
        return -(-d // 8) * (1 + math.ceil(math.log2(s + 1))) + 16
    if name == "natural" and isz <= 4:  # float64: see test_natural_at_most_9_bits_per_element
        return -(-d // 8) * 9 + 16
    if name == "quant":
        b, blk = int(p.get("bits", 8)), int(p.get("block", 256))
        nb = -(-d // blk)
        return nb * (-(-blk * b // 8) + 16) + 16
    if name == "powersgd" and x.ndim == 2:  # r(m+n) values (16-bit inputs may send float32 factors)
        r = int(p.get("rank", 4))
        return r * (x.shape[0] + x.shape[1]) * max(isz, 4) + 16
    return None


@pytest.mark.parametrize("spec", SPECS)
@FAST
@given(x=arrays(dtypes=ALL_NP), step=st.integers(0, 2 ** 63))
def test_compress_any_shape(spec, x, step):
    c = ef.compressor(spec)
    m = c.compress(x, step=step)
    assert isinstance(m, ef.Message)
    assert m.compressor == H.name_of(spec)
    assert m.dtype == x.dtype.name and tuple(m.shape) == x.shape and m.numel == x.size
    assert m.version == 1
    raw = bytes(m)
    assert len(raw) == m.nbytes == len(m)
    y = c.decompress(m)
    assert isinstance(y, np.ndarray) and y.shape == x.shape and y.dtype == x.dtype
    assert np.all(np.isfinite(y))
    # the wire image validates and decodes to the same array
    m2 = ef.Message.from_bytes(raw)
    assert bytes(m2) == raw
    y2 = c.decompress(m2)
    assert np.array_equal(y, y2, equal_nan=True)
    assert np.array_equal(ef.compressors.decompress(m2), y)
    budget = payload_budget(spec, x)
    if budget is not None:
        assert m.payload_nbytes <= budget, f"{spec}: {m.payload_nbytes} payload bytes for {x.shape} {x.dtype}"
    wb = c.wire_bytes(x.size if x.ndim == 1 else x.shape, x.dtype.name)
    if H.name_of(spec) == "topk":
        assert len(raw) <= wb
    else:
        assert len(raw) == wb, f"wire_bytes({x.shape}, {x.dtype.name}) = {wb}, message has {len(raw)}"


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_zero_input_decodes_to_zero(spec, dtype):
    c = ef.compressor(spec)
    for shape in [(0,), (1,), (37,), (6, 5), ()]:
        x = np.zeros(shape, dtype)
        y = c.decompress(c.compress(x, step=3))
        assert y.shape == shape and y.dtype == dtype
        assert np.all(y == 0), f"{spec}: C(0) = {y}"


# ----------------------------------------------------------------------------------------------
# exact properties


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@FAST
@given(data=st.data())
def test_identity_is_exact(dtype, data):
    x = data.draw(arrays(dtypes=(dtype,)))
    c = ef.compressor("identity")
    y = c.decompress(c.compress(x))
    assert y.tobytes() == x.tobytes()


TOPK_SPECS = ["topk:ratio=0.1", "topk:k=3", "topk:k=1", "topk:ratio=0.5", "topk:ratio=1", "topk:k=1000"]


@pytest.mark.parametrize("spec", TOPK_SPECS)
@FAST
@given(x=arrays(dtypes=ALL_NP, kinds=("ties", "normal", "sparse", "constant", "onehot", "wide")))
def test_topk_matches_stable_sort_reference(spec, x):
    c = ef.compressor(spec)
    d = x.size
    k = H.keep_count(d, H.parse_spec(spec)[1])
    y = c.decompress(c.compress(x))
    ref = H.topk_reference(x, k)
    assert np.array_equal(y, ref), f"k={k}: differs at {np.flatnonzero(y.ravel() != ref.ravel())[:10]}"
    if d:
        assert H.sq(y - x) <= (1 - k / d) * H.sq(x) * (1 + 1e-12)
        assert c.alpha(d) == pytest.approx(k / d)


@pytest.mark.parametrize("n,spec", [(200_003, "topk:ratio=0.01"), (70_000, "topk:k=1"), (131_072, "topk:ratio=0.3")])
def test_topk_large_input_matches_reference(n, spec):
    """The multi-threaded selection path: still exactly the stable-sort set, ties included."""
    rng = np.random.default_rng(n)
    for x in (np.round(rng.standard_normal(n) * 8).astype(np.float32),   # heavy ties
              rng.standard_normal(n).astype(np.float32),
              rng.standard_normal(n).astype(np.float64)):
        c = ef.compressor(spec)
        m = c.compress(x)
        y = c.decompress(ef.Message.from_bytes(bytes(m)))
        ref = H.topk_reference(x, H.keep_count(n, H.parse_spec(spec)[1]))
        assert np.array_equal(y, ref), f"differs at {np.flatnonzero(y != ref)[:10]}"
        assert len(bytes(m)) <= c.wire_bytes(n, x.dtype.name)


@FAST
@given(x=arrays(dtypes=ALL_NP, kinds=KINDS))
def test_sign_exact_identity(x):
    c = ef.compressor("sign")
    check_sign(c, x, c.decompress(c.compress(x)))


def check_sign(c, x, y):
    """||C(x)-x||^2 = ||x||^2 - ||x||_1^2/d, C(x) = (||x||_1/d) sign(x) with 1 bit per element."""
    y = f64(y)
    d = x.size
    if d == 0:
        return
    xd = f64(x)
    s = np.abs(xd).sum() / d
    eps = rel_eps(x.dtype) * 5
    assert np.allclose(np.abs(y), s, rtol=eps, atol=0), f"|C(x)| should all be {s}: {np.unique(np.abs(y))[:5]}"
    nz = xd != 0
    if s > 0:
        assert np.all(np.sign(y[nz]) == np.sign(xd[nz]))
    lhs = H.sq(y - xd)
    rhs = H.sq(xd) - np.abs(xd).sum() ** 2 / d
    assert abs(lhs - rhs) <= eps * H.sq(xd) + 1e-300, (lhs, rhs)
    assert lhs <= (1 - c.alpha(d)) * H.sq(xd) * (1 + eps) + 1e-300


@pytest.mark.parametrize("target", ["bf16", "fp16"])
@FAST
@given(x=arrays(dtypes=(np.float32,), kinds=("normal", "ties", "wide", "sparse", "positive")))
def test_cast_float32_matches_round_to_nearest_even(target, x):
    c = ef.compressor(f"cast:dtype={target}")
    y = c.decompress(c.compress(x))
    ref = H.bf16_round(x) if target == "bf16" else x.astype(np.float16).astype(np.float32)
    assert np.array_equal(y, ref), f"differs at {np.flatnonzero(y.ravel() != ref.ravel())[:10]}"


@pytest.mark.parametrize("target", ["bf16", "fp16"])
@FAST
@given(x=arrays(dtypes=(np.float64,), kinds=("normal", "ties", "sparse", "positive")))
def test_cast_float64_rounds_once_to_nearest_even(target, x):
    c = ef.compressor(f"cast:dtype={target}")
    y = c.decompress(c.compress(x))
    ref = H.bf16_round_exact(x) if target == "bf16" else x.astype(np.float16).astype(np.float64)
    assert np.array_equal(y, ref), f"differs at {np.flatnonzero(y.ravel() != ref.ravel())[:10]}"


@pytest.mark.parametrize("target", ["bf16", "fp16"])
def test_cast_float64_near_a_tie_is_not_rounded_twice(target):
    """Values just off a midpoint of the 16-bit grid, which a float32 step would round onto the
    midpoint (then to even): 1 + 2^-8 + 2^-30 is bfloat16 1 + 2^-7, not 1."""
    rng = np.random.default_rng(5)
    bits = 8 if target == "bf16" else 11
    grid = np.ldexp(rng.integers(2 ** (bits - 1), 2 ** bits, 2000), rng.integers(-20, 10, 2000) - bits)
    mid = grid + np.ldexp(1.0, np.frexp(grid)[1] - bits - 1)  # halfway to the next grid value
    x = mid * (1 + rng.choice([-1, 1], 2000) * 2.0 ** -40)
    c = ef.compressor(f"cast:dtype={target}")
    y = c.decompress(c.compress(x))
    ref = H.bf16_round_exact(x) if target == "bf16" else x.astype(np.float16).astype(np.float64)
    assert np.array_equal(y, ref), f"differs at {np.flatnonzero(y != ref)[:10]}"
    if target == "bf16":
        assert c.decompress(c.compress(np.array([1 + 2 ** -8 + 2 ** -30])))[0] == 1 + 2 ** -7


def test_cast_bf16_refuses_float16_values_that_decode_beyond_float16():
    """float16 >= 65408 rounds to bfloat16 65536, which the float16 output cannot hold: refused
    at compress (it used to decode to Inf); 65376 and below pass."""
    c = ef.compressor("cast:dtype=bf16")
    with pytest.raises(ef.NonFiniteError, match="65408"):
        c.compress(np.array([1, -65408], np.float16))
    x = np.array([65376, -65376, 65280, 1], np.float16)
    assert np.all(np.isfinite(c.decompress(c.compress(x))))


@pytest.mark.parametrize("target", ["bf16", "fp16"])
@FAST
@given(x=arrays(dtypes=(np.float32, np.float64), kinds=("normal", "ties", "wide", "sparse", "positive", "onehot")))
def test_cast_contraction_bound(target, x):
    """Deterministic: ||C(x)-x||^2 <= (1-alpha)||x||^2 for values in the target's normal range."""
    x = x.copy()
    x[np.abs(x) < 2.0 ** -14] = 0  # below fp16's normal range the relative error is unbounded
    c = ef.compressor(f"cast:dtype={target}")
    y = c.decompress(c.compress(x))
    assert H.sq(f64(y) - f64(x)) <= (1 - c.alpha(x.size or 1)) * H.sq(x) * (1 + 1e-9)


@pytest.mark.parametrize("x", [np.array([1e5], np.float32), np.array([0.0, -70000.0], np.float64)])
def test_cast_fp16_overflow_raises(x):
    with pytest.raises(ef.NonFiniteError):
        ef.compressor("cast:dtype=fp16").compress(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_cast_exact_on_representable_values(dtype):
    x = (np.arange(-40, 41) * 0.25).astype(dtype)
    for target in ("bf16", "fp16"):
        c = ef.compressor(f"cast:dtype={target}")
        assert np.array_equal(c.decompress(c.compress(x)), x)


QUANT_SPECS = ["quant:bits=2,block=16", "quant:bits=4,block=24", "quant:bits=8,block=256", "quant:bits=8,block=8",
               "quant:bits=2,block=256"]


def quant_adversarial(bits: int, block: int, dtype) -> np.ndarray:
    """Per block: min -a, max +a and every other element at 0, the midpoint between two levels
    (2^bits - 1 intervals is odd), so each element's rounding error is maximal."""
    x = np.zeros(3 * block + 5)
    for b0 in range(0, x.size, block):
        x[b0] = 1.0
        if b0 + 1 < x.size:
            x[b0 + 1] = -1.0
    return x.astype(dtype)


@pytest.mark.parametrize("spec", QUANT_SPECS)
@FAST
@given(x=arrays(dtypes=ALL_NP, kinds=KINDS))
def test_blockquant_bounds(spec, x):
    """Min-max quantization per block of `block` consecutive (flattened) elements: every decoded
    value lies in its block's [min, max], within half a level of the input, and the whole error
    respects the advertised alpha(d)."""
    c = ef.compressor(spec)
    check_quant(spec, c, x, c.decompress(c.compress(x)))


def check_quant(spec, c, x, y):
    p = H.parse_spec(spec)[1]
    bits, block = int(p["bits"]), int(p["block"])
    xd = f64(x).ravel()
    y = f64(y).ravel()
    tol = max(2.0 ** -20, 2 * float(np.finfo(x.dtype).eps))  # decoded values round to the dtype
    for b0 in range(0, xd.size, block):
        xb, yb = xd[b0:b0 + block], y[b0:b0 + block]
        lo, hi = xb.min(), xb.max()
        mag = max(abs(lo), abs(hi))
        half = (hi - lo) / (2 ** bits - 1) / 2
        assert np.all(yb >= lo - tol * mag) and np.all(yb <= hi + tol * mag), (b0, lo, hi)
        err = np.abs(yb - xb)
        assert np.all(err <= half * (1 + 1e-3) + tol * mag), (b0, err.max(), half)
    if xd.size and c.alpha(xd.size) > 0:  # alpha 0: no guarantee
        assert H.sq(y - xd) <= (1 - c.alpha(xd.size)) * H.sq(xd) * (1 + rel_eps(x.dtype)) + 1e-300


@pytest.mark.parametrize("spec", QUANT_SPECS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blockquant_alpha_holds_on_worst_case(spec, dtype):
    p = H.parse_spec(spec)[1]
    x = quant_adversarial(int(p["bits"]), int(p["block"]), dtype)
    c = ef.compressor(spec)
    y = c.decompress(c.compress(x))
    if c.alpha(x.size) > 0:  # alpha 0: no guarantee
        assert H.sq(f64(y) - f64(x)) <= (1 - c.alpha(x.size)) * H.sq(x) * (1 + 1e-6)


@pytest.mark.parametrize("spec", QUANT_SPECS)
def test_blockquant_constant_and_two_level_blocks_exact(spec):
    c = ef.compressor(spec)
    block = int(H.parse_spec(spec)[1]["block"])
    x = np.full(2 * block + 3, -2.5, np.float32)
    assert np.array_equal(c.decompress(c.compress(x)), x)
    x = np.where(np.arange(2 * block + 3) % 3 == 0, 4.0, -1.0).astype(np.float32)
    assert np.allclose(c.decompress(c.compress(x)), x, rtol=1e-6, atol=0), "block min and max are levels"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_natural_at_most_9_bits_per_element(dtype):
    """SPEC.md: natural sends <= 9 bits/element (sign + 8-bit exponent), whatever the dtype."""
    d = 4096
    m = ef.compressor("natural").compress(np.random.default_rng(0).standard_normal(d).astype(dtype))
    assert m.payload_nbytes * 8 <= 9 * d + 128, f"{m.payload_nbytes * 8 / d:.2f} bits/element"


# PowerSGD: output P Q^T with Q = M^T P and P orthonormal is the projection P P^T M of M's
# columns, so ||C - M||^2 + ||C||^2 = ||M||^2 (Pythagoras) and rank C <= r for a matrix.

def check_projection(x, y, tol):
    """Pythagoras for an input that is its own matrix view (2-d and more). A vector is zero-padded
    to a matrix and the output truncated (powersgd.cpp), which only drops energy of C: then
    ||C - x||^2 + ||C||^2 <= ||x||^2."""
    xd, yd = f64(x), f64(y)
    lhs = H.sq(yd - xd) + H.sq(yd)
    if xd.ndim >= 2:
        assert abs(lhs - H.sq(xd)) <= tol * H.sq(xd) + 1e-300, (lhs, H.sq(xd))
    else:
        assert lhs <= H.sq(xd) * (1 + tol) + 1e-300, (lhs, H.sq(xd))


@pytest.mark.parametrize("spec", ["powersgd:rank=1", "powersgd:rank=2,seed=4", "powersgd:rank=4,seed=9"])
@FAST
@given(x=arrays(shapes=st.tuples(st.integers(1, 12), st.integers(1, 12)), kinds=("normal", "wide", "positive", "ties")),
       calls=st.integers(1, 3))
def test_powersgd_is_a_rank_r_projection(spec, x, calls):
    c = ef.compressor(spec)
    r = int(H.parse_spec(spec)[1].get("rank", 4))
    for _ in range(calls):  # warm-started calls keep the property
        m = c.compress(x)
        y = c.decompress(m)
        check_projection(x, y, 1e-3 if x.dtype == np.float32 else 1e-6)
        sv = np.linalg.svd(f64(y), compute_uv=False)
        assert np.all(sv[r:] <= 1e-4 * max(sv[0], 1e-300)), f"rank > {r}: {sv}"


@pytest.mark.parametrize("spec", ["powersgd:rank=1", "powersgd:rank=2,seed=4"])
@QUICK
@given(x=arrays(shapes=SHAPES, kinds=("normal", "wide", "positive")))
def test_powersgd_projection_any_shape(spec, x):
    c = ef.compressor(spec)
    y = c.decompress(c.compress(x))
    check_projection(x, y, 1e-3 if x.dtype == np.float32 else 1e-6)


@pytest.mark.parametrize("rank", [1, 2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_powersgd_reconstructs_low_rank_matrices(rank, dtype):
    """A matrix of rank <= r is reproduced (also rank-deficient: r > rank M must not give NaN)."""
    rng = np.random.default_rng(rank)
    for true_rank in range(0, rank + 1):
        m = (rng.standard_normal((9, true_rank)) @ rng.standard_normal((true_rank, 7))).astype(dtype)
        c = ef.compressor(f"powersgd:rank={rank},seed=1")
        y = c.decompress(c.compress(m))
        assert np.all(np.isfinite(y))
        tol = 1e-4 if dtype == np.float32 else 1e-9
        assert H.sq(f64(y) - f64(m)) <= tol * max(H.sq(m), 1e-30), (true_rank, H.sq(f64(y) - f64(m)))


def test_powersgd_warm_start_converges_to_best_rank_r():
    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.standard_normal((12, 6)))
    v, _ = np.linalg.qr(rng.standard_normal((9, 6)))
    sig = np.array([10.0, 7.0, 1.0, 0.5, 0.2, 0.1])
    m = (u * sig) @ v.T
    c = ef.compressor("powersgd:rank=2,seed=3")
    errs = []
    for _ in range(25):
        y = c.decompress(c.compress(m))
        errs.append(H.sq(y - m))
    best = float((sig[2:] ** 2).sum())
    assert errs[-1] == pytest.approx(best, rel=1e-4), errs
    assert errs[-1] <= errs[0] + 1e-12


def test_powersgd_shape_change_between_calls():
    c = ef.compressor("powersgd:rank=2")
    rng = np.random.default_rng(1)
    for shape in [(5, 4), (3, 7), (5, 4), (20,), (2, 3, 4), (5, 4)]:
        x = rng.standard_normal(shape)
        y = c.decompress(c.compress(x))
        assert y.shape == shape
        check_projection(x, y, 1e-6)


CONTRACTIVE_DET = ["identity", "cast:dtype=bf16", "cast:dtype=fp16", "topk:ratio=0.1", "topk:k=3", "sign",
                   "quant:bits=2,block=16", "quant:bits=4,block=24", "quant:bits=8,block=256", "powersgd:rank=2,seed=4"]


@pytest.mark.parametrize("spec", CONTRACTIVE_DET)
@FAST
@given(x=arrays(kinds=("normal", "ties", "onehot", "constant", "positive", "sparse")))
def test_deterministic_contraction(spec, x):
    """||C(x)-x||^2 <= (1-alpha(d))||x||^2 on every input (deterministic compressors)."""
    if x.size == 0:
        return
    c = ef.compressor(spec)
    y = c.decompress(c.compress(x))
    if c.alpha(x.size) > 0:  # alpha 0: no guarantee
        assert H.sq(f64(y) - f64(x)) <= (1 - c.alpha(x.size)) * H.sq(x) * (1 + 1e-6) + 1e-300


# ----------------------------------------------------------------------------------------------
# randomized compressors: structure of one draw


@pytest.mark.parametrize("spec", ["randk:ratio=0.25,seed=1", "randk:k=3,seed=7,scaled=false", "randk:ratio=1,seed=2",
                                  "randk:k=50,seed=3"])
@FAST
@given(x=arrays(dtypes=ALL_NP, kinds=("normal", "positive", "wide")), step=st.integers(0, 2 ** 64 - 1))
def test_randk_structure(spec, x, step):
    c = ef.compressor(spec)
    m = c.compress(x, step=step)
    check_randk(spec, x, c.decompress(m), m)


def check_randk(spec, x, y, m):
    d = x.size
    k = H.keep_count(d, H.parse_spec(spec)[1])
    y = f64(y).ravel()
    xd = f64(x).ravel()
    kept = np.flatnonzero(y)
    nonzero = np.flatnonzero(xd)
    assert set(kept) <= set(nonzero)
    if nonzero.size == d:
        assert kept.size == k, f"kept {kept.size} coordinates, k = {k}"
    scale = d / k if (H.randk_scaled(spec) and d) else 1.0
    assert np.allclose(y[kept], xd[kept] * scale, rtol=rel_eps(x.dtype), atol=0)
    assert m.payload_nbytes <= k * x.itemsize + 16, "RandK sends values only"
    if H.randk_scaled(spec) and k == d:
        assert np.array_equal(y, xd)


@pytest.mark.parametrize("spec", ["qsgd:levels=16,seed=3", "qsgd:levels=3,seed=9", "qsgd:levels=1,seed=0",
                                  "qsgd:levels=255,seed=1"])
@FAST
@given(x=arrays(dtypes=ALL_NP, kinds=("normal", "wide", "ties", "sparse", "onehot")),
       step=st.integers(0, 2 ** 64 - 1))
def test_qsgd_structure(spec, x, step):
    c = ef.compressor(spec)
    check_qsgd(spec, x, c.decompress(c.compress(x, step=step)))


def check_qsgd(spec, x, y):
    """C(x)_j = ||x||_2 sign(x_j) xi_j / s with xi_j in {floor(s|x_j|/||x||), ... + 1}."""
    s = int(H.parse_spec(spec)[1]["levels"])
    y = f64(y).ravel()
    xd = f64(x).ravel()
    norm = math.sqrt(H.sq(xd))
    if norm == 0:
        assert np.all(y == 0)
        return
    t = s * np.abs(xd) / norm
    lev = np.abs(y) * s / norm
    assert np.allclose(lev, np.round(lev), rtol=2 * rel_eps(x.dtype), atol=1e-3), "decoded values are not on the levels"
    lev = np.round(lev)
    assert np.all(lev >= np.floor(t - 1e-4)) and np.all(lev <= np.ceil(t + 1e-4)), "level out of {l, l+1}"
    nz = y != 0
    assert np.all(np.sign(y[nz]) == np.sign(xd[nz]))


@pytest.mark.parametrize("spec", ["natural", "natural:seed=2"])
@FAST
@given(x=arrays(dtypes=ALL_NP, kinds=("normal", "wide", "ties", "sparse", "positive")),
       step=st.integers(0, 2 ** 64 - 1))
def test_natural_structure(spec, x, step):
    c = ef.compressor(spec)
    check_natural(x, c.decompress(c.compress(x, step=step)))


def check_natural(x, y):
    """Each value rounds to one of the two neighbouring powers of two (exact on powers of two)."""
    y = f64(y).ravel()
    xd = f64(x).ravel()
    ax = np.abs(xd)
    nz = ax > 0
    assert np.all(y[~nz] == 0)
    lo = 2.0 ** np.floor(np.log2(ax[nz]))
    ay = np.abs(y[nz])
    assert np.all((ay == lo) | (ay == 2 * lo)), "not a neighbouring power of two"
    assert np.all(np.sign(y[nz]) == np.sign(xd[nz]))
    exact = ax[nz] == lo
    assert np.all(ay[exact] == lo[exact]), "powers of two must be kept exactly"


# ----------------------------------------------------------------------------------------------
# large inputs: the multi-threaded, chunked paths keep every property (sizes straddle the
# parallel threshold 2^16, and are not multiples of 8, of blocks or of chunks)


def check_any(spec, c, x, m, y):
    name = H.name_of(spec)
    if name == "identity":
        assert y.tobytes() == x.tobytes()
    elif name == "cast":
        if x.dtype == np.float32:
            ref = H.bf16_round(x) if "bf16" in spec else x.astype(np.float16).astype(np.float32)
            assert np.array_equal(y, ref)
    elif name == "topk":
        assert np.array_equal(y, H.topk_reference(x, H.keep_count(x.size, H.parse_spec(spec)[1])))
    elif name == "randk":
        check_randk(spec, x, y, m)
    elif name == "sign":
        check_sign(c, x, y)
    elif name == "qsgd":
        check_qsgd(spec, x, y)
    elif name == "natural":
        check_natural(x, y)
    elif name == "quant":
        check_quant(spec, c, x, y)
    elif name == "powersgd":
        check_projection(x, y, 1e-3 if x.dtype == np.float32 else 1e-6)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("n,dtype", [(65_535, np.float32), (65_536 + 13, np.float32), (150_001, np.float32),
                                     (100_003, np.float64)])
def test_large_input_properties(spec, n, dtype):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-2, 2, n)).astype(dtype)
    x[rng.integers(0, n, 100)] = 0
    if H.name_of(spec) == "powersgd":
        x = x[: (n // 7) * 7].reshape(-1, 7)
    c = ef.compressor(spec)
    m = c.compress(x, step=5)
    y = c.decompress(ef.Message.from_bytes(bytes(m)))
    assert y.shape == x.shape and y.dtype == x.dtype and np.all(np.isfinite(y))
    check_any(spec, c, x, m, y)
    if x.ndim == 1:
        wb = c.wire_bytes(n, x.dtype.name)
        assert (len(bytes(m)) <= wb) if H.name_of(spec) == "topk" else (len(bytes(m)) == wb)


def varint_bytes(idx: np.ndarray) -> int:
    gaps = np.diff(np.concatenate([[-1], idx])) - 1
    gaps[0] = idx[0] if idx.size else 0
    return int(sum(max(1, (int(g).bit_length() + 6) // 7) for g in gaps))


@pytest.mark.parametrize("d,k,layout", [(1000, 10, "spread"), (1000, 10, "end"), (1000, 500, "spread"),
                                        (100_000, 100, "spread"), (100_000, 1000, "random"), (100_000, 20_000, "random"),
                                        (64, 8, "spread"), (9, 1, "end"), (70_001, 5000, "spread")])
def test_topk_index_encoding_is_the_smaller_one(d, k, layout):
    """The index encoding is chosen by density: never larger than the smaller of a bitmap and
    gap varints, and never above wire_bytes(d)."""
    rng = np.random.default_rng(d + k)
    x = rng.uniform(0.1, 1.0, d).astype(np.float32)
    if layout == "spread":
        idx = np.linspace(0, d - 1, k).astype(np.int64)
    elif layout == "end":
        idx = np.arange(d - k, d)
    else:
        idx = np.sort(rng.choice(d, k, replace=False))
    x[idx] += 10
    c = ef.compressor(f"topk:k={k}")
    m = c.compress(x)
    y = c.decompress(m)
    assert np.array_equal(np.flatnonzero(y), idx)
    best = min(-(-d // 8), varint_bytes(idx))
    assert m.payload_nbytes <= k * 4 + best, (m.payload_nbytes, k * 4, -(-d // 8), varint_bytes(idx))
    assert len(bytes(m)) <= c.wire_bytes(d)


def test_concurrent_compression_from_threads():
    """Compress releases the GIL: independent compressors in several threads give the same
    messages as one after another (no shared scratch state)."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal(n).astype(np.float32) for n in (5_000, 6_001, 70_000, 4_099)]

    def run(spec_x):
        spec, x = spec_x
        c = ef.compressor(spec)
        return [bytes(c.compress(x, step=s)) for s in range(3)]

    jobs = [(spec, x) for spec in SPECS for x in xs[:2]] + [(spec, xs[2]) for spec in SPECS[:5]]
    serial = [run(j) for j in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(run, jobs))
    assert [i for i, (a, b) in enumerate(zip(serial, parallel)) if a != b] == []


@pytest.mark.parametrize("spec", SPECS)
def test_wire_bytes_rejects_negative_and_grows(spec):
    c = ef.compressor(spec)
    for bad in (-1, (3, -1), 2 ** 70, "3", (1,) * 9, 2.5):
        with pytest.raises(ef.InvalidArgument):
            c.wire_bytes(bad)
    sizes = [c.wire_bytes(d) for d in (0, 1, 10, 1000, 10 ** 6)]
    assert all(isinstance(v, int) and v > 0 for v in sizes)
    assert sizes == sorted(sizes)
    # alpha and omega take a dimension too: never truncated (1.5) nor a pybind TypeError
    for bad in (-1, 2 ** 70, "3", 2.5, None):
        for constant in (c.alpha, c.omega):
            with pytest.raises(ef.InvalidArgument, match=r"d \(the dimension\) must be an int in \[0, "):
                constant(bad)


# ----------------------------------------------------------------------------------------------
# randomized compressors: statistics. Decoded draws over N steps; per-coordinate means within a
# CLT band of x (5 standard errors from the exact variance), a chi-square style aggregate, and
# the mean squared error against its exact expectation and against omega(d)||x||^2.

N_DRAWS = 6000


def stat_inputs():
    rng = np.random.default_rng(99)
    a = rng.standard_normal(24)
    b = np.array([0.0, 1.0, -2.0, 0.75, 3e-3, -5e2, 1.5, -0.1, 7.0, 0.3, -0.3, 33.3, 0.0, 2.0 ** -5, -1e-4, 12.0])
    return [a, b]


def exact_variance(spec: str, x: np.ndarray) -> np.ndarray:
    name, p = H.parse_spec(spec)
    d = x.size
    if name == "randk":
        q = H.keep_count(d, p) / d
        if H.randk_scaled(spec):
            return x ** 2 * (1 / q - 1)
        return x ** 2 * q * (1 - q)
    if name == "qsgd":
        s = int(p["levels"])
        norm = math.sqrt(H.sq(x))
        t = s * np.abs(x) / norm
        f = t - np.floor(t)
        return (norm / s) ** 2 * f * (1 - f)
    if name == "natural":
        ax = np.abs(x)
        lo = np.where(ax > 0, 2.0 ** np.floor(np.log2(np.where(ax > 0, ax, 1))), 0)
        return (2 * lo - ax) * (ax - lo)
    raise AssertionError(spec)


def draws(c, x, n, start=0):
    return np.stack([f64(c.decompress(c.compress(x, step=start + s))) for s in range(n)])


@pytest.mark.parametrize("spec", ["randk:ratio=0.25,seed=1", "randk:k=3,seed=7,scaled=false", "qsgd:levels=16,seed=3",
                                  "qsgd:levels=3,seed=9", "qsgd:levels=1,seed=4", "natural", "natural:seed=2"])
@pytest.mark.parametrize("which", [0, 1])
def test_statistics_of_randomized(spec, which):
    x = stat_inputs()[which]
    d = x.size
    c = ef.compressor(spec)
    D = draws(c, x, N_DRAWS, start=1000 * which)
    scaled = not c.biased
    mean_expected = x if scaled else x * H.keep_count(d, H.parse_spec(spec)[1]) / d
    var = exact_variance(spec, x)
    mean = D.mean(0)
    se = np.sqrt(var / N_DRAWS)
    dev = np.abs(mean - mean_expected)
    exact = var == 0
    assert np.all(dev[exact] <= 1e-6 * np.abs(mean_expected[exact]) + 1e-300), \
        f"deterministic coordinates moved: {np.flatnonzero(dev[exact] > 1e-6 * np.abs(mean_expected[exact]))}"
    z = dev[~exact] / se[~exact]
    assert np.all(z <= 5), f"biased coordinates: z = {np.round(z, 2)}"
    dof = z.size
    assert (z ** 2).sum() <= dof + 6 * math.sqrt(2 * dof) + 10, f"chi2 {(z ** 2).sum():.1f} for {dof} coordinates"
    err = ((D - x) ** 2).sum(1)
    if scaled:
        expect_err = var.sum()
    else:  # unscaled RandK: E||C(x)-x||^2 = (1 - k/d)||x||^2
        expect_err = (1 - H.keep_count(d, H.parse_spec(spec)[1]) / d) * H.sq(x)
    se_err = err.std() / math.sqrt(N_DRAWS)
    assert abs(err.mean() - expect_err) <= 5 * se_err + 1e-9 * H.sq(x), (err.mean(), expect_err, se_err)
    if scaled:
        assert err.mean() <= c.omega(d) * H.sq(x) + 5 * se_err
    else:
        assert err.mean() <= (1 - c.alpha(d)) * H.sq(x) + 5 * se_err


def test_natural_variance_constant_is_attained():
    """omega = 1/8 is attained at |t| = (4/3) 2^a: the bound is tight, not loose."""
    x = 4.0 / 3.0 * 2.0 ** (np.arange(64) % 16 - 8.0)
    c = ef.compressor("natural")
    D = draws(c, x, 3000)
    err = ((D - x) ** 2).sum(1)
    assert err.mean() == pytest.approx(H.sq(x) / 8, rel=0.05)


# ----------------------------------------------------------------------------------------------
# determinism and reproducible draws


@pytest.mark.parametrize("spec", DETERMINISTIC)
@FAST
@given(x=arrays())
def test_deterministic_repeat(spec, x):
    c = ef.compressor(spec)
    a = bytes(c.compress(x))
    assert bytes(c.compress(x)) == a
    assert bytes(c.compress(x, step=12345)) == a
    assert bytes(ef.compressor(spec).compress(x.copy())) == a


@pytest.mark.parametrize("spec", RANDOMIZED)
@FAST
@given(x=vectors(min_n=1, kinds=("normal", "wide")), step=st.integers(0, 2 ** 64 - 1))
def test_randomized_same_step_same_draw(spec, x, step):
    c = ef.compressor(spec)
    a = bytes(c.compress(x, step=step))
    assert bytes(c.compress(x, step=step)) == a
    assert bytes(ef.compressor(spec).compress(x.copy(), step=step)) == a, "another instance, same (seed, step)"


@pytest.mark.parametrize("spec", RANDOMIZED)
def test_randomized_draws_differ_across_steps_and_seeds(spec):
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    c = ef.compressor(spec)
    seen = {bytes(c.compress(x, step=s)) for s in range(50)}
    assert len(seen) == 50
    name, p = H.parse_spec(spec)
    p = dict(p, seed=str(int(p.get("seed", 0)) + 1))
    other = ef.compressor(name + ":" + ",".join(f"{k}={v}" for k, v in p.items()))
    assert bytes(other.compress(x, step=0)) != bytes(c.compress(x, step=0)), "seed must change the draw"


@pytest.mark.parametrize("spec", RANDOMIZED)
def test_step_counter(spec):
    """Without step=, an internal counter starting at 0 picks the draw and advances."""
    x = np.random.default_rng(1).standard_normal(50)
    c = ef.compressor(spec)
    auto = [bytes(c.compress(x)) for _ in range(3)]
    ref = ef.compressor(spec)
    assert auto == [bytes(ref.compress(x, step=s)) for s in range(3)]


def test_powersgd_fresh_instances_agree():
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((8, 6)) for _ in range(4)]
    a, b = ef.compressor("powersgd:rank=2,seed=4"), ef.compressor("powersgd:rank=2,seed=4")
    for x in xs:
        assert bytes(a.compress(x)) == bytes(b.compress(x))


CROSS_PROCESS_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import efcomm as ef
import test_compressors as T
print(json.dumps(T.draw_digests(json.loads(sys.argv[2]), dict(np.load(sys.argv[3])))))
"""


def draw_digests(specs, inputs) -> dict:
    out = {}
    for spec in specs:
        for name, x in sorted(inputs.items()):
            if H.is_stateful(spec):
                c = ef.compressor(spec)
                msgs = [c.compress(x) for _ in range(3)]
            else:
                c = ef.compressor(spec)
                msgs = [c.compress(x, step=s) for s in (0, 1, 12345, 2 ** 40, 2 ** 64 - 1)]
            out[f"{spec}|{name}"] = [hashlib.sha256(bytes(m)).hexdigest() for m in msgs]
    return out


def test_same_draw_in_another_process(tmp_path):
    """Another process (one OpenMP thread instead of this one's default) replays every message
    bit for bit: randomness is a function of (seed, step, index) only, and results do not
    depend on the thread count (the large input takes the multi-threaded path)."""
    rng = np.random.default_rng(7)
    inputs = {"small": rng.standard_normal(37).astype(np.float32),
              "matrix": rng.standard_normal((33, 17)),
              "large": rng.standard_normal(131_075).astype(np.float32),
              "large64": rng.standard_normal((300, 301))}
    path = tmp_path / "x.npz"
    np.savez(path, **inputs)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    package_root = str(pathlib.Path(ef.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), package_root, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", CROSS_PROCESS_CHILD, str(HERE), json.dumps(SPECS), str(path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout)
    ours = draw_digests(SPECS, inputs)
    diff = sorted(k for k in ours if ours[k] != theirs.get(k))
    assert not diff, f"draws differ in another process with OMP_NUM_THREADS=1: {diff}"


# ----------------------------------------------------------------------------------------------
# non-finite input

NONFINITE = [float("nan"), float("inf"), float("-inf")]
NOT_RANDK = [s for s in SPECS if H.name_of(s) != "randk"]


@st.composite
def poisoned(draw):
    x = draw(arrays(shapes=st.one_of(st.integers(1, 300).map(lambda n: (n,)),
                                     st.tuples(st.integers(1, 9), st.integers(1, 9)), st.just(())),
                    kinds=("normal", "wide", "sparse", "ties")))
    x = x.copy()
    flat = x.reshape(-1)
    for _ in range(draw(st.integers(1, 3))):
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(NONFINITE))
    return x


@pytest.mark.parametrize("spec", NOT_RANDK)
@FAST
@given(x=poisoned())
def test_nonfinite_input_raises(spec, x):
    with pytest.raises(ef.NonFiniteError):
        ef.compressor(spec).compress(x)


@pytest.mark.parametrize("spec", NOT_RANDK)
@pytest.mark.parametrize("pos", [0, 65_535, 99_999])
@pytest.mark.parametrize("bad", NONFINITE, ids=["nan", "inf", "-inf"])
def test_nonfinite_large_input_raises(spec, pos, bad):
    """The fused check also works on the multi-threaded path."""
    x = np.random.default_rng(pos).standard_normal(100_000).astype(np.float32)
    x[pos] = bad
    if H.name_of(spec) == "powersgd":
        x = x.reshape(250, 400)
    with pytest.raises(ef.NonFiniteError):
        ef.compressor(spec).compress(x)


@pytest.mark.parametrize("spec", ["randk:ratio=0.25,seed=1", "randk:k=3,seed=7,scaled=false"])
@FAST
@given(x=poisoned(), step=st.integers(0, 1000))
def test_randk_nonfinite(spec, x, step):
    """A non-finite coordinate among the sent ones raises; an unsent one may be ignored, but
    the decoded output is never silently non-finite."""
    c = ef.compressor(spec)
    sent = set(np.flatnonzero(c.decompress(c.compress(np.ones_like(x), step=step)).reshape(-1)))
    bad = set(np.flatnonzero(~np.isfinite(x.reshape(-1))))
    if bad & sent:
        with pytest.raises(ef.NonFiniteError):
            c.compress(x, step=step)
        return
    try:
        y = c.decompress(c.compress(x, step=step))
    except ef.NonFiniteError:
        return
    assert np.all(np.isfinite(y))


EXTREME = {np.float32: [3.4028235e38, -3.4028235e38, 1e38, 1e-45, -1e-45, 1.2e-38, 1e30],
           np.float64: [1.7976931348623157e308, -1.7976931348623157e308, 1e300, 1e200, 5e-324, 1e-310, 1e-300]}


@pytest.mark.parametrize("spec", SPECS)
@QUICK
@given(data=st.data())
def test_extreme_finite_values_never_decode_to_nonfinite(spec, data):
    """Finite input at the ends of the float range either raises NonFiniteError/InvalidArgument
    (an overflow, like Cast's) or decodes to finite values: never a silent Inf/NaN."""
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    n = data.draw(st.integers(1, 40))
    x = make_array((n,), dtype, data.draw(st.integers(0, 2 ** 32 - 1)), "normal")
    for _ in range(data.draw(st.integers(1, n))):
        x[data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from(EXTREME[dtype]))
    if H.name_of(spec) == "powersgd" and n % 2 == 0:
        x = x.reshape(2, n // 2)
    c = ef.compressor(spec)
    try:
        m = c.compress(x, step=1)
    except (ef.NonFiniteError, ef.InvalidArgument):
        return
    y = c.decompress(m)
    assert np.all(np.isfinite(y)), f"{spec}: finite input {x} decoded to {y}"


def _finite_or_raises(spec, x, step=0):
    c = ef.compressor(spec)
    try:
        m = c.compress(x, step=step)
    except (ef.NonFiniteError, ef.InvalidArgument):
        return None
    y = c.decompress(m)
    return None if np.all(np.isfinite(y)) else y


def test_randk_scaling_overflow_is_not_silent():
    """Found by the test above: the receiver's d/k scaling of a finite value near the top of
    the dtype's range overflows (d = 2, k = 1: 2 * 3.4e38 = inf)."""
    x = np.array([np.finfo(np.float32).max, -0.13], np.float32)
    y = _finite_or_raises("randk:ratio=0.25,seed=1", x, step=0)
    assert y is None, f"finite {x} decoded to {y}"


def test_powersgd_near_max_is_not_silent():
    """Found by the test above: P Q^T of a matrix holding DBL_MAX rounds one entry past it."""
    x = np.random.default_rng(0).standard_normal(20).reshape(2, 10)
    x[0, 0] = x[1, 2] = np.finfo(np.float64).max
    y = _finite_or_raises("powersgd:rank=2,seed=4", x)
    assert y is None, f"finite input decoded to {y}"


# ----------------------------------------------------------------------------------------------
# invalid specs

INVALID = [
    ("", "spec"), ("nosuch", "nosuch"), ("nosuch:ratio=0.1", "nosuch"),
    ("identity:x=1", "x"), ("sign:foo=1", "foo"), ("natural:foo=2", "foo"),
    ("cast:dtype=fp32", "dtype"), ("cast:dtype=int8", "dtype"), ("cast:dtype=bf16,k=2", "k"),
    ("topk:ratio=0", "ratio"), ("topk:ratio=-0.1", "ratio"), ("topk:ratio=1.5", "ratio"),
    ("topk:ratio=abc", "ratio"), ("topk:ratio=nan", "ratio"), ("topk:k=0", "k"), ("topk:k=-3", "k"),
    ("topk:k=2.5", "k"), ("topk:ratio=0.1,k=5", "k"), ("topk:ratio", "ratio"), ("topk:ratio=0.1,ratio=0.2", "ratio"),
    ("topk:ratio=0.1,seed=1", "seed"),
    ("randk:ratio=0,seed=1", "ratio"), ("randk:ratio=2,seed=1", "ratio"), ("randk:k=0,seed=1", "k"),
    ("randk:ratio=0.1,scaled=maybe", "scaled"), ("randk:ratio=0.1,seed=x", "seed"), ("randk:ratio=0.1,bits=2", "bits"),
    ("qsgd:levels=0", "levels"), ("qsgd:levels=-4", "levels"), ("qsgd:levels=1.5", "levels"), ("qsgd:seed=z", "seed"),
    ("quant:bits=3", "bits"), ("quant:bits=1", "bits"), ("quant:bits=16", "bits"), ("quant:bits=0", "bits"),
    ("quant:block=0", "block"), ("quant:block=-8", "block"), ("quant:bits=8,levels=3", "levels"),
    ("powersgd:rank=0", "rank"), ("powersgd:rank=-2", "rank"), ("powersgd:rank=two", "rank"),
    ("topk:ratio=0.1\x00junk", "ratio"), ("topk:k=3\x00", "k"),  # a number ends at the value's end, not a NUL
]


@pytest.mark.parametrize("spec,word", INVALID)
def test_invalid_spec_raises_naming_the_parameter(spec, word):
    with pytest.raises(ef.InvalidArgument) as ei:
        ef.compressor(spec)
    e = ei.value
    assert isinstance(e, ValueError) and isinstance(e, ef.Error) and e.code == ef.InvalidArgument.code
    assert re.search(rf"\b{re.escape(word)}\b", str(e)), f"message does not name {word!r}: {e}"


@pytest.mark.parametrize("bad", [None, 3, b"topk"])
def test_non_string_spec(bad):
    with pytest.raises(ef.InvalidArgument):
        ef.compressor(bad)


def test_decompress_of_a_shape_beyond_memory_is_an_ef_error():
    # A sparse message stands for any number of elements: RandK k=1 of 2**40 is a valid message,
    # whose decoded array (4 TiB) cannot be allocated. That is an ef.Error naming the shape, not
    # numpy's MemoryError.
    b = bytearray(bytes(ef.compressor("randk:k=1,seed=1").compress(np.ones(8, np.float32))))
    struct.pack_into("<Q", b, 16, 2 ** 40)  # numel
    struct.pack_into("<q", b, 32, 2 ** 40)  # shape[0]
    msg = ef.Message.from_bytes(H.fix_checksum(b))
    assert msg.shape == (2 ** 40,)
    with pytest.raises(ef.Error, match=r"\[1099511627776\] \(1099511627776 elements\) does not fit in memory"):
        ef.compressors.decompress(msg)


@pytest.mark.parametrize("spec", ["topk:k=2", "randk:k=2,seed=1", "randk:k=2,seed=1,scaled=false"])
def test_sparse_payload_values_that_are_not_finite_are_corrupt(spec):
    # efcomm never sends a NaN or Inf value (compress refuses them): a message carrying one, its
    # checksum made to match, is refused at the parse, before any decoder or aggregate stores it.
    x = np.arange(1, 9, dtype=np.float32)
    good = bytes(ef.compressor(spec).compress(x))
    value_at = struct.unpack_from("<I", good, 12)[0]  # the first value: both payloads start with them
    for bad in (np.nan, np.inf):
        b = bytearray(good)
        b[value_at:value_at + 4] = np.float32(bad).tobytes()
        with pytest.raises(ef.CorruptMessageError, match=r"payload value 0 of 2 is (NaN|Inf)"):
            ef.Message.from_bytes(H.fix_checksum(b))
    if spec == "randk:k=2,seed=1":
        # What the sender accepts the parser accepts: values near the float32 limit whose d/k
        # product rounds inside it (the check computes as the decoder does, in float32).
        for d, k in ((11, 7), (199, 191)):
            limit = float(np.finfo(np.float32).max) + 2.0 ** (127 - 24)  # rounds to inf from here
            v = np.float32(limit / (d / k))
            for _ in range(8):
                try:
                    sent = ef.compressor(f"randk:k={k},seed=1").compress(np.full(d, v, np.float32))
                except ef.NonFiniteError:
                    pass
                else:
                    ef.Message.from_bytes(bytes(sent))
                v = np.nextafter(v, np.float32(0))
    if "scaled=false" not in spec and spec.startswith("randk"):
        # A finite value that the receiver's d/k (here 4) takes beyond float32.
        b = bytearray(good)
        b[value_at:value_at + 4] = np.float32(3e38).tobytes()
        with pytest.raises(ef.CorruptMessageError, match="decodes beyond the float32 range"):
            ef.Message.from_bytes(H.fix_checksum(b))
