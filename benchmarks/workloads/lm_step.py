"""LM DPO step (full fine-tuning, persona task): prefdyn's packed step against TRL's DPOTrainer.

Each side runs in its own process (see :mod:`benchmarks.workloads.trl_sides`), so
peak memory is that process's maximum resident set; the sides take turns, one
round per repeat. TRL is the optional ``[bench]`` extra: without it the row keeps
prefdyn's figures and says so. The limit is the measured fp32 matmul rate; the
step's FLOPs are counted as in ``trl_sides.step_flops``.
"""

from __future__ import annotations

import importlib.util
import statistics

from benchmarks._context import Context, Skip
from benchmarks._report import Row
from benchmarks.workloads.trl_sides import build_parser, run_side


QUICK, FULL = (2, 8), (10, 16)  # (timed steps, batch size)


def _seconds_per_step(results: list[dict]) -> list[float]:
    """Mean seconds of the timed steps (after the warm-up) of each round."""
    return [statistics.fmean(r["step_times"][1:]) for r in results]


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def run(ctx: Context) -> Row:
    ctx.fp32_only("lm_step")
    if ctx.device.type != "cpu":
        raise Skip("lm_step's sides run on CPU only so far (trl_sides has no --device)")
    steps, batch = QUICK if ctx.quick else FULL
    args = build_parser().parse_args(["--steps", str(steps), "--batch-size", str(batch)])
    have_trl = all(importlib.util.find_spec(m) is not None for m in ("trl", "datasets"))
    sides = ["prefdyn-shared"] + (["trl"] if have_trl else [])
    rounds: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(1 if ctx.quick else ctx.repeats):
        for side in sides:
            result = run_side(side, args)
            if result is None:
                raise RuntimeError(f"the {side} side failed (its output is above)")
            rounds[side].append(result)
    ours = _seconds_per_step(rounds["prefdyn-shared"])
    # With one round the noise is the spread of the timed steps within it.
    noise = _spread(ours) if len(ours) > 1 else _spread(rounds["prefdyn-shared"][0]["step_times"][1:])
    flops = rounds["prefdyn-shared"][0]["flops_step"]
    gflops = ctx.limits.matmul_gflops["fp32"]
    row = Row(
        workload=f"LM DPO step, persona, SmolLM2-135M full, batch {batch}", unit="step", units=1,
        prefdyn_s=statistics.median(ours), prefdyn_peak_mb=max(r["peak_gb"] for r in rounds["prefdyn-shared"]) * 1e3,
        limit=f"fp32 matmul {gflops:.0f} GFLOP/s", share=flops / statistics.median(ours) / 1e9 / gflops,
        noise=noise, extra={"gflop_step": flops / 1e9})
    note = (f"{flops / 1e9:.1f} GFLOP a step = 6 x non-embedding params x tokens (common prefix once) "
            f"+ lm_head at the answers; achieved {flops / row.prefdyn_s / 1e9:.1f} GFLOP/s")
    if have_trl:
        theirs = _seconds_per_step(rounds["trl"])
        row.anchor, row.anchor_s = "TRL DPOTrainer (defaults)", statistics.median(theirs)
        row.anchor_peak_mb = max(r["peak_gb"] for r in rounds["trl"]) * 1e3
        row.noise = max(noise, _spread(theirs) if len(theirs) > 1 else
                        _spread(rounds["trl"][0]["step_times"][1:]))
        diff = max(abs(a - b) for a, b in zip(rounds["trl"][0]["losses"], rounds["prefdyn-shared"][0]["losses"]))
        note += f"; losses vs TRL max |diff| {diff:.1e}"
    else:
        note += "; TRL anchor skipped: trl/datasets not installed (pip install -e .[bench])"
    row.note = note
    return row
