"""Shared helpers of the compressor tests: the spec table, numpy references, a pure-Python
CRC32C for the wire checksum, and the wire-format fuzzer (also run as a child process, so a
crash in a decoder is reported as a test failure with its reproducer instead of killing pytest).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import struct
import sys

import numpy as np

# Every spec of SPEC.md's table, with the parameters the tests vary.
SPECS = [
    "identity",
    "cast:dtype=bf16",
    "cast:dtype=fp16",
    "topk:ratio=0.1",
    "topk:k=3",
    "randk:ratio=0.25,seed=1",
    "randk:k=3,seed=7,scaled=false",
    "sign",
    "qsgd:levels=16,seed=3",
    "qsgd:levels=3,seed=9",
    "natural",
    "natural:seed=2",
    "quant:bits=2,block=16",
    "quant:bits=4,block=24",
    "quant:bits=8,block=256",
    "powersgd:rank=2,seed=4",
    "powersgd:rank=1",
]

CLASS_OF = {
    "identity": "Identity", "cast": "Cast", "topk": "TopK", "randk": "RandK", "sign": "ScaledSign",
    "qsgd": "QSGD", "natural": "Natural", "quant": "BlockQuant", "powersgd": "PowerSGD",
}
WIRE_ID = {"identity": 1, "cast": 2, "topk": 3, "randk": 4, "sign": 5, "qsgd": 6, "natural": 7,
           "quant": 8, "powersgd": 9}


def has_module(name: str) -> bool:
    """Whether an optional dependency (scikit-learn, matplotlib) is importable."""
    return importlib.util.find_spec(name) is not None


def parse_spec(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        params[k.strip()] = v.strip()
    return name.strip(), params


def name_of(spec: str) -> str:
    return parse_spec(spec)[0]


def is_randomized(spec: str) -> bool:
    return name_of(spec) in ("randk", "qsgd", "natural")


def is_stateful(spec: str) -> bool:
    """PowerSGD keeps a warm start: repeated calls on one object legitimately differ."""
    return name_of(spec) == "powersgd"


def keep_count(d: int, params: dict) -> int:
    """k = min(d, max(1, round-half-away(ratio*d))), or min(d, k); 0 for d = 0."""
    if d <= 0:
        return 0
    if "k" in params:
        return min(d, int(params["k"]))
    p = float(params["ratio"]) * d
    f = math.floor(p)
    r = f + (1 if p - f >= 0.5 else 0)
    return min(d, max(1, r))


def expected_constants(spec: str, d: int):
    """(biased, alpha, omega) that docs/algorithms.md / SPEC.md fix for this spec; a field is
    ... (Ellipsis) where the contract leaves it to the implementation."""
    name, p = parse_spec(spec)
    if name == "identity":
        return False, 1.0, 0.0
    if name == "cast":
        u = 2.0 ** -8 if p.get("dtype", "bf16") == "bf16" else 2.0 ** -11
        return True, 1.0 - u * u, None
    if name == "topk":
        return True, keep_count(d, p) / d, None
    if name == "randk":
        k = keep_count(d, p)
        if p.get("scaled", "true") in ("false", "0", "False"):
            return True, k / d, None
        return False, k / d, d / k - 1.0
    if name == "sign":
        return True, 1.0 / d, None
    if name == "qsgd":
        s = int(p.get("levels", 16))
        om = min(d / s ** 2, math.sqrt(d) / s)
        return False, 1.0 / (1.0 + om), om
    if name == "natural":
        return False, 1.0 / (1.0 + 1.0 / 8.0), 1.0 / 8.0
    if name in ("quant", "powersgd"):
        return True, ..., None
    raise AssertionError(spec)


def randk_scaled(spec: str) -> bool:
    return parse_spec(spec)[1].get("scaled", "true") not in ("false", "0", "False")


# ----------------------------------------------------------------------------------------------
# numpy references


def topk_reference(x: np.ndarray, k: int) -> np.ndarray:
    """The k largest |x_j| kept, ties to the lower index (a stable sort on -|x|)."""
    flat = x.reshape(-1)
    order = np.argsort(-np.abs(flat.astype(np.float64)), kind="stable")[:k]
    y = np.zeros_like(flat)
    y[order] = flat[order]
    return y.reshape(x.shape)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) -> float32, for finite x."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).reshape(np.shape(x))


def bf16_round_exact(x: np.ndarray) -> np.ndarray:
    """float64 -> bfloat16 rounded once to nearest even (exact rational arithmetic, no float32
    step), as float64; beyond bfloat16's largest value: Inf."""
    from fractions import Fraction
    import math

    out = np.empty(np.shape(x), np.float64)
    for i, v in enumerate(np.ravel(np.asarray(x, np.float64))):
        if v == 0 or not math.isfinite(v):
            out.flat[i] = v
            continue
        e = max(math.frexp(v)[1], -125)  # 8 significant bits; subnormals' quantum 2^-133
        q = round(Fraction(v) * Fraction(2) ** (8 - e))  # round half to even
        r = Fraction(q) * Fraction(2) ** (e - 8)
        out.flat[i] = math.copysign(math.inf, v) if abs(r) > Fraction(0xFF) * Fraction(2) ** 120 else float(r)
    return out


