#!/usr/bin/env python3
"""The table of the device check (bench/gpu_check.sh): reads efcomm_gpu_bench's JSON, times
``torch.topk`` on the same GPU and size in the same run, checks issue 8's targets and prints a
markdown table (last), also written with --out. With --trace (the stderr of a run under
EFCOMM_CUDA_TRACE=1), also where one call's time goes: the codec's kernels, the checksum, the
synchronizations, from GPU events.

    python3 bench/gpu/gpu_report.py BENCH.json [--trace TRACE.txt] [--out TABLE.md]
"""

import argparse
import json
import re
import statistics
import sys
import time

_COMPRESS = re.compile(r"^efcomm-trace compress (\S+) n=(\d+) msg=(\d+) \| (.*)$")
_DECOMPRESS = re.compile(r"^efcomm-trace decompress\s+n=(\d+) msg=(\d+) \| (.*)$")


def _phases(text: str) -> dict:
    """'copy 162.8us | seal 109.0us | ...' -> {'copy': 162.8e-6, ...} (microseconds to seconds)."""
    out = {}
    for part in text.split(" | "):
        name, _, value = part.rpartition(" ")
        if value.endswith("us"):
            out[name] = float(value[:-2]) * 1e-6
    return out


def trace_breakdown(path: str, element_bytes: int = 4) -> dict:
    """spec -> {'compress': phases, 'decompress': phases, 'input', 'message'} from a trace: the
    last call of each (after the warm-up). A decompress line belongs to the compress before it."""
    out, spec = {}, None
    with open(path) as f:
        for line in f:
            m = _COMPRESS.match(line.strip())
            if m:
                spec = m.group(1)
                out[spec] = {"compress": _phases(m.group(4)), "input": int(m.group(2)) * element_bytes,
                             "message": int(m.group(3))}
                continue
            m = _DECOMPRESS.match(line.strip())
            if m and spec in out:
                out[spec]["decompress"] = _phases(m.group(3))
    return out


def _us(seconds) -> str:
    """A traced interval in microseconds; '-' where the call has no such mark (decompress waits
    for no checksum before its decode: readMessageAsync)."""
    return "-" if seconds is None else f"{seconds * 1e6:.1f} us"


def breakdown_lines(trace: dict, copy_gbps: float) -> list:
    """Rows for the compressors whose codec kernels are marked in the trace (the streaming ones)."""
    rows = []
    for spec, t in trace.items():
        c, d = t["compress"], t.get("decompress", {})
        codec = sum(v for k, v in c.items() if k not in ("seal", "host-enqueue", "wall"))
        if codec <= 0 or "decode" not in d:
            continue
        moved = t["input"] + t["message"]

        def pct(seconds):
            return f"{100 * moved / seconds / 1e9 / copy_gbps:.0f} %"

        rows.append(f"| `{spec}` | {codec * 1e6:.1f} us ({pct(codec)}) | {c.get('seal', 0) * 1e6:.1f} us | "
                    f"{c.get('wall', 0) * 1e6:.1f} us | {d.get('verify', 0) * 1e6:.1f} us | "
                    f"{_us(d.get('verify-sync'))} | {d['decode'] * 1e6:.1f} us ({pct(d['decode'])}) | "
                    f"{d.get('wall', 0) * 1e6:.1f} us |")
    if not rows:
        return []
    return ["", "Where one call's time goes (a traced call after the warm-up, GPU event times; a kernel's % "
            "of the copy bandwidth counts the call's bytes read + written, input and message, against "
            "the copy's wall time, which includes one synchronization):", "",
            "| compressor | compress kernel | checksum + header | compress call | verify | sync | "
            "decode kernel | decompress call |", "|---|---:|---:|---:|---:|---:|---:|---:|"] + rows


def fit_line(points: list) -> tuple:
    """Least-squares (fixed seconds, seconds per byte) of t = a + b x over (x, t) points."""
    mx = statistics.fmean(x for x, _ in points)
    mt = statistics.fmean(t for _, t in points)
    var = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (t - mt) for x, t in points) / var if var > 0 else 0.0
    return mt - b * mx, b


