"""Finding I (Razin et al., ICLR 2024): the reward std of every training input under the model.

The talk: "Finding I: 3 of 7 datasets contain considerable # of train inputs with small
reward std and low reward". Before any training, each input's reward mean and std under
the base model are measured (exact on the persona bandit, Monte Carlo on a generation
task), and the inputs with a small std *and* a low mean -- whose expected gradient the
theorem bounds by ``O(std^(2/3))`` although their reward is poor -- are flagged. The
held-out inputs are measured alongside. ``experiment.compare`` adds other tasks (or
``task:reward``), e.g. the ``sentiment`` reward as the control with few small-std inputs
(the paper's IMDB, "few inputs w/ small std").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prefdyn.errors import PrefdynError
from prefdyn.experiments._rl_runs import RLParams, flags, rl_context, rl_spec
from prefdyn.experiments._rl_task import build_rl_task
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.spec import RunContext
from prefdyn.reports.plots_rl import plot_std_census


@dataclass(frozen=True)
class CensusParams(RLParams):
    """``compare``: more tasks measured the same way, each ``task`` or ``task:reward``."""

    compare: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [c for c in self.compare if not c.partition(":")[0]]
        if bad:
            raise PrefdynError(f"experiment.compare entries are task or task:reward, got {bad}")


def _variants(params: CensusParams) -> list[CensusParams]:
    out = [params]
    for item in params.compare:
        task, _, reward = item.partition(":")
        out.append(dataclasses.replace(params, task=task, reward=reward or None, compare=()))
    return out


def run_rl_census(ctx: RunContext) -> ExperimentResult:
    """Measure every train and held-out input of each task at the base model; flag
    small-std / low-reward inputs."""
    params: CensusParams = ctx.params
    loaded, main = rl_context(ctx)
    panels, lows, rows, summary = {}, {}, [], {}
    for p in _variants(params):
        task = main if p is params else build_rl_task(ctx.cfg, loaded, p)
        label = f"{task.name} / {task.reward_name}"
        per_split = {}
        for split, split_rows in (("train", task.train_rows), ("held-out", task.test_rows)):
            spread = task.measure(loaded.model, split_rows, k=p.group_size, seed=ctx.cfg.seed)
            f = flags(spread, p, task)
            ctx.sink.log({"step": 0, "split": split, "problem": label, "group": None,
                          **spread.summary(p.small_std), "per_input": spread.per_input()})
            panels[f"{label} ({split})"] = (spread.std.numpy(), spread.mean.numpy())
            lows[f"{label} ({split})"] = p.low(task)
            stats = {"inputs": len(spread), "exact": spread.exact, "k": spread.k,
                     "small_std": int(f["small_std"].sum()),
                     "small_std_and_low_reward": int(f["small_and_low"].sum()),
                     "frac_small_std_and_low_reward": float(f["small_and_low"].double().mean()),
                     "median_std": float(spread.std.median()),
                     "reward_mean": float(spread.mean.mean()),
                     "frac_reward_zero_std": spread.frac_reward_zero_std,
                     "pred_frac_reward_zero_std": spread.predicted_frac_zero_std}
            per_split[split] = stats
            rows.append({"task / reward": label, "inputs": split, "n": stats["inputs"],
                         "small std": stats["small_std"],
                         "small std & low reward": stats["small_std_and_low_reward"],
                         "median std": stats["median_std"], "mean reward": stats["reward_mean"],
                         f"frac_reward_zero_std (k={p.group_size})": stats["frac_reward_zero_std"],
                         "p^k+(1-p)^k": stats["pred_frac_reward_zero_std"]})
        summary[label] = per_split
    head = summary[f"{main.name} / {main.reward_name}"]["train"]
    low = params.low(main)
    res = ExperimentResult(
        name="rl_census", title="Finding I: reward std of the training inputs",
        explanation=(
            "Each input's reward mean and std under the base model, before any training "
            f"({'exact from the softmax over the vocabulary' if main.exact else 'Monte Carlo'} "
            f"for {main.name}). An input is flagged when its std is below "
            f"{params.small_std:g} and its mean below {low:g}: the theorem (Razin et al.: "
            "||grad V_x|| = O(STD^(2/3))) says its expected gradient is small although its "
            "reward is poor. frac_reward_zero_std is the share of inputs whose k sampled "
            "rewards all agree (what GRPO trainers log; those inputs give RLOO/GRPO a zero "
            "update), beside its prediction p^k + (1-p)^k from the per-input success rate p."),
        summary={"tasks": summary, "small_std": params.small_std, "low_reward": low,
                 "k": params.group_size},
        headlines=[("Finding I: small-std & low-reward train inputs",
                    f"{head['small_std_and_low_reward']}/{head['inputs']}",
                    f"{main.name}: std < {params.small_std:g} and mean < {low:g}")])
    res.add_figure("census_std_vs_mean", plot_std_census(panels, small_std=params.small_std,
                                                         low_reward=lows),
                   "Reward mean against reward std of every input under the base model (log "
                   "x); red: small std and low reward (Finding I). Train and held-out inputs.")
    res.tables.append(("Reward spread census", rows))
    if head["small_std_and_low_reward"] == 0:
        res.notes.append("No train input of the main task has both a small std and a low mean "
                         "here: Finding I does not reproduce on this task at this scale.")
    return res


SPEC = rl_spec("rl census", "Finding I: reward std census",
               "Finding I: the distribution of reward std over training inputs, small-std / "
               "low-reward inputs flagged.", run_rl_census, CensusParams)