def sq(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(np.dot(a.ravel(), a.ravel()))


# ----------------------------------------------------------------------------------------------
# CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table driven, and the wire checksum.

def _make_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC_TABLE = _make_table()


def crc32c(data, crc: int = 0) -> int:
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


CHUNK = 1 << 16


def wire_checksum(data: bytes) -> int:
    """message.cpp wireChecksum: plain CRC32C up to 64 KiB; above, the CRC32C of the chunks'
    little-endian CRC32Cs."""
    if len(data) <= CHUNK:
        return crc32c(data)
    crcs = b"".join(struct.pack("<I", crc32c(data[o:o + CHUNK])) for o in range(0, len(data), CHUNK))
    return crc32c(crcs)


def fix_checksum(buf) -> bytes:
    """Rewrites the 4-byte trailer so the checksum of the (mutated) bytes is valid."""
    b = bytearray(buf)
    if len(b) < 4:
        return bytes(b)
    b[-4:] = struct.pack("<I", wire_checksum(bytes(b[:-4])))
    return bytes(b)


def fix_sizes(buf) -> bytes:
    """Makes the header's payload-length field agree with the buffer's length (where the header
    is long enough to hold it), then fixes the checksum: mutations then reach deeper checks."""
    b = bytearray(buf)
    if len(b) >= 36:
        hdr = struct.unpack_from("<I", b, 12)[0]
        if hdr <= len(b) - 4:
            struct.pack_into("<Q", b, 24, len(b) - 4 - hdr)
    return fix_checksum(b)


class Header:
    """Field offsets of the fixed header (message.cpp)."""

    def __init__(self, buf: bytes):
        self.magic, self.version, self.cid, self.dtype, self.ndim = struct.unpack_from("<IBBBB", buf, 0)
        self.flags, self.params_size, self.hdr = struct.unpack_from("<HHI", buf, 8)
        self.numel, self.payload = struct.unpack_from("<QQ", buf, 16)
        self.shape = [struct.unpack_from("<q", buf, 32 + 8 * i)[0] for i in range(self.ndim)]
        self.params_off = 32 + 8 * self.ndim


# ----------------------------------------------------------------------------------------------
# Fuzzer

def corpus_inputs():
    """Deterministic inputs whose messages seed the fuzzer: every shape kind, both index
    encodings of TopK (sparse and dense), ties, zeros."""
    rng = np.random.default_rng(20240611)
    out = []
    for dt in (np.float32, np.float64):
        out += [
            np.zeros((0,), dt),
            np.asarray(1.5, dt),
            rng.standard_normal(1).astype(dt),
            rng.standard_normal(7).astype(dt),
            rng.standard_normal(40).astype(dt),
            rng.standard_normal((6, 9)).astype(dt),
            rng.standard_normal((2, 3, 2, 5)).astype(dt),
            np.zeros((3, 0), dt),
        ]
    out.append(rng.standard_normal(300).astype(np.float32))
    out.append(np.round(rng.standard_normal(100) * 2).astype(np.float32))  # ties and zeros
    out.append(rng.standard_normal(33).astype(np.float16))
    out.append(np.zeros(17, np.float32))
    return out


def corpus_specs(spec: str) -> list[str]:
    """Extra variants of a spec for the corpus (TopK dense vs sparse index encodings)."""
    name = name_of(spec)
    if name == "topk":
        return [spec, "topk:ratio=0.6", "topk:ratio=0.02", "topk:k=1"]
    if name == "randk":
        return [spec, "randk:ratio=0.9,seed=5"]
    return [spec]


def build_corpus(ef, spec: str) -> list[bytes]:
    msgs = []
    for s in corpus_specs(spec):
        c = ef.compressor(s)
        for i, x in enumerate(corpus_inputs()):
            try:
                msgs.append(bytes(c.compress(x, step=i)))
            except ef.InvalidArgument:
                pass  # e.g. a dtype a compressor does not take; nothing to fuzz then
    return msgs


_SPECIAL = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE)


