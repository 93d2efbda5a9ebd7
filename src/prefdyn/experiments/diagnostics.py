"""Diagnose a preference data set with a model before any training.

Persona behaviors (the bundled demo or a persona folder) get Im & Li's quantities
(:func:`run_diagnostics`, the demo's first part); any other pairs data gets prefdyn's
general diagnosis (:mod:`prefdyn.experiments._diagnose_any`). Which one runs follows from
what DATA is on disk (:func:`prefdyn.data.sources.detect_source`), never from a value's look.
"""

from __future__ import annotations

import torch

from prefdyn.data.sources import detect_source
from prefdyn.experiments._diagnose_any import OPTIONS, DiagnoseParams, check_fail_on, run_any
from prefdyn.experiments.config import ExperimentConfig
from prefdyn.experiments.distinguishability import diagnose_workspace
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.workspace import Workspace
from prefdyn.experiments.spec import ExperimentSpec, RunContext, register
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


def is_persona(cfg: ExperimentConfig) -> bool:
    """The persona path (Im & Li's exact quantities) for the bundled demo or a persona folder;
    any other DATA is a pairs data set (decided by what DATA is, :func:`detect_source`)."""
    return cfg.data.path is None or detect_source(cfg.data.path) == "persona"


def _run_persona(ctx: RunContext) -> ExperimentResult:
    """Im & Li's diagnostics of the persona behaviors; with ``--reward`` also each behavior's
    reward spread under the model (Razin et al., ICLR 2024), before any training."""
    ws = ctx.workspace()
    res = run_diagnostics(ws, ctx.train, sink=ctx.sink)
    if ctx.params is not None and ctx.params.reward is not None:
        from prefdyn.experiments._rl_diagnose import add_reward_spread

        add_reward_spread(res, ws, ctx.model(), ctx.params.reward, k=ctx.params.reward_k,
                          seed=ctx.cfg.seed)
    return res
DIAGNOSE_ATTRIBUTION = (
    "Theory: Im & Li, 'Understanding the Learning Dynamics of Alignment with Human Feedback', ICML 2024 "
    "(for multi-token pairs, prefdyn's extension); CHES: Razin et al., 'Unintentional Unalignment', 2024. "
    "Persona data (the bundled demo is prefdyn's own): Anthropic model-written evaluations "
    "(Perez et al. 2022, arXiv 2212.09251), CC-BY-4.0.")


def run_diagnose(ctx: RunContext) -> ExperimentResult:
    """Persona data: Im & Li's diagnostics; any other pairs data: prefdyn's general diagnosis."""
    return _run_persona(ctx) if is_persona(ctx.cfg) else run_any(ctx)


SPEC = register(ExperimentSpec(
    name="diagnose", title="Before training: what the data predicts",
    help="Before training, for persona behaviors or any preference pairs (TRL/HH JSONL, Parquet, "
         "datasets folder, hub id): what DPO learns first, what starves, which pairs displace, data problems.",
    run=run_diagnose, params=DiagnoseParams, options=OPTIONS,
    folder=lambda cfg: "diagnostics" if is_persona(cfg) else ".", last_layer=True, attribution=DIAGNOSE_ATTRIBUTION,
    data_argument="Preference data: a JSONL[.gz], Parquet, JSON or CSV file, a datasets folder, a hub id, "
                  "or a persona folder (default: the bundled persona demo).",
    check=check_fail_on))
