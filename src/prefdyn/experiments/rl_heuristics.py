"""Common heuristics against vanishing gradients (Razin et al., ICLR 2024).

The talk: "Common Heuristics: Increasing learning rate, temperature, entropy
regularization" -- tested here on the inputs that matter: those with a small reward
std under the base model. Each heuristic is one RFT run from the same base model with
one setting changed (``lr_factor`` times the learning rate; the policy's temperature;
an exact entropy bonus, :mod:`prefdyn.losses.entropy`, on the bandit's
``expected_reward``); the reward gain of the small-std group and of the rest is
measured at temperature 1 (the model itself) on train and held-out inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefdyn.errors import PrefdynError
from prefdyn.experiments._rl_runs import (
    SPLITS,
    RLParams,
    fresh_model,
    mean_or_nan,
    rl_context,
    rl_spec,
    run_rft,
)
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import RunContext
from prefdyn.reports.plots_rl import plot_group_gains

@dataclass(frozen=True)
class HeuristicParams(RLParams):
    """``lr_factor``: the learning rate's multiplier; ``hot_temperature``: the raised
    temperature; ``entropy_coef``: the entropy bonus (0 skips it)."""

    lr_factor: float = 10.0
    hot_temperature: float = 2.0
    entropy_coef: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.lr_factor > 0 and self.hot_temperature > 0 and self.entropy_coef >= 0):
            raise PrefdynError("experiment.lr_factor and hot_temperature must be > 0, "
                               "entropy_coef >= 0")


def run_rl_heuristics(ctx: RunContext) -> ExperimentResult:
    """Baseline RFT and one run per heuristic; does the small-std group move?"""
    params: HeuristicParams = ctx.params
    loaded, task = rl_context(ctx)
    lr = ctx.train.lr or 1e-5
    runs = {"baseline": {}, f"lr x{params.lr_factor:g}": {"lr": lr * params.lr_factor},
            f"temperature {params.hot_temperature:g}": {"temperature": params.hot_temperature}}
    notes = []
    if params.entropy_coef and task.exact and ctx.train.loss == "expected_reward":
        runs[f"entropy {params.entropy_coef:g}"] = {"entropy_coef": params.entropy_coef}
    elif params.entropy_coef:
        notes.append("Entropy bonus skipped: it is exact only with the bandit's expected_reward "
                     "objective (a sampled response gives no unbiased entropy gradient).")
    gains: dict[str, list[float]] = {}
    rows, summary = [], {}
    for name, change in runs.items():
        model = fresh_model(loaded, params.mode, ctx.cfg.seed)
        phase = run_rft(task, model, task.train_rows, params, ctx.train, sink=ctx.sink,
                        name=name.replace(" ", "_"), **change)
        summary[name] = {}
        for s, label in SPLITS.items():
            first, last = phase.tracker.first(s), phase.tracker.last(s)
            small = first.small(params.small_std)
            gain = last.mean - first.mean
            g_small, g_rest = mean_or_nan(gain[small]), mean_or_nan(gain[~small])
            gains.setdefault(f"small-std ({label})", []).append(g_small)
            gains.setdefault(f"other ({label})", []).append(g_rest)
            summary[name][label] = {"small_std_inputs": int(small.sum()), "gain_small_std": g_small,
                                    "gain_other": g_rest,
                                    "small_std_after": int(last.small(params.small_std).sum())}
            rows.append({"run": name, "inputs": label, "small-std inputs": int(small.sum()),
                         "gain small-std": g_small, "gain other": g_rest,
                         "small-std inputs after": int(last.small(params.small_std).sum())})
    base = summary["baseline"]["held-out"]["gain_small_std"]
    best = max((n for n in runs if n != "baseline"),
               key=lambda n: summary[n]["held-out"]["gain_small_std"], default=None)
    headlines = [("Small-std held-out gain: baseline", fmt(base, 3), "")]
    if best is not None:
        headlines.append(("Best heuristic for the small-std group (held-out)", best,
                          f"gain {fmt(summary[best]['held-out']['gain_small_std'], 3)}"))
    res = ExperimentResult(
        name="rl_heuristics", title="Heuristics: learning rate, temperature, entropy",
        explanation=(
            f"Baseline RFT ({ctx.train.loss}, {ctx.train.steps} steps, lr {lr:g}) and one run "
            "per heuristic, each from the same base model. Inputs are grouped by their reward "
            f"std under the base model (small: std < {params.small_std:g}); the bars are the "
            "mean reward gain of each group, measured at temperature 1. Razin et al. report "
            "that these heuristics do not fix vanishing gradients; with an exact objective a "
            "larger lr scales every step, so the question is whether the small-std group "
            "moves relative to the rest."),
        summary={"runs": summary, "small_std": params.small_std}, headlines=headlines)
    res.add_figure("heuristics_gain", plot_group_gains(list(runs), gains),
                   "Mean reward gain of the small-std inputs and of the others, per run, train "
                   "and held-out.")
    res.tables.append(("Gain per run and group", rows))
    res.notes.extend(notes)
    return res


SPEC = rl_spec("rl heuristics", "Heuristics vs small-std inputs",
               "Heuristics: larger learning rate, higher temperature, entropy bonus: does the "
               "small-std group move?", run_rl_heuristics, HeuristicParams)