def _rand_byte(r: random.Random) -> int:
    return r.choice(_SPECIAL) if r.random() < 0.5 else r.randrange(256)


def mutate(r: random.Random, a: bytes, b: bytes) -> tuple[bytes, str]:
    """One mutation of message a (b: another message, for splicing). Returns (bytes, what)."""
    n = len(a)
    h = Header(a)
    payload_lo = h.hdr
    op = r.randrange(14)
    buf = bytearray(a)
    if op == 0:  # bit flips anywhere, checksum left as is
        for _ in range(r.randint(1, 4)):
            i = r.randrange(n)
            buf[i] ^= 1 << r.randrange(8)
        return bytes(buf), "bitflip-raw"
    if op in (1, 2):  # bit flips / byte sets in the payload, checksum fixed
        if n - 4 <= payload_lo:
            lo, hi = 0, n - 4
        else:
            lo, hi = payload_lo, n - 4
        for _ in range(r.randint(1, 6)):
            i = r.randrange(lo, hi) if hi > lo else 0
            if op == 1:
                buf[i] ^= 1 << r.randrange(8)
            else:
                buf[i] = _rand_byte(r)
        return fix_checksum(buf), "payload-" + ("bitflip" if op == 1 else "byteset")
    if op == 3:  # bytes set anywhere before the trailer, checksum fixed
        for _ in range(r.randint(1, 3)):
            buf[r.randrange(max(1, n - 4))] = _rand_byte(r)
        return fix_checksum(buf), "byteset-any"
    if op == 4:  # truncation, raw or with consistent sizes
        cut = r.randrange(n)
        if r.random() < 0.3:
            return bytes(a[:cut]), f"truncate-raw:{cut}"
        body = a[:-4]
        keep = r.randrange(len(body) + 1)
        return fix_sizes(body[:keep] + b"\0\0\0\0"), f"truncate-fixed:{keep}"
    if op == 5:  # extension before the trailer
        extra = bytes(_rand_byte(r) for _ in range(r.choice((1, 2, 3, 4, 7, 8, 16, 64))))
        return fix_sizes(a[:-4] + extra + b"\0\0\0\0"), f"extend:{len(extra)}"
    if op == 6:  # splice two messages
        i, j = r.randrange(n), r.randrange(len(b))
        out = a[:i] + b[j:]
        return (fix_sizes(out) if r.random() < 0.8 else out), f"splice:{i}:{j}"
    if op == 7:  # header of a, payload of b
        hb = Header(b)
        out = a[:h.hdr] + b[hb.hdr:]
        return fix_sizes(out), "header-a-payload-b"
    if op == 8:  # compressor id
        buf[5] = r.choice(list(WIRE_ID.values()) + [0, 10, 255])
        return fix_checksum(buf), f"cid={buf[5]}"
    if op == 9:  # dtype
        buf[6] = r.choice((0, 1, 2, 3, 4, 255))
        return fix_checksum(buf), f"dtype={buf[6]}"
    if op == 10:  # flags
        struct.pack_into("<H", buf, 8, r.choice((1, 2, 0x8000, 0xFFFF, r.randrange(65536))))
        return fix_checksum(buf), "flags"
    if op == 11:  # shape and element count edited consistently (reaches codec validation)
        if h.ndim == 0:
            struct.pack_into("<Q", buf, 16, r.choice((0, 2, 1 << 40)))
            return fix_checksum(buf), "numel-0d"
        i = r.randrange(h.ndim)
        shape = list(h.shape)
        shape[i] = r.choice((0, 1, 2, shape[i] + 1, max(0, shape[i] - 1), shape[i] * 2, 1 << 31, 1 << 40, -1))
        struct.pack_into("<q", buf, 32 + 8 * i, shape[i])
        numel = 1
        for s in shape:
            numel *= s
        if r.random() < 0.9:
            struct.pack_into("<Q", buf, 16, numel % (1 << 64))
        return fix_checksum(buf), f"shape[{i}]={shape[i]}"
    if op == 12:  # parameter bytes
        if h.params_size == 0 or h.params_off + h.params_size > n - 4:
            struct.pack_into("<H", buf, 10, r.choice((1, 4, 8, 0xFFFF)))
            return fix_checksum(buf), "params-size"
        for _ in range(r.randint(1, 3)):
            i = h.params_off + r.randrange(h.params_size)
            if r.random() < 0.5:
                buf[i] ^= 1 << r.randrange(8)
            else:
                buf[i] = _rand_byte(r)
        return fix_checksum(buf), "params"
    # op == 13: payload replaced by random bytes of the same length, or all 0x00 / 0xFF
    fill = r.choice(("rand", 0x00, 0xFF))
    for i in range(payload_lo, n - 4):
        buf[i] = r.randrange(256) if fill == "rand" else fill
    return fix_checksum(buf), f"payload-fill-{fill}"


