"""Finding II (Razin et al., ICLR 2024): RL fine-tuning barely moves small-std inputs.

The talk: "Finding II: As expected, RFT has limited impact on the reward of inputs with
small reward std". One RFT run on the train inputs; every train and held-out input's
reward is measured before and after (exact on the persona bandit), the inputs are
binned by their *initial* reward std (quantile bins of equal counts) and the mean
reward gain of each bin is reported. The finding predicts the lowest-std bin gains least.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prefdyn.errors import PrefdynError
from prefdyn.experiments._rl_runs import (
    SPLITS,
    RLParams,
    fresh_model,
    mean_or_nan,
    rl_context,
    rl_spec,
    run_rft,
    std_bins,
)
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import RunContext
from prefdyn.reports import plot_curves, spearman
from prefdyn.reports.plots_rl import plot_gain_by_std

@dataclass(frozen=True)
class GainParams(RLParams):
    """``n_bins``: quantile bins of the initial std."""

    n_bins: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_bins < 1:
            raise PrefdynError(f"experiment.n_bins must be >= 1, got {self.n_bins}")


def gain_by_bin(first, last, n_bins: int) -> dict:
    """Per-input gain and, per initial-std bin, its mean gain and mean initial std."""
    gain = last.mean - first.mean
    idx, labels = std_bins(first.std, n_bins)
    return {"std": first.std, "gain": gain, "labels": labels,
            "bin_gain": [mean_or_nan(gain[idx == b]) for b in range(len(labels))],
            "bin_std": [mean_or_nan(first.std[idx == b]) for b in range(len(labels))],
            "bin_start": [mean_or_nan(first.mean[idx == b]) for b in range(len(labels))]}


def run_rl_gain(ctx: RunContext) -> ExperimentResult:
    """RFT on the train inputs; reward gain per initial-std bin, train and held-out."""
    params: GainParams = ctx.params
    loaded, task = rl_context(ctx)
    model = fresh_model(loaded, params.mode, ctx.cfg.seed)
    phase = run_rft(task, model, task.train_rows, params, ctx.train, sink=ctx.sink, name="rft")
    per = {SPLITS[s]: gain_by_bin(phase.tracker.first(s), phase.tracker.last(s), params.n_bins)
           for s in SPLITS}
    rows, summary = [], {}
    for split, g in per.items():
        rho, p = spearman(g["std"].numpy(), g["gain"].numpy())
        summary[split] = {"bins": g["labels"], "bin_gain": g["bin_gain"], "bin_std": g["bin_std"],
                          "bin_start_reward": g["bin_start"], "spearman_std_gain": rho,
                          "spearman_p": p, "mean_gain": float(g["gain"].mean())}
        for b, label in enumerate(g["labels"]):
            rows.append({"inputs": split, "initial std bin": label, "mean initial std": g["bin_std"][b],
                         "reward before": g["bin_start"][b], "gain": g["bin_gain"][b]})
    held = summary["held-out"]
    holds = bool(held["bin_gain"][0] < held["bin_gain"][-1])
    steps_curve, curves = {}, {}
    for s, label in SPLITS.items():
        st, c = phase.history.curves("reward_mean", split=s)
        steps_curve[label], curves[label] = st, c.get("rft", np.array([]))
    res = ExperimentResult(
        name="rl_gain", title="Finding II: RFT gain by initial reward std",
        explanation=(
            f"One RFT run ({ctx.train.loss}, {phase.steps} steps of {ctx.train.batch_size or 8} "
            f"prompts, lr {ctx.train.lr or 1e-5:g}, {params.mode}) on {len(task.train_rows)} "
            f"train inputs of {task.name}. Inputs are binned by their reward std under the base "
            "model (quantile bins of equal counts); each bin's mean reward gain is shown for the "
            "train inputs and for held-out inputs never trained on. Finding II predicts the "
            "smallest-std bin gains least."),
        summary={"splits": summary, "steps": phase.steps, "seconds": phase.seconds,
                 "finding_ii_holds_held_out": holds},
        headlines=[("Finding II (held-out): lowest-std bin gains less than highest",
                    "yes" if holds else "no",
                    f"gain {fmt(held['bin_gain'][0], 3)} vs {fmt(held['bin_gain'][-1], 3)}"),
                   ("Train inputs: lowest vs highest std bin", fmt(summary['train']['bin_gain'][0], 3),
                    f"vs {fmt(summary['train']['bin_gain'][-1], 3)}")])
    res.add_figure("gain_by_initial_std", plot_gain_by_std(
        {k: v["std"].numpy() for k, v in per.items()}, {k: v["gain"].numpy() for k, v in per.items()},
        bin_labels=per["train"]["labels"], bin_gain={k: v["bin_gain"] for k, v in per.items()},
        bin_std={k: v["bin_std"] for k, v in per.items()}),
        "Reward gain of every input against its initial reward std (log x); lines: mean gain "
        "per std bin, train and held-out inputs (Finding II).")
    res.add_figure("reward_curves", plot_curves(steps_curve, curves, ylabel="mean reward"),
                   "Mean reward under the model during RFT: train and held-out inputs.")
    res.tables.append(("Gain per initial-std bin", rows))
    if not holds:
        res.notes.append("The lowest-std bin of held-out inputs did not gain less than the "
                         "highest: Finding II does not reproduce here at this scale.")
    return res


SPEC = rl_spec("rl gain", "Finding II: RFT gain by initial std",
               "Finding II: reward gain of RL fine-tuning per initial reward-std bin.",
               run_rl_gain, GainParams)
