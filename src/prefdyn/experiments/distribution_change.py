"""Im & Li (ICML 2024, Sec. 5, Fig. 8): DPO reshapes the embedding distributions.

When every weight trains, g(x) moves. Sec. 5.2: "In Figure 8, we visualize the change
of final embedding distributions, before and after full fine-tuning with DPO. [...]
Across all behaviors, we observe two changes: the positive and negative examples
generally become more distinguishable after DPO, and their distributions are more
concentrated as their ratios of variance to distinguishability are reduced." Each
persona is trained alone, as the paper does (Sec. 3: "For each persona, we fine-tune
[...]"; App. B.2: "We train Mistral-7B with DPO on two individual personas"); with
``per_behavior`` off the chosen behaviors train as one mixture (prefdyn's variant,
which mixes in the priority effect of Fig. 7). A fixed probe of each behavior's
prompts is embedded before and after
(:class:`prefdyn.tracking.snapshots.EmbeddingSnapshots`) and D, the scale-free D and
the class spread (mean distance to the class mean: prefdyn's proxy for the paper's
"variance") are compared, with PCA and UMAP pictures of both snapshots in one shared
projection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefdyn.errors import PrefdynError
from prefdyn.experiments.lm_common import (
    LM_OPTIONS,
    LMExperimentPreset,
    LMParams,
    lm_spec,
    lm_task,
    on_lm_workspace,
    train_lm,
)
from prefdyn.experiments.lm_distinguishability import pick_behaviors
from prefdyn.experiments.spec import Option, RunContext
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.workspace import Workspace
from prefdyn.reports import plot_curves
from prefdyn.reports.projections import plot_before_after
from prefdyn.tracking import metrics as M
from prefdyn.training import TrainConfig

log = logging.getLogger(__name__)

METRICS = ("D", "scale_free_D", "spread", "spread_ratio")


@dataclass
class _Trained:
    """One training run's snapshots and history, and the behaviors it trained."""

    names: list[str]
    run: Any

    @property
    def snaps(self):
        return self.run.snapshots

    def before_after(self) -> tuple[int, int]:
        return min(self.snaps.snapshots), max(self.snaps.snapshots)


def _train_runs(ws: Workspace, loaded, train: TrainConfig, preset: LMExperimentPreset,
                which: list[int], per_behavior: bool, sink) -> list[_Trained]:
    """Each behavior alone (run ``alone_<name>``), or all of ``which`` as one mixture
    (run ``joint``)."""
    groups = [[i] for i in which] if per_behavior else [list(which)]
    runs = []
    for g in groups:
        name = f"alone_{ws.names[g[0]]}" if per_behavior else "joint"
        tr = train_lm(loaded, lm_task(ws, loaded, g, name=name), train, preset, sink=sink,
                      name=name, snapshots=True)
        runs.append(_Trained([ws.names[i] for i in g], tr))
    return runs


