"""Runs DDP scenarios with efcomm's comm hook on n gloo ranks (torch.multiprocessing, spawn) and
writes each rank's results to OUT/<scenario>-<rank>.pt; used by tests/python/test_torch_hook.py.

    python tests/torch/ddp_worker.py SCENARIO[@ALGORITHM] N OUT [PORT]

ALGORITHM is the hook's (default allgather), for the scenarios that make one hook for all ranks.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import efcomm as ef

STEPS = 6


def model_and_data(rank, dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 10)).to(dtype)
    g = torch.Generator().manual_seed(100 + rank)
    batches = [(torch.randn(16, 64, generator=g).to(dtype), torch.randint(0, 10, (16,), generator=g))
               for _ in range(2 * STEPS)]
    return model, batches


def train(ddp, opt, batches, steps, accumulate=1):
    losses = []
    for i in range(steps):
        for j in range(accumulate):
            x, y = batches[(i * accumulate + j) % len(batches)]
            if j < accumulate - 1:
                with ddp.no_sync():
                    torch.nn.functional.cross_entropy(ddp(x).float(), y).backward()
            else:
                loss = torch.nn.functional.cross_entropy(ddp(x).float(), y)
                loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def topk_hook(algorithm="allgather", feedback="ef21"):
    """The TopK 5 % hook from the first step: (state, hook)."""
    return ef.torch.ddp_hook("topk:ratio=0.05", feedback, start_iter=0, min_compress_numel=100, algorithm=algorithm)


def topk_hooked(rank, algorithm="allgather", feedback="ef21"):
    """The test model under DDP with topk_hook: (model, batches, ddp, hook state)."""
    model, batches = model_and_data(rank)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state, hook = topk_hook(algorithm, feedback)
    ddp.register_comm_hook(state, hook)
    return model, batches, ddp, state


def error_of(fn):
    """None when fn() returns, else its error as "Type: message" (DDP re-raises a hook's error)."""
    try:
        fn()
        return None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


def backward(ddp, batch):
    x, y = batch
    torch.nn.functional.cross_entropy(ddp(x), y).backward()


def params(model):
    wide = next(model.parameters()).dtype == torch.float64
    return torch.cat([p.detach().to(torch.float64 if wide else torch.float32).flatten() for p in model.parameters()])


def run(rank, n, scenario, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=n)
    try:
        result = scenario_result(rank, scenario, out)
        torch.save(result, os.path.join(out, f"{scenario}-{rank}.pt"))
        dist.barrier()  # the DDP models of the scenario are gone: no rank tears down mid-collective
    finally:
        dist.destroy_process_group()
    # torch 2.13 aborts now and then ("terminate called without an active exception") while
    # tearing down a process that ran DDP with a Python comm hook over gloo, efcomm or not (seen
    # with a hook of plain dist.all_reduce: 1 run in 16); the results are saved, so skip teardown.
    os._exit(0)


class ComplexModel(torch.nn.Module):
    """A complex weight beside real ones: DDP holds its gradient as the real view (twice the
    elements), which the hook must reduce whole."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(16, 8, dtype=torch.complex64) / 4)
        self.out = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.out((self.w @ x.to(torch.complex64).T).abs().T)


def scenario_result(rank, scenario, out):
    result = {}
    scenario, _, algorithm = scenario.partition("@")
    algorithm = algorithm or "allgather"
    if True:  # noqa
        if scenario in ("complex_plain", "complex_identity", "complex_topk"):
            model = ComplexModel()
            g = torch.Generator().manual_seed(100 + rank)
            batches = [(torch.randn(16, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
                       for _ in range(2 * STEPS)]
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            if scenario != "complex_plain":
                compressor = "identity" if scenario == "complex_identity" else "topk:ratio=0.25"
                state, hook = ef.torch.ddp_hook(compressor, "none" if compressor == "identity" else "ef21",
                                                start_iter=0, min_compress_numel=0, algorithm=algorithm)
                ddp.register_comm_hook(state, hook)
            train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), batches, STEPS)
            result["params"] = torch.cat([torch.view_as_real(p.detach()).flatten() if p.is_complex()
                                          else p.detach().flatten() for p in model.parameters()])
        elif scenario in ("plain", "identity", "plain_f64", "identity_f64"):
            model, batches = model_and_data(rank, torch.float64 if scenario.endswith("_f64") else torch.float32)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            if scenario.startswith("identity"):
                state, hook = ef.torch.ddp_hook("identity", "none", start_iter=0, min_compress_numel=0,
                                                algorithm=algorithm)
                ddp.register_comm_hook(state, hook)
                result["stats"] = state.stats
            train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), batches, STEPS)
            result["params"] = params(model)
        elif scenario in ("topk", "topk_bf16", "topk_accumulate", "topk_ef21w", "powersgd"):
            dtype = torch.bfloat16 if scenario == "topk_bf16" else torch.float32
            model, batches = model_and_data(rank, dtype)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            if scenario == "topk_ef21w":  # EF21-W, rank i weighted 1/4, 3/4 (n = 2)
                state, hook = ef.torch.ddp_hook("topk:ratio=0.05", "ef21w", start_iter=2, min_compress_numel=100,
                                                weights=[0.25, 0.75], algorithm=algorithm)
            elif scenario == "powersgd":  # with @allreduce: the distributed rounds (P summed, then Q)
                state, hook = ef.torch.ddp_hook("powersgd:rank=2", "ef14", start_iter=1, min_compress_numel=100,
                                                algorithm=algorithm)
            else:
                state, hook = ef.torch.ddp_hook("topk:ratio=0.05", "ef21", start_iter=2, min_compress_numel=100,
                                                algorithm=algorithm)
            ddp.register_comm_hook(state, hook)
            result["losses"] = train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), batches, STEPS,
                                     accumulate=3 if scenario == "topk_accumulate" else 1)
            result["params"] = params(model)
            result["stats"] = state.stats
            result["state"] = state
        elif scenario in ("resume_a", "resume_b"):
            # a: 3 steps, checkpoint (model, optimizer, hook), 3 more; b: load the checkpoint, 3 steps.
            model, batches = model_and_data(rank)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            state, hook = ef.torch.ddp_hook("topk:ratio=0.05", "ef21", start_iter=1, min_compress_numel=100,
                                            algorithm=algorithm)
            ddp.register_comm_hook(state, hook)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
            ckpt = os.path.join(out, f"ckpt-{rank}.pt")
            if scenario == "resume_a":
                train(ddp, opt, batches, 3)
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()}, ckpt)
            else:
                saved = torch.load(ckpt)  # weights_only=True, torch's default: plain data and tensors
                model.load_state_dict(saved["model"])
                opt.load_state_dict(saved["opt"])
                state.load_state_dict(saved["hook"])
            train(ddp, opt, batches[3:], 3)
            result["params"] = params(model)
            saved = state.state_dict()
            result["keys"] = sorted(saved["slots"]) or sorted(v for k, v in saved["reducer"]["meta"].items()
                                                             if k.endswith("/key"))
        elif scenario == "nonfinite":
            model, batches, ddp, state = topk_hooked(rank, algorithm)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            x, y = batches[0]
            if rank == 1:
                x = x.clone()
                x[0, 0] = float("nan")
            import warnings
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.nn.functional.cross_entropy(ddp(x), y).backward()
            result["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
            # The step is skipped (its gradients are NaN on every rank); training goes on.
            result["grads_finite"] = [bool(torch.isfinite(p.grad).all()) for p in model.parameters()]
            opt.zero_grad()
            result["losses"] = train(ddp, opt, batches[1:], 2)
            result["params"] = params(model)
            result["stats"] = state.stats
        elif scenario in ("rank1_plain", "rank1_powersgd"):
            # One sample per rank: a Linear layer's weight gradient is the rank-1 matrix d x^T,
            # which PowerSGD of rank 1 factors exactly when it sees the 10 x 64 matrix (a flat
            # view reshaped to 26 x 25 is no rank-1 matrix).
            torch.manual_seed(0)
            model = torch.nn.Linear(64, 10)
            g = torch.Generator().manual_seed(100 + rank)
            x, y = torch.randn(1, 64, generator=g), torch.randint(0, 10, (1,), generator=g)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            if scenario == "rank1_powersgd":
                state, hook = ef.torch.ddp_hook("powersgd:rank=1", "ef14", start_iter=0, min_compress_numel=0,
                                                algorithm=algorithm)
                ddp.register_comm_hook(state, hook)
                result["stats"] = state.stats
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            result["grad"] = model.weight.grad.detach().clone()
        elif scenario == "damaged_checkpoint":
            # Rank 1's checkpoint lost a tensor of its reducer state. Loaded under the process
            # group: the error is load_state_dict's, naming the entry. Loaded before the group
            # existed (dist.is_initialized() False then): at the first bucket rank 1 raises its
            # error and rank 0 MismatchError, neither waits for the other.
            from unittest import mock

            model, batches, ddp, state = topk_hooked(rank, algorithm)
            train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), batches, 2)
            saved = state.state_dict()
            result["deleted"] = sorted(saved["reducer"]["tensors"])[0]
            if rank == 1:
                del saved["reducer"]["tensors"][result["deleted"]]
            fresh, hook = topk_hook(algorithm)
            result["load_error"] = error_of(lambda: fresh.load_state_dict(saved))
            with mock.patch.object(ef.torch.dist, "is_initialized", return_value=False):
                fresh.load_state_dict(saved)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            ddp.register_comm_hook(fresh, hook)
            result["error"] = error_of(lambda: backward(ddp, batches[2]))
        elif scenario == "config_mismatch":
            # Rank 1's hook uses another feedback method: every rank raises MismatchError at the
            # first bucket, before any gradient travels.
            _, batches, ddp, _ = topk_hooked(rank, feedback="ef21" if rank == 0 else "ef14")
            result["error"] = error_of(lambda: backward(ddp, batches[0]))
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    return result


if __name__ == "__main__":
    scenario, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 29500
    mp.start_processes(run, args=(n, scenario, out, port), nprocs=n, start_method="spawn")
