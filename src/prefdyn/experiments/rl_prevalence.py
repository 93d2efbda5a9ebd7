"""Finding III (Razin et al., ICLR 2024): RFT does worse when small-std inputs are prevalent.

The talk: "Finding III: RFT performance is worse when inputs with small reward std are
prevalent". The train inputs are split by their reward std under the base model into
small-std inputs (std < ``experiment.small_std``) and the rest; training mixes of one
size take a growing share of small-std inputs, and each is RL fine-tuned with the same
budget (steps, batch, lr) from the same base model. The reward reached is measured on
the same held-out inputs for every mix (and on the mix itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefdyn.errors import PrefdynError
from prefdyn.experiments._rl_runs import (
    RLParams,
    fresh_model,
    rl_context,
    rl_spec,
    run_rft,
)
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import RunContext
from prefdyn.reports.plots_rl import plot_prevalence


@dataclass(frozen=True)
class PrevalenceParams(RLParams):
    """``shares``: shares of small-std inputs in the mixes (each in [0, 1]); ``mix_size``:
    inputs per mix, at most what the smaller group holds (None: that many)."""

    shares: tuple[float, ...] = (0.0, 0.5, 1.0)
    mix_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.shares or any(not 0 <= s <= 1 for s in self.shares):
            raise PrefdynError(f"experiment.shares must be in [0, 1], got {self.shares}")
        if self.mix_size is not None and self.mix_size < 1:
            raise PrefdynError(f"experiment.mix_size must be >= 1, got {self.mix_size}")


def split_by_std(rows: torch.Tensor, std: torch.Tensor, threshold: float
                 ) -> tuple[torch.Tensor, torch.Tensor, float, str]:
    """(small-std rows, other rows, threshold used, how): at ``threshold``, or at the median
    std when either side would be empty (said in ``how``)."""
    small = std < threshold
    if small.all() or not small.any():
        median = float(std.median())
        small = std <= median
        return rows[small], rows[~small], median, (
            f"no split at std {threshold:g} ({int((std < threshold).sum())}/{len(std)} below): "
            f"split at the median std {median:.3g} instead")
    return rows[small], rows[~small], threshold, f"std < {threshold:g}"


def run_rl_prevalence(ctx: RunContext) -> ExperimentResult:
    """The same RFT budget on mixes with a growing share of small-std inputs."""
    params: PrevalenceParams = ctx.params
    loaded, task = rl_context(ctx)
    base = task.measure(loaded.model, task.train_rows, k=params.group_size, seed=ctx.cfg.seed)
    small, rest, threshold, how = split_by_std(task.train_rows, base.std, params.small_std)
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    small, rest = small[torch.randperm(len(small), generator=gen)], rest[torch.randperm(len(rest), generator=gen)]
    # Every mix has the same size, so the largest is what the smaller group allows.
    size = min(params.mix_size or len(task.train_rows), len(small), len(rest))
    if size < 1:
        raise PrefdynError(f"cannot mix: {len(small)} small-std and {len(rest)} other train inputs")
    rows, held, mixed, summary = [], [], [], {}
    start = None
    for share in params.shares:
        n_small = round(share * size)
        mix = torch.cat([small[:n_small], rest[:size - n_small]])
        model = fresh_model(loaded, params.mode, ctx.cfg.seed)
        name = f"share_{share:g}"
        phase = run_rft(task, model, mix, params, ctx.train, sink=ctx.sink, name=name,
                        splits={"test": task.test_rows, "mix": mix})
        first, last = phase.tracker.first("test"), phase.tracker.last("test")
        start = float(first.mean.mean())
        held.append(float(last.mean.mean()))
        mixed.append(float(phase.tracker.last("mix").mean.mean()))
        summary[name] = {"small_std_inputs": n_small, "inputs": len(mix), "held_out_reward": held[-1],
                         "mix_reward": mixed[-1], "mix_reward_start": float(phase.tracker.first("mix").mean.mean()),
                         "held_out_small_std_after": int(last.small(params.small_std).sum())}
        rows.append({"small-std share": share, "inputs": len(mix), "held-out reward before": start,
                     "held-out reward after": held[-1], "mix reward after": mixed[-1]})
    worse = held[-1] < held[0]
    res = ExperimentResult(
        name="rl_prevalence", title="Finding III: prevalence of small-std inputs",
        explanation=(
            f"Train inputs split by their reward std under the base model ({how}: "
            f"{len(small)} small-std, {len(rest)} other). Each mix has {size} inputs, a share "
            f"of them small-std, and gets the same RFT budget ({ctx.train.loss}, "
            f"{ctx.train.steps} steps of {ctx.train.batch_size or 8} prompts, lr "
            f"{ctx.train.lr or 1e-5:g}) from the same base model. Reward is measured on the "
            f"same {len(task.test_rows)} held-out inputs for every mix, and on the mix itself."),
        summary={"mixes": summary, "shares": list(params.shares), "threshold": threshold,
                 "split": how, "mix_size": size, "held_out_before": start,
                 "finding_iii_holds_held_out": worse},
        headlines=[("Finding III (held-out): more small-std inputs, lower reward",
                    "yes" if worse else "no",
                    (f"share {params.shares[0]:g}: {fmt(held[0], 3)}; share {params.shares[-1]:g}: "
                    f"{fmt(held[-1], 3)}"))])
    res.add_figure("prevalence", plot_prevalence(params.shares, {"held-out": held, "training mix": mixed},
                                                 start=start),
                   "Mean reward after the same RFT budget against the share of small-std inputs "
                   "in the training mix: held-out inputs (the same for every mix) and the mix.")
    res.tables.append(("Reward per mix", rows))
    if not worse:
        res.notes.append("The held-out reward did not fall as small-std inputs became more "
                         "prevalent: Finding III does not reproduce here at this scale.")
    return res


SPEC = rl_spec("rl prevalence", "Finding III: prevalence of small-std inputs",
               "Finding III: the same RFT budget on mixes with a growing share of small-std inputs.",
               run_rl_prevalence, PrevalenceParams)
