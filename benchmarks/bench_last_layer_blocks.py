"""The one-pass last-layer step's block size against the autograd step (one step, fwd + bwd).

The one-pass path (:mod:`prefdyn.policies._fused_last_layer`) walks ``G`` in blocks of
``block_bytes`` and runs ~20 small ops and one ``autograd.grad`` of the objective per
block; the autograd step is two whole-tensor products. This script times one training
step's forward and backward of each at the full size (135 x 1000 x 576, G = 311 MB),
the sides taking turns, to show where the per-block overhead goes as blocks grow:

    python benchmarks/bench_last_layer_blocks.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prefdyn.losses import get_loss
from prefdyn.losses.types import PreferenceLogps
from prefdyn.policies._fused_last_layer import one_pass_logps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--blocks-mb", default="2,8,32,400", help="block sizes of the one-pass sides")
    args = p.parse_args()
    torch.manual_seed(0)
    B, N, d = 135, 1000, 576
    G = torch.randn(B, N, d) + torch.randn(d) * 3
    prefers_yes = (torch.arange(N) % 2 == 0).expand(B, N).clone()
    mask = torch.ones(B, N, dtype=torch.bool)
    W = (torch.randn(B, 2, d) * 0.02).requires_grad_()
    ref = torch.zeros(B, N)
    objective = get_loss("dpo", beta=0.1)
    weight = mask.float() / mask.float().sum(-1, keepdim=True)

    def autograd_step() -> None:
        logits = torch.bmm(W, G.transpose(1, 2))  # (B, 2, N)
        lse = torch.logsumexp(logits, 1)
        yes, no = logits[:, 0] - lse, logits[:, 1] - lse
        logps = PreferenceLogps(torch.where(prefers_yes, yes, no), torch.where(prefers_yes, no, yes), ref, ref)
        W.grad = None
        (objective(logps).losses * weight).sum().backward()

    def one_pass(block_bytes: int):
        def step() -> None:
            logps = one_pass_logps(W, G, prefers_yes, mask, None, ref, ref, rows=(0, 1),
                                   objective=objective, block_bytes=block_bytes)
            W.grad = None
            (objective(logps).losses * weight).sum().backward()
        return step

    sides = {"autograd": autograd_step,
             **{f"one-pass {mb} MB blocks": one_pass(int(mb) << 20) for mb in args.blocks_mb.split(",")}}
    for step in sides.values():
        step()
    seconds = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, step in sides.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    print(f"{B}x{N}x{d}, G {G.numel() * 4 / 1e6:.0f} MB, {torch.get_num_threads()} threads")
    for name, s in seconds.items():
        print(f"  {name:24s} median {statistics.median(s) * 1e3:7.1f} ms   min {min(s) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
