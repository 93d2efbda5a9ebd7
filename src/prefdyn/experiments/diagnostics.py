"""Diagnose a preference data set with a model before any training."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefdyn.experiments.distinguishability import diagnose_workspace
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import (
    PERSONA_ATTRIBUTION,
    ExperimentSpec,
    Option,
    RunContext,
    register,
)
from prefdyn.experiments.workspace import Workspace
from prefdyn.losses import loss_for_run
from prefdyn.policies.last_layer import LastLayerPolicy
from prefdyn.reports import plot_bars, plot_heatmap, plot_projection_2d, subplots_grid
from prefdyn.training import TrainConfig, default_lr


def curvature_lr(ws: Workspace, train: TrainConfig) -> tuple[float, dict]:
    """The step size training would use (without training)."""
    if train.lr is not None:
        return train.lr, {"rule": "given"}
    data = ws.problems()
    policy = LastLayerPolicy(ws.W_answers, data.n_problems)
    return default_lr(policy, loss_for_run(train.loss, beta=train.beta), policy.reference_for(data),
                      optimizer=train.optimizer_for("last_layer"), beta=train.beta, safety=train.lr_safety)


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """Project (n, d) onto its top-2 principal components (after centering)."""
    x = x.double() - x.double().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return (x @ v[:2].T).float()


def run_diagnostics(ws: Workspace, train: TrainConfig, *, sink=None) -> ExperimentResult:
    """Before training: D, priority levels, the step size training would use and the
    explained ranking of which behaviors Theorem 4.1 and Eq. 5 predict to learn first."""
    lr, info = curvature_lr(ws, train)
    diag = diagnose_workspace(ws, train, lr)
    names = ws.names
    table = diag.table()
    top, bottom = table[0], table[-1]
    res = ExperimentResult(
        name="diagnostics", title="Before training: what the data predicts",
        explanation=(
            f"{len(names)} behaviors embedded with {ws.model_name} (d = {ws.d}). For each, "
            "D = ||mu+ - mu-|| measures how far apart the last hidden states of prompts that "
            "should be answered Yes and No are; larger D means faster DPO (Theorem 4.1). "
            "The priority level P = cos(b_bar, b_i) says which behavior wins when they are "
            f"trained together. The step size training would use is lr = {lr:.3g} ({info['rule']})."),
        summary={**diag.to_dict(), "lr": lr, "lr_info": info, "model": ws.model_name,
                 "model_fingerprint": ws.model_fingerprint},
        headlines=[("Most distinguishable", str(top["behavior"]), f"D = {fmt(float(top['D']), 3)}"),
                   ("Least distinguishable", str(bottom["behavior"]), f"D = {fmt(float(bottom['D']), 3)}")])
    res.add_figure("diag_D", plot_bars(names, [s.D for s in diag.stats], ylabel="D = ||mu+ - mu-||",
                                       title="Distinguishability"),
                   "Distance between the class means of the last hidden state.")
    res.add_figure("diag_priority", plot_bars(names, diag.priority.P.tolist(), ylabel="P = cos(b_bar, b_i)",
                                              title="Priority level (all behaviors jointly)"),
                   "Eq. 5 of Im & Li 2024, with sample-share weights.")
    fig, axes = subplots_grid(len(names), ncols=4)
    for ax, i in zip(axes, range(len(names))):
        b = ws.behaviors[i]
        # class 0 = prefers Yes, 1 = prefers No
        plot_projection_2d(pca_2d(ws.embeddings[i]).numpy(), (~b.prefers_yes).numpy(), title=b.name, ax=ax)
    res.add_figure("diag_pca", fig, "Last hidden states of each behavior on their top two principal components.")
    if len(names) > 1:
        res.add_figure("diag_priority_gap", plot_heatmap(diag.gaps.gap.numpy(), names, names,
                                                         title="Pairwise priority gap P_i - P_j"),
                       "Trained as a pair, row i is predicted to be learned before column j when positive.")
    res.tables.append(("Diagnostics, fastest predicted learner first", table))
    res.notes.append("\n\n".join(diag.explain()))
    return res


@dataclass
class DiagnoseParams:
    """``reward``: also tabulate each behavior's reward spread under the model (Razin et
    al., ICLR 2024) with this registered reward (None: no table); ``reward_k``: samples
    per prompt (frac_reward_zero_std; the Monte Carlo spread of a generation reward)."""

    reward: str | None = None
    reward_k: int = 8


def _run_diagnose(ctx: RunContext) -> ExperimentResult:
    ws = ctx.workspace()
    res = run_diagnostics(ws, ctx.train, sink=ctx.sink)
    params = ctx.params or DiagnoseParams()
    if params.reward is not None:
        from prefdyn.experiments._rl_diagnose import add_reward_spread

        add_reward_spread(res, ws, ctx.model(), params.reward, k=params.reward_k, seed=ctx.cfg.seed)
    return res


SPEC = register(ExperimentSpec(
    name="diagnose", title="Before training: what the data predicts",
    help="Before training: distinguishability, priority and Theorem 4.1's bound, ranked and explained.", run=_run_diagnose,
    params=DiagnoseParams, options={"reward": Option("Also a reward-spread table with this reward "
                                                     "(e.g. persona: the exact one-token bandit).")},
    folder=lambda cfg: "diagnostics", last_layer=True, attribution=PERSONA_ATTRIBUTION))
