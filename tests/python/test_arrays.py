"""Array interop of the compressors: numpy and torch CPU inputs of every supported dtype, what
decompress returns, out= in place, rejected inputs (non-contiguous, integer, mismatched out),
the bytes-like Message, and the error classes."""

from __future__ import annotations

import numpy as np
import pytest

import efcomm as ef
import helpers as H
from helpers import SPECS

NP_DTYPES = [np.float32, np.float64, np.float16]
SHAPES = [(), (0,), (1,), (37,), (6, 5), (2, 3, 4, 1), (3, 0), (0, 4)]
# torch gives empty tensors odd strides; test_torch_empty_tensors covers those on their own
TORCH_SHAPES = [(), (0,), (1,), (37,), (6, 5), (2, 3, 4, 1)]


def sample(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def torch_mod():
    return pytest.importorskip("torch")


TORCH_DTYPES = ["float32", "float64", "float16", "bfloat16"]


# ----------------------------------------------------------------------------------------------
# numpy


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", NP_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_in_numpy_out(spec, dtype):
    c = ef.compressor(spec)
    for shape in SHAPES:
        x = sample(shape, dtype)
        m = c.compress(x, step=1)
        assert m.dtype == np.dtype(dtype).name
        y = c.decompress(m)
        assert type(y) is np.ndarray and y.shape == shape and y.dtype == dtype
        assert np.all(np.isfinite(y))
        # the generic decoder agrees, also on the wire image
        assert np.array_equal(ef.compressors.decompress(ef.Message.from_bytes(bytes(m))), y)


@pytest.mark.parametrize("spec", SPECS)
def test_numpy_out_in_place(spec):
    c = ef.compressor(spec)
    x = sample((6, 5), np.float64)
    m = c.compress(x, step=2)
    ref = c.decompress(m)
    out = np.full((6, 5), np.nan)
    ptr = out.ctypes.data
    got = c.decompress(m, out=out)
    assert got is out and out.ctypes.data == ptr
    assert np.array_equal(out, ref)
    out2 = np.full((6, 5), np.nan)
    assert ef.compressors.decompress(m, out=out2) is out2 and np.array_equal(out2, ref)


def test_readonly_input_is_accepted():
    x = sample(50)
    x.flags.writeable = False
    for spec in SPECS:
        c = ef.compressor(spec)
        c.decompress(c.compress(x, step=0))


@pytest.mark.parametrize("spec", ["identity", "topk:ratio=0.1", "sign"])
def test_readonly_out_is_rejected(spec):
    c = ef.compressor(spec)
    m = c.compress(sample(10))
    out = np.empty(10, np.float32)
    out.flags.writeable = False
    with pytest.raises(ef.InvalidArgument):
        c.decompress(m, out=out)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("make", [
    lambda: sample(40)[::2],
    lambda: sample((6, 5)).T,
    lambda: sample((4, 6))[:, 1:3],
    lambda: np.asfortranarray(sample((3, 4))),
], ids=["strided", "transposed", "sliced", "fortran"])
def test_noncontiguous_numpy_rejected(spec, make):
    with pytest.raises(ef.InvalidArgument, match="contiguous"):
        ef.compressor(spec).compress(make())


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("bad", [
    lambda: np.arange(10, dtype=np.int32),
    lambda: np.arange(10, dtype=np.int64),
    lambda: np.ones(10, dtype=np.complex64),
    lambda: np.ones(10, dtype=bool),
    lambda: [1.0, 2.0, 3.0],
    lambda: "abc",
    lambda: None,
], ids=["int32", "int64", "complex64", "bool", "list", "str", "none"])
def test_wrong_input_type_rejected(spec, bad):
    with pytest.raises(ef.InvalidArgument):
        ef.compressor(spec).compress(bad())


@pytest.mark.parametrize("spec", SPECS)
def test_mismatched_out_rejected(spec):
    c = ef.compressor(spec)
    m = c.compress(sample((3, 4)), step=0)
    for out in (np.empty((3, 5), np.float32), np.empty(11, np.float32), np.empty((3, 4), np.float64),
                np.empty((3, 4), np.float16), np.empty((3, 4), np.int32), np.empty(24, np.float16)):
        with pytest.raises(ef.InvalidArgument):
            c.decompress(m, out=out)
    with pytest.raises(ef.InvalidArgument):
        c.decompress(m, out=np.empty((8, 6), np.float32)[:, ::2])  # non-contiguous out
    with pytest.raises(ef.InvalidArgument, match="out must be an array .* got list"):
        c.decompress(m, out=[[0.0] * 4] * 3)


def test_out_with_other_shape_same_size_rejected():
    """decompress returns the input's shape; an out of another shape (same element count) is a
    caller's mistake, reported like any other mismatch (as numpy does for out=)."""
    accepted = []
    for spec in SPECS:
        c = ef.compressor(spec)
        m = c.compress(sample((3, 4)), step=0)
        for shape in ((4, 3), (12,), (2, 6), (3, 4, 1)):
            try:
                c.decompress(m, out=np.empty(shape, np.float32))
                accepted.append(f"{spec} out{shape}")
            except ef.InvalidArgument:
                pass
    assert not accepted, f"out of another shape accepted for a (3, 4) message: {accepted[:8]} ..."


@pytest.mark.parametrize("spec", SPECS)
def test_message_from_another_compressor_rejected(spec):
    m = ef.compressor(spec).compress(sample(20), step=0)
    for other in SPECS:
        if H.name_of(other) == H.name_of(spec):
            continue
        with pytest.raises(ef.InvalidArgument) as ei:
            ef.compressor(other).decompress(m)
        assert H.name_of(spec) in str(ei.value)


def test_decompress_wants_a_message():
    c = ef.compressor("identity")
    raw = bytes(c.compress(sample(4)))
    with pytest.raises(ef.InvalidArgument):
        c.decompress(raw)


# ----------------------------------------------------------------------------------------------
# Message is bytes-like


@pytest.mark.parametrize("spec", SPECS)
def test_message_bytes_like(spec):
    m = ef.compressor(spec).compress(sample((5, 7)), step=0)
    raw = bytes(m)
    assert m.nbytes == len(raw) == len(m)
    mv = memoryview(m)
    assert mv.readonly and mv.format == "B" and mv.nbytes == m.nbytes and mv.tobytes() == raw
    assert np.frombuffer(m, dtype=np.uint8).tobytes() == raw
    for buf in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8).copy(), mv,
                memoryview(bytearray(b"xx" + raw))[2:]):
        m2 = ef.Message.from_bytes(buf)
        assert bytes(m2) == raw and m2.shape == (5, 7) and m2.compressor == H.name_of(spec)
    assert m.payload_nbytes < m.nbytes
    assert repr(m).startswith("<efcomm.Message")