def scaling_lines(r: dict, copy_gbps: float) -> list:
    """Each streaming call at several sizes as a fixed cost plus a rate (a line through its
    times against the bytes read + written), and the share of the copy bandwidth the largest
    size reaches with and without that fixed cost."""
    by = {}
    for s in r.get("scaling", []):
        if "error" not in s:
            by.setdefault(s["spec"], []).append(s)
    if not by:
        return []
    lines = ["", "Calls against the message size (median times at "
             + ", ".join(f"{m:,}" for m in sorted({s["size"] for v in by.values() for s in v}))
             + " float32, each fitted as fixed cost + bytes / rate; a synchronization alone, a 4-byte memset "
             f"and a stream synchronize: {r.get('sync_floor_seconds', 0) * 1e6:.1f} us):", "",
             "| compressor | call | fixed cost | rate (GB/s) | % of copy, largest | % of copy without the fixed cost |",
             "|---|---|---:|---:|---:|---:|"]
    for spec, rows in by.items():
        if len(rows) < 2:
            continue
        big = max(rows, key=lambda s: s["size"])
        for call in ("compress", "decompress"):
            pts = [(4 * s["size"] + s["message_bytes"], s[f"{call}_seconds"]) for s in rows]
            a, b = fit_line(pts)
            moved = 4 * big["size"] + big["message_bytes"]
            t = big[f"{call}_seconds"]
            rate = f"{1 / b / 1e9:.0f}" if b > 0 else "-"
            lean = f"{100 * moved / max(t - a, 1e-12) / 1e9 / copy_gbps:.0f} %" if t > a else "-"
            lines.append(f"| `{spec}` | {call} | {a * 1e6:.1f} us | {rate} | "
                         f"{100 * moved / t / 1e9 / copy_gbps:.0f} % | {lean} |")
    return lines


