"""The ``efcomm`` command line: ``efcomm info | bench``."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args) -> int:
    import efcomm as ef

    info = ef.build_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        rows = list(info.items()) + [("compressors", ", ".join(ef._core.compressor_names()))]
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
    return 0


def _cmd_bench(args) -> int:
    from .bench import compressors as bench_compressors

    if args.what == "compressors":
        return bench_compressors.main(args)
    raise SystemExit(f"unknown benchmark {args.what!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="efcomm", description="Communication-efficient distributed training.")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print the build configuration")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(fn=_cmd_info)

    bench = sub.add_parser("bench", help="run a benchmark")
    bench.add_argument("what", choices=["compressors"], help="which benchmark")
    from .bench import compressors as bench_compressors
    bench_compressors.add_arguments(bench)
    bench.set_defaults(fn=_cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