def _snapshot_curves(runs: list[_Trained], metric: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``metric`` per behavior at each snapshot; runs of their own are cut to the fewest
    snapshots (the same steps where the behaviors have equally many rows)."""
    got = [r.run.history.curves(metric, split="snapshot", by="group") for r in runs]
    n = min(len(steps) for steps, _ in got)
    return got[0][0][:n], {k: v[:n] for _, curves in got for k, v in curves.items()}


def _final_loss(runs: list[_Trained]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in runs:
        last = r.run.history.last(M.LOSS, split="train_eval", by="group")
        if not last and len(r.names) == 1:  # a run of one behavior records no groups
            last = {r.names[0]: v for v in r.run.history.last(
                M.LOSS, split="train_eval", by="problem").values()}
        out.update(last)
    return out


def run_distribution_change(ws: Workspace, train: TrainConfig, *, sink=None, loaded,
                            preset: LMExperimentPreset, which: list[int] | None = None,
                            projections: tuple[str, ...] = ("pca", "umap"),
                            max_pictures: int = 2) -> ExperimentResult:
    """Fig. 8: behaviors ``which`` fine-tuned with DPO, each alone when
    ``preset.per_behavior`` (default; jointly otherwise); tests that DPO makes the two
    classes of each behavior more distinguishable and more concentrated (D, scale-free D,
    spread of a fixed probe before vs after), with PCA/UMAP pictures of both snapshots."""
    if not preset.snapshot_steps:
        raise PrefdynError("distribution_change needs snapshot steps (e.g. (0, -1)) in its preset")
    which = pick_behaviors(ws, preset) if which is None else which
    names = [ws.names[i] for i in which]
    per_behavior = bool(getattr(preset, "per_behavior", True)) and len(which) > 1
    runs = _train_runs(ws, loaded, train, preset, which, per_behavior, sink)
    before, after = {}, {}
    for r in runs:
        first, last = r.before_after()
        before.update(r.snaps.stats(first))
        after.update(r.snaps.stats(last))
    change = {n: {m: {"before": before[n][m], "after": after[n][m],
                      "ratio": after[n][m] / before[n][m] if before[n][m] else math.nan}
                  for m in METRICS} for n in names}
    D_grew = [n for n in names if after[n]["D"] > before[n]["D"]]
    sfD_grew = [n for n in names if after[n]["scale_free_D"] > before[n]["scale_free_D"]]
    tighter = [n for n in names if after[n]["spread_ratio"] < before[n]["spread_ratio"]]
    spread_grew = [n for n in names if after[n]["spread"] > before[n]["spread"]]
    steps = {"+".join(r.names): r.run.steps for r in runs}
    snapshot_steps = sorted({s for r in runs for s in r.snaps.snapshots})
    probe_rows = sum(len(r.snaps.probe) for r in runs)
    runs_text = ("each behavior alone, as the paper trains each persona" if per_behavior
                 else "jointly (one mixture: prefdyn's variant)" if len(names) > 1 else "alone")
    steps_text = (f"{runs[0].run.steps} steps" if len(set(steps.values())) == 1
                  else f"{min(steps.values())}-{max(steps.values())} steps")

    summary = {"behaviors": names, "mode": preset.mode, "per_behavior": per_behavior,
               "lr": train.lr, "beta": train.beta, "steps": max(steps.values()),
               "steps_per_run": steps,
               "batch_size": train.batch_size, "snapshot_steps": snapshot_steps,
               "probe_rows": probe_rows, "probe_split": preset.probe_split, "change": change,
               "D_grew": D_grew, "scale_free_D_grew": sfD_grew, "more_concentrated": tighter,
               "absolute_spread_grew": spread_grew, "final_train_loss": _final_loss(runs),
               "seconds": {"+".join(r.names): r.run.seconds for r in runs}, "preset": preset}
    text = (f"D grew for {len(D_grew)} of {len(names)} behaviors, the scale-free D "
            f"(D / within-class spread) for {len(sfD_grew)}, and the classes became more "
            f"concentrated relative to D (spread / D fell) for {len(tighter)}. In absolute terms "
            f"the class spread grew for {len(spread_grew)} of {len(names)}"
            + (" (the hidden states' scale changes too): where it grew, 'more concentrated' "
               "holds relative to D, not in raw distance." if spread_grew else "."))
    res = ExperimentResult(
        name="distribution_change",
        title=f"Embedding distributions before and after {preset.mode} DPO",
        explanation=(
            f"The behaviors {', '.join(names)} are trained {runs_text}, with DPO "
            f"({'every weight' if preset.mode == 'full' else 'LoRA adapters'}, AdamW, lr "
            f"{train.lr:g}, beta {train.beta:g}, {steps_text} of {train.batch_size} rows). "
            f"The last hidden state g(x) of {probe_rows} fixed probe prompts "
            f"({preset.probe_split} rows) is taken before and after training. Im & Li "
            "(Fig. 8) find that DPO makes each behavior's two classes more distinguishable and "
            "more concentrated.\n\nMeasured: " + text),
        summary=summary,
        headlines=[("D grew after DPO", f"{len(D_grew)}/{len(names)}", "behaviors, probe rows"),
                   ("More concentrated (spread/D fell)", f"{len(tighter)}/{len(names)}",
                    "mean distance to the class mean, relative to D")])
    for metric, label in (("D", "D = ||mu+ - mu-||"), ("spread_ratio", "spread / D")):
        curve_steps, curves = _snapshot_curves(runs, metric)
        res.add_figure(f"fig8_{metric}_over_training", plot_curves(
            curve_steps, {n: curves[n] for n in names}, ylabel=label,
            title=f"{label} of the probe embeddings"),
            f"{label} per behavior at each snapshot (step 0 = the base model"
            + ("; the steps of each behavior's own run)." if per_behavior else ")."))
    pictured = [(n, r) for r in runs for n in r.names][:max_pictures]
    for n, r in pictured:
        snaps, (first, last) = r.snaps, r.before_after()
        classes = snaps.probe.prefers_yes.numpy()
        rows = snaps.group_rows(n)
        for method in projections:
            try:
                fig = plot_before_after(snaps.snapshots[first][rows].numpy(),
                                        snaps.snapshots[last][rows].numpy(), classes[rows.numpy()],
                                        method=method, seed=train.seed,
                                        title=f"{n}: {method.upper()} of g(x)",
                                        labels=(f"step {first}", f"step {last}"))
            except PrefdynError as e:  # umap-learn missing: PCA only
                log.warning("%s", e)
                res.warnings.append(f"{method.upper()} skipped: {e}")
                continue
            res.add_figure(f"fig8_{method}_{n}", fig,
                           f"{n}: probe embeddings before (left) and after (right) DPO, one "
                           f"{method.upper()} map fitted on both; colour = preferred answer.")
    res.tables.append(("Before and after, per behavior", [
        {"behavior": n, **{f"{m} {k}": change[n][m][k] for m in METRICS for k in ("before", "after")}}
        for n in names]))
    res.notes.append(
        "spread is the mean distance of an embedding to its class mean; full fine-tuning can "
        "rescale all hidden states, so spread / D and D / sqrt(tr Sigma) (scale-free D) are the "
        "scale-free readings. The probe includes training rows unless probe_split is 'test'.")
    return res


@dataclass(frozen=True)
class DistributionParams(LMParams):
    """LM params plus the 2-D views drawn of the probe embeddings (pca, umap) and
    ``per_behavior``: train each behavior alone (the paper's protocol, the default), or
    all of them as one mixture."""

    projections: tuple[str, ...] = ("pca", "umap")
    per_behavior: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [p for p in self.projections if p not in ("pca", "umap")]
        if unknown:
            raise PrefdynError(f"--projections: unknown view(s) {unknown}; use pca and/or umap")


def run_distribution_spec(ctx: RunContext) -> ExperimentResult:
    """Fig. 8: the chosen behaviors trained with DPO (each alone by default); D, scale-free D and
    class spread of a fixed probe before vs after DPO, with PCA/UMAP pictures (see :func:`run_distribution_change`)."""
    return on_lm_workspace(run_distribution_change, projections=ctx.params.projections)(ctx)


SPEC = lm_spec("lm distribution", "Embedding distributions before and after DPO",
               "Fig. 8: D and concentration of the embeddings before vs after DPO; PCA and UMAP views.",
               run_distribution_spec, "distribution_change", params=DistributionParams,
               options={**LM_OPTIONS,
                        "projections": Option("Comma-separated 2-D views: pca, umap (umap needs umap-learn)."),
                        "per_behavior": Option(
                            "Train each behavior alone, as the paper trains each persona (default); "
                            "--no-per-behavior trains them as one mixture.")})
