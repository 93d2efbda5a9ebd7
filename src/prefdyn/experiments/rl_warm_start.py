"""An initial SFT phase before RFT, and how cheap it can be (Razin et al., ICLR 2024).

The talk: "Observation: Initial SFT phase reduces number of inputs with small reward
std"; "Result: Using 1% of labeled samples and 40% of steps for initial SFT allows RFT to
reach roughly same reward as with "full" initial SFT". Variants, each from the same
base model: no SFT; full SFT (every train label, ``sft_steps`` steps); SFT on
``label_fraction`` of the train labels for each of ``step_fractions`` of ``sft_steps``.
Each is followed by the same RFT budget (``train.steps``). Reported: held-out reward
after SFT and after RFT, and the number of small-std train inputs before and after SFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prefdyn.errors import PrefdynError
from prefdyn.experiments._rl_runs import (
    RLParams,
    fresh_model,
    rl_context,
    rl_spec,
    run_rft,
    run_sft,
)
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import RunContext
from prefdyn.reports.plots_rl import plot_warm_start


@dataclass(frozen=True)
class WarmStartParams(RLParams):
    """``sft_steps``: the full SFT phase's steps; ``label_fraction``: the labelled share
    of the cheap variants; ``step_fractions``: their shares of ``sft_steps``;
    ``sft_lr``: SFT's learning rate (None: ``train.lr``)."""

    sft_steps: int = 20
    label_fraction: float = 0.01
    step_fractions: tuple[float, ...] = (0.1, 0.4, 1.0)
    sft_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sft_steps < 1 or not 0 < self.label_fraction <= 1:
            raise PrefdynError("experiment.sft_steps must be >= 1 and label_fraction in (0, 1]")
        if any(not 0 < f <= 1 for f in self.step_fractions):
            raise PrefdynError(f"experiment.step_fractions must be in (0, 1], got {self.step_fractions}")


def variants(params: WarmStartParams) -> dict[str, tuple[float, int]]:
    """name -> (label fraction, SFT steps)."""
    out = {"no SFT": (0.0, 0), "full SFT": (1.0, params.sft_steps)}
    for f in params.step_fractions:
        out[f"{params.label_fraction:.0%} labels, {f:.0%} steps"] = (
            params.label_fraction, max(1, round(f * params.sft_steps)))
    return out


def run_rl_warm_start(ctx: RunContext) -> ExperimentResult:
    """No / full / cheap SFT, then the same RFT; reward reached and small-std counts."""
    params: WarmStartParams = ctx.params
    loaded, task = rl_context(ctx)
    seed = ctx.cfg.seed
    base_train = task.measure(loaded.model, task.train_rows, k=params.group_size, seed=seed)
    small_before = int(base_train.small(params.small_std).sum())
    gen = torch.Generator().manual_seed(seed)
    order = task.train_rows[torch.randperm(len(task.train_rows), generator=gen)]
    names, after_sft, after_rft, counts_before, counts_after, rows, summary = [], [], [], [], [], [], {}
    for name, (fraction, steps) in variants(params).items():
        model = fresh_model(loaded, params.mode, seed)
        labelled = order[:max(1, math.ceil(fraction * len(order)))] if steps else order[:0]
        if steps:
            run_sft(task, model, labelled, ctx.train, steps=steps, mode=params.mode, sink=ctx.sink,
                    name=f"sft {name}", lr=params.sft_lr)
        phase = run_rft(task, model, task.train_rows, params, ctx.train, sink=ctx.sink,
                        name=f"rft {name}")
        sft_train, sft_test = phase.tracker.first("train_eval"), phase.tracker.first("test")
        end_test = phase.tracker.last("test")
        small_after = int(sft_train.small(params.small_std).sum())
        names.append(name)
        after_sft.append(float(sft_test.mean.mean()))
        after_rft.append(float(end_test.mean.mean()))
        counts_before.append(small_before)
        counts_after.append(small_after)
        summary[name] = {"labels": len(labelled), "sft_steps": steps,
                         "held_out_reward_after_sft": after_sft[-1],
                         "held_out_reward_after_rft": after_rft[-1],
                         "train_reward_after_rft": float(phase.tracker.last("train_eval").mean.mean()),
                         "small_std_train_before_sft": small_before,
                         "small_std_train_after_sft": small_after}
        rows.append({"variant": name, "labels": len(labelled), "SFT steps": steps,
                     "small-std train inputs before SFT": small_before,
                     "after SFT": small_after, "held-out reward after SFT": after_sft[-1],
                     "held-out reward after RFT": after_rft[-1]})
    full = summary["full SFT"]["held_out_reward_after_rft"]
    cheap_name = next((n for n in names if "40%" in n and "steps" in n), names[-1])
    cheap = summary[cheap_name]["held_out_reward_after_rft"]
    none = summary["no SFT"]["held_out_reward_after_rft"]
    lo, hi = task.reward_range
    close = abs(cheap - full) <= 0.1 * (hi - lo)
    res = ExperimentResult(
        name="rl_warm_start", title="SFT warm start before RFT",
        explanation=(
            f"Each variant starts from the base model, runs its SFT phase (cross entropy on "
            f"the labelled answers of a seeded share of the {len(task.train_rows)} train "
            f"inputs; the full phase is {params.sft_steps} steps) and then the same RFT "
            f"({ctx.train.loss}, {ctx.train.steps} steps). Razin et al.: 1% of the labels and "
            "40% of the steps reach roughly the reward of a full SFT phase; SFT also reduces "
            "the number of small-std inputs."),
        summary={"variants": summary, "small_std": params.small_std,
                 "cheap_variant": cheap_name, "cheap_within_10pct_of_full": close},
        headlines=[("Held-out reward after RFT: no / full / cheap SFT",
                    f"{fmt(none, 2)} / {fmt(full, 2)} / {fmt(cheap, 2)}", cheap_name),
                   ("Cheap SFT reaches full SFT's reward (within 10% of the range)",
                    "yes" if close else "no", "")])
    res.add_figure("warm_start", plot_warm_start(
        names, {"after SFT": after_sft, "after RFT": after_rft},
        {"before SFT": counts_before, "after SFT": counts_after}),
        "Left: held-out mean reward after the SFT phase and after RFT, per variant. Right: "
        "small-std train inputs before and after the SFT phase.")
    res.tables.append(("Warm-start variants", rows))
    return res


SPEC = rl_spec("rl warm-start", "SFT warm start before RFT",
               "SFT warm start: none / full / 1% of labels for {10, 40, 100}% of the steps, then RFT.",
               run_rl_warm_start, WarmStartParams)
