"""The wire format under attack: valid messages of every compressor, mutated (bit flips, byte
sets, truncation, extension, splicing, header edits with a recomputed checksum so the mutation
reaches each compressor's payload validation). `Message.from_bytes` must raise
CorruptMessageError or return a message that decodes to its shape; any other exception, or a
crash, is a failure.

The mutations run in child processes so a crash is reported with its reproducer:
    import efcomm as ef, helpers as H
    data, what = H.case(spec, seed, i, H.build_corpus(ef, spec))
    ef.Message.from_bytes(data)            # then decompress
Sizes: EFCOMM_FUZZ_ITERS mutations per compressor kind (default 2000); the test marked slow runs
max(100000, EFCOMM_FUZZ_ITERS) per kind. EFCOMM_FUZZ_SEED changes the cases.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import efcomm as ef
import helpers as H
from helpers import SPECS

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_ITERS = 2000
NIGHTLY_ITERS = 100_000


def _env_iters():
    v = os.environ.get("EFCOMM_FUZZ_ITERS")
    return int(v) if v else None


def _seed(default: int) -> int:
    return int(os.environ.get("EFCOMM_FUZZ_SEED", default))


def _per_spec(total_per_kind: int) -> dict:
    """Splits each compressor kind's mutation count over that kind's specs."""
    kinds = {}
    for s in SPECS:
        kinds.setdefault(H.name_of(s), []).append(s)
    return {s: -(-total_per_kind // len(group)) for group in kinds.values() for s in group}


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
import helpers
helpers.fuzz_main()
"""


def _run_children(specs_iters: dict, seed: int, tmp, workers: int = 2, timeout: float = 1800) -> dict:
    """Runs the fuzzer in `workers` child processes; a child that dies is restarted after the
    spec it died on, which is recorded as a crash with the case that crashed."""
    package_root = str(pathlib.Path(ef.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), package_root, os.environ.get("PYTHONPATH")]))
    queues = [[] for _ in range(workers)]
    for i, spec in enumerate(sorted(specs_iters, key=lambda s: -specs_iters[s])):
        queues[i % workers].append(spec)
    results = {}
    running = []

    def start(w, specs):
        if not specs:
            return
        progress = os.path.join(tmp, f"progress-{w}-{time.monotonic_ns()}")
        args = json.dumps([specs, seed, {s: specs_iters[s] for s in specs}, progress])
        p = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", CHILD, args, str(HERE)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        running.append((w, p, specs, progress, time.monotonic()))

    for w in range(workers):
        start(w, queues[w])
    while running:
        w, p, group, progress, t0 = running.pop(0)
        try:
            out, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            err = "TIMEOUT\n" + err
        if p.returncode == 0:
            results.update(json.loads(out))
            continue
        try:
            with open(progress) as f:
                si, i = (int(v) for v in f.read().split())
        except (OSError, ValueError):
            si, i = 0, -1
        crashed = group[si]
        results[crashed] = {"iters": specs_iters[crashed], "crash": {"i": i, "returncode": p.returncode, "stderr": err[-4000:]},
                            "failures": []}
        start(w, group[si + 1:])
    return results


