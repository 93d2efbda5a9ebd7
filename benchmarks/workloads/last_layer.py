"""Last-layer DPO: the one-read step against the autograd step (two reads of G).

135 behaviors x 1000 statements x 1000 steps at d = 576 (full size; target 15 s
on 2 CPU cores) on synthetic embeddings with the real width and a shared mean
direction like real last hidden states. Both sides run the library's own loop
and step (tracking every ``log_every`` steps) with the same fixed step size; they
differ only in the policy's ``one_pass`` switch. The limit is one read of the
embedding tensor per step at the measured read bandwidth.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from benchmarks._context import Context
from benchmarks._report import Row
from benchmarks._timing import alternate
from prefdyn.policies import LastLayerData
from prefdyn.training import TrainConfig
from prefdyn.training.loop import train
from prefdyn.training.runner import setup_last_layer


QUICK, FULL = (135, 200, 576, 50), (135, 1000, 576, 1000)  # (behaviors, statements, d, steps)


def synthetic(B: int, N: int, d: int, device: torch.device, seed: int = 0) -> LastLayerData:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=gen) * 3.0
    direction = torch.randn(B, 1, d, generator=gen)
    y = (torch.arange(N) % 2 == 0).expand(B, N).clone()
    G = torch.randn(B, N, d, generator=gen) + mean + torch.where(y, 0.5, -0.5)[..., None] * direction
    data = LastLayerData(G, y, torch.ones(B, N, dtype=torch.bool), torch.zeros(B, N, dtype=torch.long))
    return LastLayerData(*(t.to(device) for t in (data.embeddings, data.prefers_yes, data.mask, data.groups)))


def _trainer(W0: torch.Tensor, data: LastLayerData, cfg: TrainConfig, one_pass: bool):
    names = [f"b{i}" for i in range(data.n_problems)]

    def run() -> torch.Tensor:
        setup = setup_last_layer(W0, data, cfg, names=names)
        # The runner turns the one-read path on; the anchor turns it off.
        setup.policy.one_pass = setup.objective if one_pass else None
        train(setup.policy, setup.objective, setup.batches, setup.optimizer, steps=cfg.steps,
              callbacks=[setup.tracker])
        return setup.policy.W.detach().clone()

    return run


def run(ctx: Context) -> Row:
    ctx.fp32_only("last_layer")
    B, N, d, steps = QUICK if ctx.quick else FULL
    data = synthetic(B, N, d, ctx.device)
    W0 = (torch.randn(2, d, generator=torch.Generator().manual_seed(1)) * 0.02).to(ctx.device)
    # A fixed step size (the curvature rule's power iteration is setup, not the step).
    cfg = TrainConfig(steps=steps, lr=0.05, log_every=100, eval_every=steps)
    sides = {"one-pass": True, "autograd": False}
    warm = replace(cfg, steps=2)  # first-call costs (lazy imports, thread pool) out of the timing
    for one_pass in sides.values():
        _trainer(W0, data, warm, one_pass)()
    t = alternate({name: _trainer(W0, data, cfg, one_pass) for name, one_pass in sides.items()},
                  repeats=ctx.repeats, device=ctx.device, warmup=False)
    fused, plain = t["one-pass"], t["autograd"]
    diff = float((fused.result - plain.result).abs().max())
    g_bytes = data.embeddings.numel() * data.embeddings.element_size()
    one_read_s = g_bytes / (ctx.limits.read_gbs * 1e9)
    step_s = fused.median / steps
    return Row(
        workload=f"last-layer DPO {B}x{N}x{steps} d={d}", unit="step", units=steps,
        prefdyn_s=fused.median, prefdyn_peak_mb=fused.peak_bytes / 1e6,
        anchor="autograd step (reads G twice)", anchor_s=plain.median, anchor_peak_mb=plain.peak_bytes / 1e6,
        limit=f"read {ctx.limits.read_gbs:.1f} GB/s", share=one_read_s / step_s,
        noise=max(fused.spread, plain.spread),
        note=(f"step {step_s * 1e3:.1f} ms = {step_s / one_read_s:.2f}x one read of G "
              f"({g_bytes / 1e6:.0f} MB in {one_read_s * 1e3:.1f} ms); run {fused.median:.1f} s"
              + ("" if ctx.quick else " (target 15 s)") + f"; max |W one-pass - W autograd| {diff:.1e}"),
        extra={"step_ms": step_s * 1e3, "one_read_ms": one_read_s * 1e3, "max_weight_diff": diff})
