"""Last-layer DPO throughput: 135 behaviors x 1000 statements x 1000 steps at d = 576.

Embeddings are synthetic (the real width; a shared mean direction like real last
hidden states). The run goes through the library's own path (fit_last_layer: the
one training step and loop, tracking every --log-every steps). Target: 15 s or
less on 2 CPU cores.

    python benchmarks/bench_last_layer.py [--behaviors 135 --statements 1000 --steps 1000]
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from prefdyn.policies import LastLayerData
from prefdyn.training import TrainConfig, fit_last_layer

TARGET_SECONDS = 15.0


def synthetic(B: int, N: int, d: int, seed: int = 0) -> LastLayerData:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=gen) * 3.0
    direction = torch.randn(B, 1, d, generator=gen)
    y = (torch.arange(N) % 2 == 0).expand(B, N).clone()
    G = torch.randn(B, N, d, generator=gen) + mean + torch.where(y, 0.5, -0.5)[..., None] * direction
    return LastLayerData(G, y, torch.ones(B, N, dtype=torch.bool), torch.zeros(B, N, dtype=torch.long))


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--behaviors", type=int, default=135)
    p.add_argument("--statements", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args()
    B, N, d = args.behaviors, args.statements, args.d
    data = synthetic(B, N, d)
    W0 = torch.randn(2, d, generator=torch.Generator().manual_seed(1)) * 0.02
    names = [f"b{i}" for i in range(B)]
    rows = []
    for label, cfg in [
        ("SGD, lr from curvature", TrainConfig(steps=args.steps, log_every=args.log_every, eval_every=args.steps)),
        ("AdamW", TrainConfig(steps=args.steps, optimizer="adamw", log_every=args.log_every, eval_every=args.steps)),
    ]:
        t = time.perf_counter()
        run = fit_last_layer(W0, data, cfg, names=names)
        wall = time.perf_counter() - t
        final = sum(run.history.last("loss").values()) / B
        rows.append((label, wall, wall / args.steps * 1e3, final))
    gbytes = 2 * data.embeddings.numel() * 4 / 1e9  # G read forward + backward
    table = Table(title=f"Last-layer DPO: {B} behaviors x {N} statements x {args.steps} steps, d={d}, "
                        f"{torch.get_num_threads()} threads, matmul {matmul_gflops():.0f} GFLOP/s")
    for col in ("run", "wall s", "ms/step", "G traffic GB/s", "mean final loss", f"<= {TARGET_SECONDS:.0f} s"):
        table.add_column(col)
    for label, wall, ms, final in rows:
        table.add_row(label, f"{wall:.1f}", f"{ms:.1f}", f"{gbytes / (ms / 1e3):.1f}", f"{final:.4f}",
                      "yes" if wall <= TARGET_SECONDS else "no")
    Console().print(table)


if __name__ == "__main__":
    main()