def c_strides(shape) -> tuple:
    """Row-major strides in elements, 0 for every dimension of an empty shape (numpy's choice;
    torch.empty(3, 0) has (1, 1), which test_arrays.test_torch_empty_tensors covers)."""
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


def _alloc(msg):
    if msg.dtype == "bfloat16":
        import torch
        return torch.empty_strided(tuple(msg.shape), c_strides(tuple(msg.shape)), dtype=torch.bfloat16)
    return np.empty(tuple(msg.shape), dtype=msg.dtype)


def check_one(ef, data: bytes):
    """The fuzz oracle: None if `data` is rejected with CorruptMessageError or accepted and
    decoded to the right shape; otherwise a description of the violation."""
    try:
        msg = ef.Message.from_bytes(data)
    except ef.CorruptMessageError:
        return None
    except Exception as e:  # noqa: BLE001 - any other type is the failure we look for
        return f"from_bytes raised {type(e).__name__}: {e}"
    if msg.numel > (1 << 26):
        return None  # a valid message of a huge tensor: decoding would only test the allocator
    try:
        out = _alloc(msg)
        ef.compressors.decompress(msg, out=out)
    except Exception as e:  # noqa: BLE001
        return f"validated message failed to decode: {type(e).__name__}: {e}"
    if tuple(out.shape) != tuple(msg.shape):
        return f"decoded shape {tuple(out.shape)} != message shape {tuple(msg.shape)}"
    return None


def case(spec: str, seed: int, i: int, corpus: list[bytes]) -> tuple[bytes, str]:
    r = random.Random(f"{spec}|{seed}|{i}")
    a = corpus[r.randrange(len(corpus))]
    data, what = mutate(r, a, corpus[r.randrange(len(corpus))])
    if r.random() < 0.15:  # stack a second mutation
        try:
            data2, what2 = mutate(r, data, corpus[r.randrange(len(corpus))]) if len(data) >= 36 else (data, "")
        except (struct.error, IndexError, ValueError):
            data2, what2 = data, ""
        data, what = data2, what + "+" + what2
    return data, what


def run_fuzz(specs: list[str], seed: int, iters, progress_path: str | None = None):
    """Runs `iters` (an int, or a dict per spec) mutations per spec; returns
    {spec: {"iters", "corpus", "failures": [at most 10]}}. Writes "spec-index case" to
    progress_path before each case, so a parent can name the case that crashed a child."""
    import efcomm as ef
    fd = os.open(progress_path, os.O_WRONLY | os.O_CREAT) if progress_path else None
    results = {}
    for si, spec in enumerate(specs):
        corpus = build_corpus(ef, spec)
        fails, nfail = [], 0
        n = iters[spec] if isinstance(iters, dict) else iters
        for i in range(n):
            data, what = case(spec, seed, i, corpus)
            if fd is not None:
                os.pwrite(fd, f"{si:6d} {i:12d}\n".encode(), 0)
            err = check_one(ef, data)
            if err:
                nfail += 1
                if len(fails) < 10:
                    fails.append({"i": i, "mutation": what, "error": err, "hex": data.hex()})
        results[spec] = {"iters": n, "corpus": len(corpus), "failures": fails, "failed": nfail}
    if fd is not None:
        os.close(fd)
    return results


def fuzz_main():
    """Child-process entry: argv = json [specs, seed, iters, progress_path]; prints JSON."""
    specs, seed, iters, progress = json.loads(sys.argv[1])
    print(json.dumps(run_fuzz(specs, seed, iters, progress)))
