#!/usr/bin/env python3
"""How much of a gradient TopK 1 % and a rank-r approximation keep, on the model of ``efcomm bench
ddp`` (the MLP 64-384-384-10 on scikit-learn's digits, SGD lr 0.05 with momentum 0.9, 32 images
per step, one process): the fraction of the squared Frobenius norm of each weight matrix's
gradient in its k = 1 % largest entries, and in its best rank-1 and rank-2 approximations (the
leading singular values, what PowerSGD's power iteration approaches).

    python bench/gradient_energy.py [--steps 5,50,100,200] [--seed 0]

A rank-r PowerSGD message of an m x n matrix holds r (m + n) values, TopK's 2 k (values and
indices); on the 384 x 384 layer rank 2 sends 1,536 values and TopK 1 % 1,474 values + 1,474
indices. Results and their reading: docs/benchmarks.md, "Reading the DDP table".
"""

from __future__ import annotations

import argparse


def main() -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from efcomm._ddp_train import TrainConfig, build_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="5,50,100,200", help="steps at which to look (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    steps = sorted(int(s) for s in args.steps.split(","))
    cfg = TrainConfig(seed=args.seed)
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x_train, _, y_train, _ = train_test_split((x / 16.0).astype(np.float32), y, test_size=cfg.test_fraction,
                                              random_state=cfg.seed, stratify=y)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.hidden)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    rng = np.random.default_rng(cfg.seed)
    print("| step | weight | TopK 1 % | rank 1 | rank 2 |")
    print("|---:|---|---:|---:|---:|")
    for step in range(steps[-1] + 1):
        idx = torch.from_numpy(rng.choice(len(y_train), cfg.batch, replace=False))
        opt.zero_grad()
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        if step in steps:
            for name, prm in model.named_parameters():
                if prm.dim() < 2:
                    continue
                g = prm.grad.double()
                total = float((g ** 2).sum())
                k = max(1, int(0.01 * g.numel()))
                top = float((torch.topk(g.abs().flatten(), k).values ** 2).sum()) / total
                sv = torch.linalg.svdvals(g) ** 2
                print(f"| {step} | {name} {tuple(g.shape)} | {top:.2f} | {float(sv[:1].sum()) / total:.2f} | "
                      f"{float(sv[:2].sum()) / total:.2f} |")
        opt.step()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