def test_message_from_bytes_copies():
    raw = bytearray(bytes(ef.compressor("identity").compress(sample(8))))
    m = ef.Message.from_bytes(raw)
    raw[40] ^= 0xFF
    assert bytes(m) != bytes(raw)
    ef.compressor("identity").decompress(m)


def test_message_from_bytes_rejects_non_bytes_buffers():
    raw = bytes(ef.compressor("identity").compress(sample(8)))
    with pytest.raises(ef.Error):
        ef.Message.from_bytes(np.frombuffer(raw + b"\0" * 4, np.uint32))  # 4-byte items
    with pytest.raises(ef.Error):
        ef.Message.from_bytes(np.frombuffer(raw * 2, np.uint8)[::2])  # non-contiguous
    for bad in ("abc", None, 3):  # not buffers: InvalidArgument naming the type, not pybind's TypeError
        with pytest.raises(ef.InvalidArgument, match=type(bad).__name__):
            ef.Message.from_bytes(bad)


# ----------------------------------------------------------------------------------------------
# errors


def test_error_classes_and_codes():
    assert issubclass(ef.Error, RuntimeError)
    assert issubclass(ef.InvalidArgument, ValueError) and issubclass(ef.InvalidArgument, ef.Error)
    for cls in (ef.InvalidArgument, ef.NonFiniteError, ef.CorruptMessageError, ef.MismatchError,
                ef.CollectiveTimeout, ef.BackendUnavailable):
        assert issubclass(cls, ef.Error)
    cases = [
        (ef.InvalidArgument, lambda: ef.compressor("nosuch")),
        (ef.InvalidArgument, lambda: ef.compressor("identity").compress(np.arange(3))),
        (ef.NonFiniteError, lambda: ef.compressor("identity").compress(np.array([np.nan], np.float32))),
        (ef.CorruptMessageError, lambda: ef.Message.from_bytes(b"not a message at all, not at all!!!!!")),
    ]
    for cls, fn in cases:
        with pytest.raises(cls) as ei:
            fn()
        e = ei.value
        assert type(e) is cls and isinstance(e, ef.Error)
        assert e.code == cls.code and isinstance(e.code, int) and str(e)


