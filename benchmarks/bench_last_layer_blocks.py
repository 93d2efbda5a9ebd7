"""The one-read last-layer step against the autograd step (one step, fwd + bwd).

The one-read path (:mod:`prefdyn.policies._fused_last_layer`, its loop in
:mod:`prefdyn.policies._margin_kernel`) computes each embedding row's logits, loss
gradient and weight-gradient contribution while the row is in cache; the autograd step
is two whole-tensor products. This script times one training step's forward and
backward of each at the full size (135 x 1000 x 576, G = 311 MB), the sides taking
turns, beside a plain read of G (the limit):

    python benchmarks/bench_last_layer_blocks.py --repeats 3
    python benchmarks/bench_last_layer_blocks.py --primitives   # the products it is made of
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prefdyn.losses import get_loss
from prefdyn.losses.types import PreferenceLogps
from prefdyn.policies._fused_last_layer import one_pass_logps


def primitives(G: torch.Tensor, W: torch.Tensor, s: torch.Tensor) -> dict:
    """The products one step needs, each over the whole ``G``: a plain read (the limit),
    the forward ``G W^T`` and the backward ``s G`` as ``bmm`` (MKL), and both as one
    oneDNN product per problem on a copy of ``G`` prepacked once (G is fixed, so a
    prepacked layout would be paid for once), the per-problem loop being the block loop
    a step built from library products would run."""
    B = G.shape[0]
    lin = torch.ops.mkldnn._linear_pointwise
    fwd_packed = [torch.ops.mkldnn._reorder_linear_weight(G[b], 2) for b in range(B)]
    bwd_packed = [torch.ops.mkldnn._reorder_linear_weight(G[b].T.contiguous(), 2) for b in range(B)]
    return {"read G once (sum)": lambda: G.sum(),
            "forward bmm(G, W^T)": lambda: torch.bmm(G, W.transpose(1, 2)),
            "backward bmm(s, G)": lambda: torch.bmm(s, G),
            "forward oneDNN a problem": lambda: [lin(W[b], fwd_packed[b], None, "none", [], "")
                                                 for b in range(B)],
            "backward oneDNN a problem": lambda: [lin(s[b], bwd_packed[b], None, "none", [], "")
                                                  for b in range(B)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--primitives", action="store_true",
                   help="time the products a step is made of instead (see primitives())")
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

    def one_read_step() -> None:
        logps = one_pass_logps(W, G, prefers_yes, mask, None, ref, ref, rows=(0, 1), objective=objective)
        W.grad = None
        (objective(logps).losses * weight).sum().backward()

    sides = {"read G once (sum)": lambda: G.sum(), "autograd": autograd_step, "one read": one_read_step}
    if args.primitives:
        sides = primitives(G, W.detach(), torch.randn(B, 2, N))
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
