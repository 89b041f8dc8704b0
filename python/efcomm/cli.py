"""The ``efcomm`` command line: ``efcomm info | demo | bench | sim | plan | doctor``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from .errors import InvalidArgument, _one_line


def _cmd_info(args) -> int:
    import efcomm as ef

    info = ef.build_info()
    runtime = _runtime(info)
    compressors = ef._core.compressor_names()
    if args.json:
        print(json.dumps({**info, **runtime, "compressors": compressors}, indent=2))
        return 0
    rows = list(info.items())
    if "gpu" in runtime:
        g = runtime["gpu"]
        rows.append(("gpu", f"{g['device_count']} CUDA device(s)" if g["available"] else f"none usable ({g['reason']})"))
    if "libnccl" in runtime:
        n = runtime["libnccl"]
        rows.append(("libnccl", f"{n['version']} ({n['path']})" if n["version"] else
                     f"not loadable: {n['error'].split('; ')[0]}"))
    for name, uses, install in (("mpi4py", "ef.Communicator.mpi", "mpi4py mpich"),
                                ("torch", "ef.torch.ddp_hook, ef.Communicator.torch", "torch")):
        v = runtime[name]["version"]
        rows.append((name, f"{v} ({uses})" if v else f"not installed (pip install {install}: {uses})"))
    rows.append(("compressors", ", ".join(compressors)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _runtime(info: dict) -> dict:
    """What this machine gives the build: "gpu" (CUDA devices: available, device_count, reason),
    "libnccl" (the library that would be loaded: version and path, or the error), and the
    installed versions of the packages the MPI and torch integrations need ("mpi4py", "torch":
    version or None; read from their metadata, not imported)."""
    from importlib import metadata

    from . import _core
    from .comm import _nccl_wheel_library
    from .errors import BackendUnavailable

    out = {}
    for name in ("mpi4py", "torch"):
        try:
            out[name] = {"version": metadata.version(name)}
        except metadata.PackageNotFoundError:
            out[name] = {"version": None}
    if info["cuda"]:
        cuda = _core._cuda_info()
        out["gpu"] = {"available": bool(cuda["available"]), "device_count": int(cuda["device_count"]),
                      "reason": cuda["reason"]}
    if info["nccl"]:
        try:
            v = _core._nccl_version(_nccl_wheel_library())
            out["libnccl"] = {"version": f"{v // 10000}.{v // 100 % 100}.{v % 100}", "path": _core._nccl_library(),
                              "error": None}
        except BackendUnavailable as e:
            out["libnccl"] = {"version": None, "path": None, "error": str(e)}
    return out


def _summary(module) -> str:
    """A module's first docstring paragraph, as one line of plain text: a subcommand's --help
    description (``x`` and :mod:`x` read x: argparse shows the reST markup as typed)."""
    text = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
    return re.sub(r"(?::\w+:)?(`+)(.+?)\1", r"\2", text)


#: options that make a command's problem smaller, in the order the out-of-memory message names them
_SIZE_OPTIONS = ("dim", "samples", "clients", "size", "sizes", "scaling_size", "topology", "ranks", "instances")


def _smaller(args) -> str:
    """What to ask for after running out of memory: the options of the command that ran."""
    options = [f"--{o.replace('_', '-')}" for o in _SIZE_OPTIONS if hasattr(args, o)]
    return f"ask for a smaller problem ({', '.join(options)})" if options else "ask for a smaller problem size"


def _cmd_bench(args) -> int:
    return args.bench_main(args)


def _cmd_sim(args) -> int:
    from .sim import cli as sim_cli

    return sim_cli.main(args)


def build_parser() -> argparse.ArgumentParser:
    from . import demo as demo_module

    p = argparse.ArgumentParser(prog="efcomm", description="Communication-efficient distributed training.")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print the build configuration", epilog="exit status: 0 done")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(fn=_cmd_info)

    demo = sub.add_parser("demo", help="the main job: DDP training uncompressed, with TopK + EF21 and TopK alone",
                          description=_summary(demo_module),
                          epilog="exit status: 0 done, 1 a method failed (its row says why), 2 bad input")
    demo_module.add_arguments(demo)
    demo.set_defaults(fn=demo_module.main)

    bench = sub.add_parser("bench", help="run a benchmark")
    which = bench.add_subparsers(dest="what", required=True, metavar="{compressors,feedback,allreduce,ddp,faults,plan}")
    from .bench import allreduce as bench_allreduce, compressors as bench_compressors, feedback as bench_feedback
    from .bench import ddp as bench_ddp, faults as bench_faults, plan as bench_plan
    for name, module, text in (("compressors", bench_compressors, "compress/decompress throughput of every compressor"),
                               ("feedback", bench_feedback, "error-feedback step throughput against the compressor alone"),
                               ("allreduce", bench_allreduce, "Reducer.allreduce against MPI_Allreduce between processes"),
                               ("ddp", bench_ddp, "efcomm's DDP hook against DDP, PowerSGD and fp16 hooks in training"),
                               ("faults", bench_faults, "fault-injection campaign: hangs, crashes, stragglers, slow links"),
                               ("plan", bench_plan, "traffic planning: optimality against the bound, completion time, planner speed")):
        b = which.add_parser(name, help=text, description=_summary(module),
                             epilog="exit status: 0 done, 1 a target missed (with --check), 2 bad input")
        module.add_arguments(b)
        b.set_defaults(fn=_cmd_bench, bench_main=module.main)

    sim = sub.add_parser("sim", help="simulate error feedback x compressors on n clients",
                         epilog="exit status: 0 done, 2 bad input",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from .sim import cli as sim_cli
    sim_cli.add_arguments(sim)
    sim.set_defaults(fn=_cmd_sim)

    from . import plan as plan_module
    plan = sub.add_parser("plan", help="plan a collective's paths on a fabric: ecmp, balanced and split against the bound",
                          description=plan_module.DESCRIPTION, epilog="exit status: 0 done, 2 bad input")
    plan_module.add_arguments(plan)
    plan.set_defaults(fn=plan_module.main)

    from . import doctor as doctor_module
    doctor = sub.add_parser("doctor", help="merge the ranks' flight records (ef.health dumps) into a verdict",
                            description=doctor_module.DESCRIPTION,
                            epilog="exit status: 0 no fault found, 1 a fault found, 2 bad input")
    doctor_module.add_arguments(doctor)
    doctor.set_defaults(fn=doctor_module.main)
    return p


def _prog(args) -> str:
    return " ".join(["efcomm", args.command] + ([args.what] if args.command == "bench" else []))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.fn(args)
        sys.stdout.flush()  # here, not at exit: a reader that left (a closed pipe) shows now
        return status
    except InvalidArgument as e:
        # Bad input that shows only once the command runs (a compressor spec, a stepsize the
        # compressor cannot give, an output path): one line and status 2, as argparse gives for what
        # it checks itself, not a traceback. plan and doctor report theirs the same way themselves.
        print(f"{_prog(args)}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"{_prog(args)}: error: out of memory ({_one_line(e) or 'an allocation failed'}): {_smaller(args)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of the output left (`efcomm ... --json | head`): no traceback, and none at
        # exit either when Python flushes stdout into the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a command the signal ended


if __name__ == "__main__":
    sys.exit(main())
