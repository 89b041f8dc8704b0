"""Recovery from a dead rank: checkpoint, detect, relaunch, resume bit-identically.

    python examples/recovery.py [--ranks 4] [--steps 60] [--every 10] [--kill-rank 2] [--kill-step 37]

Run as one process, it is the launcher; it starts three MPI jobs of itself (mpiexec -n RANKS):
  1. the reference: STEPS steps of data-parallel least squares, uninterrupted;
  2. the same job, in which rank KILL_RANK kills itself (SIGKILL) at step KILL_STEP: every other
     rank's allreduce raises ef.CollectiveTimeout naming it (ef.health.Monitor notices the dropped
     connection within milliseconds), and the ranks leave;
  3. the relaunch: every rank loads the last complete checkpoint (model and Reducer state, written
     every EVERY steps) and trains to STEPS.
and checks that every iterate of jobs 2 and 3 equals the reference's at the same step, bit for
bit. The surviving ranks' flight records of job 2 land in WORKDIR/run/flight: `efcomm doctor` on
them names the dead rank. Needs mpi4py and MPICH (pip install mpi4py mpich).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np

DIM, ROWS = 2000, 64  # model size; rows of data per rank


def data(rank: int):
    """Rank `rank`'s shard: a fixed least-squares problem."""
    rng = np.random.default_rng([7, rank])
    a = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    return a, (a @ np.ones(DIM, np.float32) + rng.standard_normal(ROWS).astype(np.float32))


def save(path: str, payload: dict) -> None:
    with open(path + ".tmp", "wb") as f:
        pickle.dump(payload, f)
    os.replace(path + ".tmp", path)


def rank_main(args) -> int:
    """One rank of a job (under mpiexec)."""
    import efcomm as ef

    comm = ef.Communicator.mpi()
    rank = comm.rank
    mon = ef.health.Monitor(comm, dump_dir=os.path.join(args.workdir, "flight-resumed" if args.resume else "flight"))
    red = ef.Reducer(comm, "topk:ratio=0.05", "ef21", algorithm="allgather")
    a, b = data(rank)
    x, start = np.zeros(DIM, np.float32), 0
    latest = os.path.join(args.workdir, "latest")
    if args.resume and os.path.exists(latest):
        start = int(open(latest).read())
        with open(os.path.join(args.workdir, f"ckpt-{start}-rank{rank}.pkl"), "rb") as f:
            ckpt = pickle.load(f)
        x = ckpt["x"]
        red.load_state_dict(ckpt["reducer"])
    try:
        for step in range(start, args.steps):
            if rank == args.kill_rank and step == args.kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            g = a.T @ (a @ x - b) / ROWS
            x = x - np.float32(0.002) * red.allreduce(g, key="x")
            if rank == 0:  # every iterate's digest, to compare the runs step by step
                with open(os.path.join(args.workdir, "iterates.txt"), "a") as f:
                    f.write(f"{step + 1} {hashlib.sha256(x.tobytes()).hexdigest()}\n")
            if (step + 1) % args.every == 0:
                save(os.path.join(args.workdir, f"ckpt-{step + 1}-rank{rank}.pkl"),
                     {"x": x, "reducer": red.state_dict()})
                comm.barrier()  # every rank has written its part: the checkpoint is complete
                if rank == 0:
                    with open(latest + ".tmp", "w") as f:
                        f.write(str(step + 1))
                    os.replace(latest + ".tmp", latest)
    except ef.CollectiveTimeout as e:
        # One write per line: mpiexec merges the ranks' output, and print's separate newline could
        # land after another rank's line.
        sys.stdout.write(f"rank {rank}: step {step}: {type(e).__name__}: culprits {e.culprits}\n")
        sys.stdout.flush()
        mon.close()
        os._exit(3)  # MPI_Finalize cannot complete with a dead peer
    if rank == 0:
        np.save(os.path.join(args.workdir, "final.npy"), x)
    mon.close()
    return 0


