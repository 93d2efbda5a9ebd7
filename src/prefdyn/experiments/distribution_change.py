"""Im & Li (ICML 2024, Sec. 5, Fig. 8): DPO reshapes the embedding distributions.

When every weight trains, g(x) moves. The paper reports that after DPO the
preferred and non-preferred prompts of a behavior are more distinguishable
(larger D = ||mu+ - mu-||) and each class more concentrated, which is why an
aligned model is misaligned faster (Fig. 9). Here the chosen behaviors are
trained jointly; a fixed probe of their prompts is embedded before and after
(:class:`prefdyn.tracking.snapshots.EmbeddingSnapshots`) and D, the scale-free
D and the class spread (mean distance to the class mean) are compared, with
PCA and UMAP pictures of both snapshots in one shared projection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

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


def run_distribution_change(ws: Workspace, train: TrainConfig, *, sink=None, loaded,
                            preset: LMExperimentPreset, which: list[int] | None = None,
                            projections: tuple[str, ...] = ("pca", "umap"),
                            max_pictures: int = 2) -> ExperimentResult:
    """Fig. 8: behaviors ``which`` fine-tuned jointly; tests that DPO makes the two classes of
    each behavior more distinguishable and more concentrated (D, scale-free D, spread of a
    fixed probe before vs after), with PCA/UMAP pictures of both snapshots."""
    if not preset.snapshot_steps:
        raise PrefdynError("distribution_change needs snapshot steps (e.g. (0, -1)) in its preset")
    which = pick_behaviors(ws, preset) if which is None else which
    names = [ws.names[i] for i in which]
    tr = train_lm(loaded, lm_task(ws, loaded, which, name="joint"), train, preset, sink=sink,
                  name="joint", snapshots=True)
    snaps = tr.snapshots
    first, last = min(snaps.snapshots), max(snaps.snapshots)
    before, after = snaps.stats(first), snaps.stats(last)
    change = {n: {m: {"before": before[n][m], "after": after[n][m],
                      "ratio": after[n][m] / before[n][m] if before[n][m] else math.nan}
                  for m in METRICS} for n in names}
    D_grew = [n for n in names if after[n]["D"] > before[n]["D"]]
    sfD_grew = [n for n in names if after[n]["scale_free_D"] > before[n]["scale_free_D"]]
    tighter = [n for n in names if after[n]["spread_ratio"] < before[n]["spread_ratio"]]
    spread_grew = [n for n in names if after[n]["spread"] > before[n]["spread"]]
    final_loss = tr.history.last(M.LOSS, split="train_eval", by="group")

    summary = {"behaviors": names, "mode": preset.mode, "lr": train.lr, "beta": train.beta,
               "steps": tr.steps, "batch_size": train.batch_size,
               "snapshot_steps": sorted(snaps.snapshots), "probe_rows": len(snaps.probe),
               "probe_split": preset.probe_split, "change": change,
               "D_grew": D_grew, "scale_free_D_grew": sfD_grew, "more_concentrated": tighter,
               "absolute_spread_grew": spread_grew,
               "final_train_loss": final_loss, "seconds": tr.seconds, "preset": preset}
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
            f"The behaviors {', '.join(names)} are trained jointly with DPO "
            f"({'every weight' if preset.mode == 'full' else 'LoRA adapters'}, AdamW, lr "
            f"{train.lr:g}, beta {train.beta:g}, {tr.steps} steps of {train.batch_size} rows). "
            f"The last hidden state g(x) of {len(snaps.probe)} fixed probe prompts "
            f"({preset.probe_split} rows) is taken at steps {sorted(snaps.snapshots)}. Im & Li "
            "(Fig. 8) find that DPO makes each behavior's two classes more distinguishable and "
            "more concentrated.\n\nMeasured: " + text),
        summary=summary,
        headlines=[("D grew after DPO", f"{len(D_grew)}/{len(names)}", "behaviors, probe rows"),
                   ("More concentrated (spread/D fell)", f"{len(tighter)}/{len(names)}",
                    "mean distance to the class mean, relative to D")])
    for metric, label in (("D", "D = ||mu+ - mu-||"), ("spread_ratio", "spread / D")):
        steps, curves = tr.history.curves(metric, split="snapshot", by="group")
        res.add_figure(f"fig8_{metric}_over_training", plot_curves(
            steps, {n: curves[n] for n in names}, ylabel=label,
            title=f"{label} of the probe embeddings"),
            f"{label} per behavior at each snapshot (step 0 = the base model).")
    classes = snaps.probe.prefers_yes.numpy()
    for n in names[:max_pictures]:
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
    """LM params plus the 2-D views drawn of the probe embeddings (pca, umap)."""

    projections: tuple[str, ...] = ("pca", "umap")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [p for p in self.projections if p not in ("pca", "umap")]
        if unknown:
            raise PrefdynError(f"--projections: unknown view(s) {unknown}; use pca and/or umap")


def run_distribution_spec(ctx: RunContext) -> ExperimentResult:
    """Fig. 8: the chosen behaviors trained jointly; D, scale-free D and class spread of a fixed
    probe before vs after DPO, with PCA/UMAP pictures (see :func:`run_distribution_change`)."""
    return on_lm_workspace(run_distribution_change, projections=ctx.params.projections)(ctx)


SPEC = lm_spec("lm distribution", "Embedding distributions before and after DPO",
               "Fig. 8: D and concentration of the embeddings before vs after DPO; PCA and UMAP views.",
               run_distribution_spec, "distribution_change", params=DistributionParams,
               options={**LM_OPTIONS, "projections": Option("Comma-separated 2-D views: pca, umap (umap needs umap-learn).")})
