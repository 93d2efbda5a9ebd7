"""Benchmark the theory lab's synthetic grid: generation, vectorized training and checks.

Times :func:`prefdyn.experiments.theory.run_theorem_grid` split into its parts
for each ``d`` (sampling the alpha-subexponential laws, the one vectorized
``fit_last_layer`` call for all ``(Delta, alpha)`` points of that ``d``, and the
theorem checks), and prints seconds per part and training steps per second.

    python benchmarks/bench_theory_grid.py --ds 16,64,256 --n 2000 --steps 200
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from rich.console import Console
from rich.table import Table

from prefdyn.diagnostics import check_assumptions, theorem42_constants
from prefdyn.policies import stack_problems
from prefdyn.theory import two_class_law
from prefdyn.tracking.boundary import BoundaryRecorder
from prefdyn.training import TrainConfig, fit_last_layer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ds", default="16,64,256")
    ap.add_argument("--deltas", default="0.1,0.25,0.4")
    ap.add_argument("--alphas", default="2,1,0.5")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    specs = [(float(D), float(a)) for D in args.deltas.split(",") for a in args.alphas.split(",")]
    table = Table(title=f"theory grid: {len(specs)} points per d, n = {args.n}, {args.steps} steps")
    for col in ("d", "sample (s)", "train (s)", "steps/s", "checks (s)"):
        table.add_column(col, justify="right")
    gen = torch.Generator().manual_seed(0)
    for d in (int(x) for x in args.ds.split(",")):
        t0 = time.perf_counter()
        data = [two_class_law(d, Delta, alpha=alpha, generator=gen).sample(args.n, generator=gen)
                for Delta, alpha in specs]
        t1 = time.perf_counter()
        cfg = TrainConfig(beta=1 / math.sqrt(d), steps=args.steps, lr_safety=0.1, log_every=2, eval_every=10)
        run = fit_last_layer(torch.zeros(2, d), stack_problems([g.float() for g, _ in data], [y for _, y in data]),
                             cfg, names=[str(s) for s in specs], callbacks=[BoundaryRecorder(2)])
        t2 = time.perf_counter()
        for g, y in data:
            rep = check_assumptions(g, y)
            theorem42_constants(g, y, beta=cfg.beta, lr=run.lr, stats=rep.stats)
        t3 = time.perf_counter()
        table.add_row(str(d), f"{t1 - t0:.2f}", f"{t2 - t1:.2f}", f"{args.steps / (t2 - t1):.0f}", f"{t3 - t2:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