def launch(args, workdir: str, *extra: str) -> subprocess.CompletedProcess:
    mpiexec = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    if mpiexec is None:
        sys.exit("recovery.py: mpiexec not found: pip install mpich mpi4py")
    # -disable-auto-cleanup: a dead rank does not take the others down; the shell that ignores
    # SIGUSR1 takes the signal hydra sends the survivors then (docs/reliability.md, "Launching").
    cmd = [mpiexec, "-disable-auto-cleanup", "-n", str(args.ranks), "sh", "-c", 'trap "" USR1; "$@"', "rank",
           sys.executable, os.path.abspath(__file__),
           "--rank-role", "--workdir", workdir, "--steps", str(args.steps), "--every", str(args.every), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def iterates(workdir: str) -> list:
    """(step, digest of the model after it) pairs rank 0 wrote, in order."""
    with open(os.path.join(workdir, "iterates.txt")) as f:
        return [(int(step), digest) for step, digest in (line.split() for line in f)]


def launcher(args) -> int:
    root = args.workdir or tempfile.mkdtemp(prefix="efcomm-recovery-")
    ref_dir, run_dir = os.path.join(root, "reference"), os.path.join(root, "run")
    for d in (ref_dir, run_dir):
        os.makedirs(d, exist_ok=True)
    print(f"1. reference: {args.ranks} ranks, {args.steps} steps")
    ref = launch(args, ref_dir)
    if ref.returncode != 0:
        print(ref.stdout + ref.stderr)
        return 1
    print(f"2. the same job; rank {args.kill_rank} is killed at step {args.kill_step}")
    crashed = launch(args, run_dir, "--kill-rank", str(args.kill_rank), "--kill-step", str(args.kill_step))
    reports = sorted(line for line in crashed.stdout.splitlines() if "culprits" in line)
    print("\n".join("   " + line for line in reports) or "   (no rank reported a culprit)")
    resumed_from = open(os.path.join(run_dir, "latest")).read() if os.path.exists(os.path.join(run_dir, "latest")) else "0"
    print(f"3. relaunch from the checkpoint of step {resumed_from}")
    again = launch(args, run_dir, "--resume")
    if again.returncode != 0:
        print(again.stdout + again.stderr)
        return 1
    reference = dict(iterates(ref_dir))
    resumed = iterates(run_dir)  # the crashed job's steps, then the relaunch's (the steps after the
    #                              checkpoint twice: both times they must match)
    same = (np.array_equal(np.load(os.path.join(ref_dir, "final.npy")), np.load(os.path.join(run_dir, "final.npy")))
            and len(reference) == args.steps and all(reference[step] == digest for step, digest in resumed))
    named = len(reports) == args.ranks - 1 and all(f"culprits [{args.kill_rank}]" in line for line in reports)
    print(f"every surviving rank named rank {args.kill_rank}: {'yes' if named else 'NO'}")
    print(f"every iterate of both jobs equals the uninterrupted run's, bit for bit ({len(resumed)} compared): "
          f"{'yes' if same else 'NO'}")
    print(f"flight records of job 2: efcomm doctor {os.path.join(run_dir, 'flight')}")
    return 0 if same and named else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    p.add_argument("--kill-rank", type=int, help="default 2 (a rank of a job: none)")
    p.add_argument("--kill-step", type=int, help="default 37")
    p.add_argument("--workdir", help="where checkpoints and flight records go (default: a fresh temporary dir)")
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank-role", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_role:
        return rank_main(args)
    args.kill_rank = 2 if args.kill_rank is None else args.kill_rank
    args.kill_step = 37 if args.kill_step is None else args.kill_step
    if not 0 <= args.kill_rank < args.ranks or not 0 < args.kill_step < args.steps:
        p.error("need 0 <= --kill-rank < --ranks and 0 < --kill-step < --steps")
    return launcher(args)


if __name__ == "__main__":
    sys.exit(main())
