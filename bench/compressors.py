#!/usr/bin/env python3
"""Compressor throughput benchmark, the same code as ``efcomm bench compressors``.

    python bench/compressors.py                                   # table on stdout
    python bench/compressors.py --write-docs docs/benchmarks.md   # also refresh the docs table
    python bench/compressors.py --only topk,sign --repeats 10 --json

Needs efcomm installed (``pip install .``); ``--help`` lists every option.
"""

import sys

from efcomm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "compressors", *sys.argv[1:]]))