def _report(spec, res, seed):
    lines = []
    if "crash" in res:
        c = res["crash"]
        lines.append(f"{spec}: child process died (rc {c['returncode']}) at case i={c['i']} seed={seed}; "
                     f"reproduce: H.case({spec!r}, {seed}, {c['i']}, H.build_corpus(ef, {spec!r}))\n{c['stderr']}")
    if res.get("failed"):
        lines.append(f"{spec}: {res['failed']} of {res['iters']} mutations failed; the first ones:")
    for f in res.get("failures", []):
        lines.append(f"{spec}: case i={f['i']} seed={seed} ({f['mutation']}): {f['error']}\n  bytes: {f['hex'][:600]}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def default_fuzz(tmp_path_factory):
    iters = _env_iters() or DEFAULT_ITERS
    seed = _seed(1)
    return seed, _run_children(_per_spec(iters), seed, tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("spec", SPECS)
def test_fuzz_decoders(spec, default_fuzz):
    seed, results = default_fuzz
    res = results[spec]
    assert "crash" not in res and not res["failures"], _report(spec, res, seed)


def _slow_selected(config) -> bool:
    expr = config.getoption("markexpr") or ""
    return "slow" in expr and "not slow" not in expr


@pytest.mark.slow
def test_fuzz_decoders_nightly(request, tmp_path):
    """>= 100k mutations per compressor kind (nightly size)."""
    iters = max(NIGHTLY_ITERS, _env_iters() or 0)
    if not (_slow_selected(request.config) or (_env_iters() or 0) >= NIGHTLY_ITERS):
        pytest.skip("nightly-size fuzz: run with -m slow or EFCOMM_FUZZ_ITERS>=100000")
    seed = _seed(2)
    results = _run_children(_per_spec(iters), seed, tmp_path, timeout=3 * 3600)
    bad = [_report(s, r, seed) for s, r in sorted(results.items()) if "crash" in r or r["failures"]]
    assert not bad, "\n".join(bad)
    assert sum(r["iters"] for r in results.values()) >= NIGHTLY_ITERS


# ----------------------------------------------------------------------------------------------
# the fuzzer's own machinery, and hand-made malformed headers


@pytest.mark.parametrize("spec", SPECS)
def test_corpus_is_valid_and_checksum_matches(spec):
    """Every corpus message is accepted; the pure-Python checksum equals the stored one (so
    mutations with a recomputed checksum really get past it)."""
    corpus = H.build_corpus(ef, spec)
    assert corpus
    for raw in corpus:
        m = ef.Message.from_bytes(raw)
        assert bytes(m) == raw
        assert struct.unpack("<I", raw[-4:])[0] == H.wire_checksum(raw[:-4]) == m.checksum
        assert H.fix_checksum(raw) == raw
        assert H.fix_sizes(raw) == raw
        assert H.Header(raw).payload == m.payload_nbytes


def test_chunked_checksum_above_one_mebibyte():
    x = np.random.default_rng(0).standard_normal(300_000)
    raw = bytes(ef.compressor("identity").compress(x))
    assert len(raw) > H.CHUNK
    assert struct.unpack("<I", raw[-4:])[0] == H.wire_checksum(raw[:-4])
    bad = bytearray(raw)
    bad[len(raw) // 2] ^= 4
    with pytest.raises(ef.CorruptMessageError):
        ef.Message.from_bytes(bytes(bad))
    ef.Message.from_bytes(H.fix_checksum(bad))


def _identity_msg(shape=(3, 4)):
    """A 2-d message has no header padding (32 + 2*8 bytes); a 1-d one has 8 bytes of it."""
    return bytes(ef.compressor("identity").compress(np.arange(np.prod(shape), dtype=np.float32).reshape(shape)))


def _edit(raw, fmt, off, value, fix=True):
    b = bytearray(raw)
    struct.pack_into(fmt, b, off, value)
    return H.fix_checksum(b) if fix else bytes(b)


@pytest.mark.parametrize("what,make", [
    ("empty", lambda r: b""),
    ("short", lambda r: r[:20]),
    ("35 bytes", lambda r: r[:35]),
    ("magic", lambda r: _edit(r, "<I", 0, 0x12345678)),
    ("version 0", lambda r: _edit(r, "<B", 4, 0)),
    ("version 2", lambda r: _edit(r, "<B", 4, 2)),
    ("compressor id 0", lambda r: _edit(r, "<B", 5, 0)),
    ("compressor id 200", lambda r: _edit(r, "<B", 5, 200)),
    ("dtype 4", lambda r: _edit(r, "<B", 6, 4)),
    ("dtype 255", lambda r: _edit(r, "<B", 6, 255)),
    ("ndim 9", lambda r: _edit(r, "<B", 7, 9)),
    ("ndim 1", lambda r: _edit(r, "<B", 7, 1)),
    ("params size", lambda r: _edit(r, "<H", 10, 3)),
    ("header length", lambda r: _edit(r, "<I", 12, 64)),
    ("header length huge", lambda r: _edit(r, "<I", 12, 0xFFFFFFFF)),
    ("numel", lambda r: _edit(r, "<Q", 16, 13)),
    ("payload length", lambda r: _edit(r, "<Q", 24, 44)),
    ("payload length huge", lambda r: _edit(r, "<Q", 24, 2 ** 64 - 1)),
    ("negative dim", lambda r: _edit(_edit(r, "<q", 32, -3), "<Q", 16, 2 ** 64 - 12)),
    ("dims overflow", lambda r: _edit(_edit(r, "<q", 32, 2 ** 62), "<q", 40, 2 ** 62)),
    ("padding", lambda r: _edit(_identity_msg((5,)), "<B", 44, 1)),
    ("checksum", lambda r: _edit(r, "<I", len(r) - 4, 0, fix=False)),
    ("truncated", lambda r: r[:-1]),
    ("extended", lambda r: r + b"\0"),
    ("payload too short (sizes fixed)", lambda r: H.fix_sizes(r[:-8] + b"\0" * 4)),
    ("payload too long (sizes fixed)", lambda r: H.fix_sizes(r[:-4] + b"\0" * 8)),
])
def test_malformed_header_rejected(what, make):
    with pytest.raises(ef.CorruptMessageError):
        ef.Message.from_bytes(make(_identity_msg()))


@pytest.mark.parametrize("spec", SPECS)
def test_payload_of_another_compressor_rejected_or_decodes(spec):
    """A header claiming one compressor with another's payload (checksum fixed) is rejected by
    the payload validation, or decodes cleanly: never another exception."""
    x = np.random.default_rng(3).standard_normal((6, 9)).astype(np.float32)
    mine = bytes(ef.compressor(spec).compress(x, step=0))
    for other in SPECS:
        theirs = bytes(ef.compressor(other).compress(x, step=0))
        for cid in H.WIRE_ID.values():
            b = bytearray(mine)
            b[5] = cid
            assert H.check_one(ef, H.fix_checksum(b)) is None
            spliced = H.fix_sizes(mine[:H.Header(mine).hdr] + theirs[H.Header(theirs).hdr:])
            assert H.check_one(ef, spliced) is None, (spec, other)


def test_empty_shape_with_a_huge_dimension():
    """An empty tensor whose other dimension is absurd (found by the fuzzer: shape
    (0, 4601726894249575858) passes the header checks since the element count is 0, and then
    no array library can allocate the output). Rejected, or decodable like any valid message."""
    bad = []
    for spec in ("identity", "topk:k=3", "sign"):
        for shape, dim in (((0, 4), 1), ((3, 0), 0)):
            for huge in (2 ** 40, 2 ** 62, 4601726894249575858, 2 ** 63 - 1):
                raw = bytearray(ef.compressor(spec).compress(np.zeros(shape, np.float32)))
                struct.pack_into("<q", raw, 32 + 8 * dim, huge)
                err = H.check_one(ef, H.fix_checksum(raw))
                if err:
                    new_shape = list(shape)
                    new_shape[dim] = huge
                    bad.append(f"{spec} shape {tuple(new_shape)}: {err}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("spec,dtype,value", [
    ("quant:bits=8,block=8", np.float16, 1e6),     # float32 block bounds beyond float16's range
    ("quant:bits=8,block=8", np.float32, 3e38),    # in range: a valid message (control)
    ("powersgd:rank=1", np.float32, 1e30),         # finite factors whose product overflows float32
    ("powersgd:rank=1", np.float16, 1e3),          # ... float16
])
def test_valid_messages_never_decode_to_inf(spec, dtype, value):
    """A payload that passes validation decodes to finite values: scales or factors whose
    decoded values would overflow the message's dtype are rejected (checksum fixed)."""
    x = np.linspace(-1, 1, 16).astype(dtype).reshape(4, 4)
    raw = bytearray(ef.compressor(spec).compress(x, step=0))
    hdr = H.Header(bytes(raw)).hdr
    if spec.startswith("quant"):
        struct.pack_into("<f", raw, hdr + 4, value)  # block 0's upper bound (float32)
    else:
        n = (len(raw) - 4 - hdr) // 4  # every factor (float32)
        struct.pack_into(f"<{n}f", raw, hdr, *([value] * n))
    wire = H.fix_checksum(raw)
    if value == 3e38:
        assert np.isfinite(ef.compressors.decompress(ef.Message.from_bytes(wire))).all()
        return
    with pytest.raises(ef.CorruptMessageError, match="range"):
        ef.Message.from_bytes(wire)