@pytest.mark.parametrize("spec", SPECS)
def test_nonfinite_error_is_efcomm_error_with_code(spec):
    x = sample(30)
    x[7] = np.inf
    try:
        ef.compressor(spec).compress(x, step=0)
    except ef.Error as e:
        assert type(e) is ef.NonFiniteError and e.code == ef.NonFiniteError.code == 3
    else:
        assert H.name_of(spec) == "randk", "only RandK may skip an unsent non-finite value"


# ----------------------------------------------------------------------------------------------
# torch


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_in_torch_out(spec, dtype):
    torch = torch_mod()
    td = getattr(torch, dtype)
    c = ef.compressor(spec)
    for shape in TORCH_SHAPES:
        t = torch.from_numpy(sample(shape, np.float32)).to(td)
        m = c.compress(t, step=1)
        assert m.dtype == dtype and tuple(m.shape) == shape
        y = c.decompress(m)
        assert isinstance(y, torch.Tensor) and y.dtype == td and tuple(y.shape) == shape
        assert y.device.type == "cpu" and bool(torch.isfinite(y).all())
        # the same values from numpy travel as the same bytes (fresh objects: PowerSGD warm-starts)
        if dtype != "bfloat16":
            assert bytes(ef.compressor(spec).compress(t.numpy(), step=1)) == \
                bytes(ef.compressor(spec).compress(t, step=1))
        # a message from the wire decodes to numpy unless told otherwise; bf16 needs torch
        m2 = ef.Message.from_bytes(bytes(m))
        y2 = c.decompress(m2)
        if dtype == "bfloat16":
            assert isinstance(y2, torch.Tensor) and torch.equal(y2, y)
        else:
            assert np.array_equal(np.asarray(y2), y.numpy())


def test_torch_empty_tensors():
    """Empty tensors are contiguous whatever their strides (torch.empty(3, 0).stride() is
    (1, 1); torch.from_numpy of an empty array has (0, 0)), as input and as out=; and the
    default output allocation of decompress makes such tensors."""
    torch = torch_mod()
    bad = []
    for dtype in TORCH_DTYPES:
        td = getattr(torch, dtype)
        for shape in [(3, 0), (0, 4), (0,), (2, 0, 5)]:
            for spec in ("identity", "topk:k=3", "sign"):
                c = ef.compressor(spec)
                for how, t in (("torch.empty", torch.empty(shape, dtype=td)),
                               ("from_numpy", torch.from_numpy(np.empty(shape, np.float32)).to(td))):
                    try:
                        m = c.compress(t)
                        y = c.decompress(m)
                        assert tuple(y.shape) == shape and y.dtype == td
                        out = torch.empty(shape, dtype=td)
                        assert c.decompress(m, out=out) is out
                    except ef.Error as e:
                        bad.append(f"{spec} {dtype} {how}{shape} stride {t.stride()}: {e}")
    assert not bad, f"{len(bad)} cases fail, e.g.\n" + "\n".join(bad[:6])


