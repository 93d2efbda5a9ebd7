"""LM DPO step (full fine-tuning, persona task): prefdyn's packed step against TRL's DPOTrainer.

Each side runs in its own process (see :mod:`benchmarks.workloads.trl_sides`), so
peak memory is that process's maximum resident set (CUDA: the allocator's peak);
the sides take turns, one round per repeat. TRL is the optional ``[bench]`` extra:
without it the row keeps prefdyn's figures and says so. The limit is the measured
matmul rate of the dtype; the step's FLOPs are counted as in ``trl_sides.step_flops``.
With ``--dtype bf16`` the row is prefdyn's step in mixed precision (bf16 matmuls,
fp32 weights, AdamW state and losses) against the same step in fp32, with the largest
relative loss difference over the run; TRL with ``bf16=True`` is in the note.
"""

from __future__ import annotations

import copy
import importlib.util
import statistics

from benchmarks._context import Context
from benchmarks._report import Row
from benchmarks.workloads.trl_sides import build_parser, run_side

QUICK, FULL = (2, 8), (10, 16)  # (timed steps, batch size)


def _seconds_per_step(results: list[dict]) -> list[float]:
    """Mean seconds of the timed steps (after the warm-up) of each round."""
    return [statistics.fmean(r["step_times"][1:]) for r in results]


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def _noise(results: list[dict]) -> float:
    """Spread over rounds; with one round, the spread of the timed steps within it."""
    per_round = _seconds_per_step(results)
    return _spread(per_round) if len(per_round) > 1 else _spread(results[0]["step_times"][1:])


def run(ctx: Context) -> Row:
    steps, batch = QUICK if ctx.quick else FULL
    args = build_parser().parse_args(["--steps", str(steps), "--batch-size", str(batch),
                                      "--dtype", ctx.dtype, "--device", str(ctx.device)])
    fp32_args = copy.copy(args)
    fp32_args.dtype = "fp32"
    have_trl = all(importlib.util.find_spec(m) is not None for m in ("trl", "datasets"))
    # (name, trl_sides side, its args): prefdyn in the run's dtype first, then its anchor.
    sides = [("prefdyn", "prefdyn-shared", args)]
    if ctx.dtype != "fp32":
        sides.append(("prefdyn-fp32", "prefdyn-shared", fp32_args))
    if have_trl:
        sides.append(("trl", "trl", args))
    rounds: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
    for _ in range(1 if ctx.quick else ctx.repeats):
        for name, side, side_args in sides:
            result = run_side(side, side_args)
            if result is None:
                raise RuntimeError(f"the {name} side failed (its output is above)")
            rounds[name].append(result)
    ours = rounds["prefdyn"]
    flops = ours[0]["flops_step"]
    gflops = ctx.limits.matmul_gflops[ctx.dtype]
    median = statistics.median(_seconds_per_step(ours))
    row = Row(
        workload=f"LM DPO step, persona, SmolLM2-135M full, batch {batch} ({ctx.dtype})", unit="step", units=1,
        prefdyn_s=median, prefdyn_peak_mb=max(r["peak_gb"] for r in ours) * 1e3,
        limit=f"{ctx.dtype} matmul {gflops:.0f} GFLOP/s", share=flops / median / 1e9 / gflops,
        noise=_noise(ours), extra={"gflop_step": flops / 1e9, "achieved_gflops": flops / median / 1e9})
    note = (f"{flops / 1e9:.1f} GFLOP a step = 6 x non-embedding params x tokens (common prefix once) "
            f"+ lm_head at the answers; achieved {flops / median / 1e9:.1f} GFLOP/s")
    anchor = "prefdyn-fp32" if ctx.dtype != "fp32" else ("trl" if have_trl else None)
    if anchor is not None:
        theirs = rounds[anchor]
        row.anchor = "the same step in fp32" if anchor == "prefdyn-fp32" else "TRL DPOTrainer (defaults)"
        row.anchor_s = statistics.median(_seconds_per_step(theirs))
        row.anchor_peak_mb = max(r["peak_gb"] for r in theirs) * 1e3
        row.noise = max(row.noise, _noise(theirs))
    if ctx.dtype != "fp32":
        ref = rounds["prefdyn-fp32"][0]["losses"]
        rel = max(abs(a - b) / abs(b) for a, b in zip(ours[0]["losses"], ref))
        row.extra["max_rel_loss_diff"] = rel
        note += f"; losses vs fp32 max relative difference {rel:.1e}"
    if have_trl:
        trl_s = statistics.median(_seconds_per_step(rounds["trl"]))
        diff = max(abs(a - b) for a, b in zip(rounds["trl"][0]["losses"], ours[0]["losses"]))
        note += f"; TRL ({ctx.dtype}) {trl_s:.2f} s/step = {trl_s / median:.1f}x, losses vs TRL max |diff| {diff:.1e}"
    else:
        note += "; TRL anchor skipped: trl/datasets not installed (pip install -e .[bench])"
    row.note = note
    return row