def torch_topk_seconds(n: int, k: int, repeats: int) -> tuple:
    """Median seconds of torch.topk(|x|, k) on the GPU (|x| computed beforehand: the selection
    alone), and of torch.topk(x.abs(), k) (what a user writes); (None, reason) without torch/CUDA."""
    try:
        import torch
    except ImportError:
        return None, None, "torch is not installed"
    if not torch.cuda.is_available():
        return None, None, "torch sees no CUDA device"
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, device="cuda", generator=g)
    a = x.abs()

    def med(fn):
        fn()
        torch.cuda.synchronize()
        t = []
        for _ in range(repeats):
            s = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            t.append(time.perf_counter() - s)
        return statistics.median(t)

    return med(lambda: torch.topk(a, k, sorted=False)), med(lambda: torch.topk(x.abs(), k, sorted=False)), None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench_json")
    p.add_argument("--trace", help="stderr of efcomm_gpu_bench under EFCOMM_CUDA_TRACE=1")
    p.add_argument("--out")
    args = p.parse_args()
    with open(args.bench_json) as f:
        r = json.load(f)
    n, copy = r["size"], r["copy_gbps"]
    k = max(1, int(n * 0.01))
    topk_sel, topk_abs, why = torch_topk_seconds(n, k, r["repeats"])
    lines = [f"Device check on **{r['device']}**: {n:,} float32 (standard normal), median of {r['repeats']} calls "
             f"after a warm-up, wall time with the stream synchronized. Device-to-device copy: "
             f"{copy:.0f} GB/s (bytes read + written), the 100 % of the bandwidth columns.", "",
             "| compressor | message | compress | GB/s | % of copy | decompress | GB/s | % of copy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    by = {}
    for c in r["compressors"]:
        by[c["spec"]] = c
        if "error" in c:
            lines.append(f"| `{c['spec']}` | error: {c['error']} | | | | | | |")
            continue
        lines.append(f"| `{c['spec']}` | {c['message_bytes'] / 2**20:.2f} MiB | {c['compress_seconds'] * 1e3:.3f} ms | "
                     f"{c['compress_gbps']:.0f} | {100 * c['compress_gbps'] / copy:.0f} % | "
                     f"{c['decompress_seconds'] * 1e3:.3f} ms | {c['decompress_gbps']:.0f} | "
                     f"{100 * c['decompress_gbps'] / copy:.0f} % |")
    lines += ["", "| feedback step | compressor | time | over TopK alone |", "|---|---|---:|---:|"]
    fb = {}
    for s in r["feedback"]:
        fb[(s["feedback"], s["compressor"])] = s
        if "error" in s:
            lines.append(f"| {s['feedback']} | `{s['compressor']}` | error: {s['error']} | |")
            continue
        over = f"{s['over_topk']:.2f}x" if "over_topk" in s else "-"
        lines.append(f"| {s['feedback']} | `{s['compressor']}` | {s['step_seconds'] * 1e3:.3f} ms | {over} |")
    red = r.get("reducer", [])
    if red:
        lines += ["", "| Reducer on device, 1 NCCL rank | compressor + feedback | allreduce | over the EF21 step |",
                  "|---|---|---:|---:|"]
        for a in red:
            what = f"`{a['compressor']}` + {a['feedback']}"
            if "error" in a:
                lines.append(f"| {a['algorithm']} | {what} | error: {a['error']} | |")
                continue
            over = f"{a['over_ef21_step']:.2f}x" if "over_ef21_step" in a else "-"
            lines.append(f"| {a['algorithm']} | {what} | {a['allreduce_seconds'] * 1e3:.3f} ms | {over} |")
    beside = [c for c in r["compressors"] if "decompress_seconds" in c and any(
        k.startswith("decompress_beside") for k in c)]
    if beside:
        lines += ["", "Decompress with the checksum beside the decode (an experiment: a second stream, the checksum on "
                  "a share of the multiprocessors: `EFCOMM_CUDA_OVERLAP_CHECKSUM=1` by bytes moved, `=0.25` a "
                  "quarter); % of the copy bandwidth:", "",
                  "| compressor | decompress | % | beside, by bytes | % | beside, a quarter | % |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for c in beside:
            moved = r["size"] * 4 + c["message_bytes"]

            def cell(key):
                if f"{key}_seconds" not in c:
                    return f"error: {c.get(key + '_error', 'not run')} | "
                t = c[f"{key}_seconds"]
                return f"{t * 1e3:.3f} ms | {100 * moved / t / 1e9 / copy:.0f} % "

            lines.append(f"| `{c['spec']}` | {cell('decompress')}| {cell('decompress_beside')}| "
                         f"{cell('decompress_beside_quarter')}|")
    lines += scaling_lines(r, copy)
    if args.trace:
        try:
            lines += breakdown_lines(trace_breakdown(args.trace), copy)
        except OSError as e:
            lines += ["", f"No time breakdown: {e}."]
    lines.append("")
    if topk_sel is not None:
        lines.append(f"`torch.topk` (k = {k:,}, unsorted): {topk_sel * 1e3:.3f} ms on |x| computed beforehand, "
                     f"{topk_abs * 1e3:.3f} ms for `torch.topk(x.abs(), k)`.")
    else:
        lines.append(f"`torch.topk` not measured: {why}.")
    targets = []

    def target(name, ok, shown):
        targets.append((name, shown, "PASS" if ok else ("FAIL" if ok is not None else "SKIP")))

    for spec in ("sign", "quant:bits=8,block=256", "cast:dtype=bf16"):
        c = by.get(spec, {})
        if "compress_gbps" in c:
            lo = min(c["compress_gbps"], c["decompress_gbps"]) / copy
            target(f"`{spec}` compress and decompress >= 60 % of copy bandwidth", lo >= 0.6,
                   f"compress {100 * c['compress_gbps'] / copy:.0f} %, decompress {100 * c['decompress_gbps'] / copy:.0f} %")
        else:
            target(f"`{spec}` compress and decompress >= 60 % of copy bandwidth", None, c.get("error", "not run"))
    t = by.get("topk:ratio=0.01", {})
    if "compress_seconds" in t and topk_sel is not None:
        target("TopK 1 % at least 2x faster than torch.topk", topk_sel / t["compress_seconds"] >= 2,
               f"{topk_sel / t['compress_seconds']:.2f}x ({t['compress_seconds'] * 1e3:.3f} ms vs {topk_sel * 1e3:.3f} ms)")
    else:
        target("TopK 1 % at least 2x faster than torch.topk", None, t.get("error", why or "not run"))
    e = fb.get(("ef21", "topk:ratio=0.01"), {})
    if "over_topk" in e:
        target("EF21 step within 1.5x of TopK alone", e["over_topk"] <= 1.5, f"{e['over_topk']:.2f}x")
    else:
        target("EF21 step within 1.5x of TopK alone", None, e.get("error", "not run"))
    lines += ["", "| target (issue 8) | measured | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets]
    text = "\n".join(lines)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if all(c != "FAIL" for _, _, c in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