def test_torch_identity_exact_all_dtypes():
    torch = torch_mod()
    c = ef.compressor("identity")
    for dtype in TORCH_DTYPES:
        t = torch.randn(7, 3).to(getattr(torch, dtype))
        assert torch.equal(c.decompress(c.compress(t)), t)


@pytest.mark.parametrize("spec", SPECS)
def test_torch_out_in_place(spec):
    torch = torch_mod()
    c = ef.compressor(spec)
    for dtype in (torch.float32, torch.bfloat16):
        t = torch.randn(6, 5).to(dtype)
        m = c.compress(t, step=3)
        ref = c.decompress(m)
        out = torch.full((6, 5), float("nan"), dtype=dtype)
        ptr = out.data_ptr()
        got = c.decompress(m, out=out)
        assert got is out and out.data_ptr() == ptr
        assert torch.equal(out, ref)
    # numpy-made message into a torch out, and torch-made message into a numpy out
    x = sample((4, 4))
    m = ef.compressor(spec).compress(x, step=0)
    out = torch.empty(4, 4)
    c.decompress(m, out=out)
    assert np.array_equal(out.numpy(), c.decompress(m))
    mt = ef.compressor(spec).compress(torch.from_numpy(x), step=0)
    out_np = np.empty((4, 4), np.float32)
    assert c.decompress(mt, out=out_np) is out_np and np.array_equal(out_np, out.numpy())


@pytest.mark.parametrize("spec", SPECS)
def test_torch_requires_grad(spec):
    torch = torch_mod()
    t = torch.randn(5, 6, requires_grad=True)
    c = ef.compressor(spec)
    y = c.decompress(c.compress(t, step=0))
    assert isinstance(y, torch.Tensor) and not y.requires_grad
    assert bytes(ef.compressor(spec).compress(t, step=0)) == \
        bytes(ef.compressor(spec).compress(t.detach().numpy(), step=0))


@pytest.mark.parametrize("spec", SPECS)
def test_torch_noncontiguous_rejected(spec):
    torch = torch_mod()
    c = ef.compressor(spec)
    for t in (torch.randn(5, 6).t(), torch.randn(20)[::2], torch.randn(4, 6)[:, 1:3],
              torch.randn(4, 6).to(torch.bfloat16).t()):
        with pytest.raises(ef.InvalidArgument, match="contiguous"):
            c.compress(t)
    m = c.compress(torch.randn(3, 4), step=0)
    with pytest.raises(ef.InvalidArgument):
        c.decompress(m, out=torch.empty(4, 3).t())


@pytest.mark.parametrize("spec", ["identity", "topk:k=3", "qsgd:levels=16,seed=3", "powersgd:rank=1"])
def test_torch_wrong_dtypes_rejected(spec):
    torch = torch_mod()
    c = ef.compressor(spec)
    for t in (torch.arange(10, dtype=torch.int32), torch.arange(10), torch.ones(4, dtype=torch.bool),
              torch.ones(4, dtype=torch.complex64), torch.ones(4, dtype=torch.uint8)):
        with pytest.raises(ef.InvalidArgument):
            c.compress(t)
    m = c.compress(torch.randn(6), step=0)
    for out in (torch.empty(6, dtype=torch.float64), torch.empty(6, dtype=torch.bfloat16),
                torch.empty(7), torch.empty(6, dtype=torch.int32)):
        with pytest.raises(ef.InvalidArgument):
            c.decompress(m, out=out)


def test_torch_input_not_copied_or_modified():
    """Zero-copy in: compressing reads the tensor in place and never writes to it."""
    torch = torch_mod()
    for spec in SPECS:
        t = torch.randn(64, 3)
        before = t.clone()
        ptr = t.data_ptr()
        ef.compressor(spec).compress(t, step=0)
        assert t.data_ptr() == ptr and torch.equal(t, before)
