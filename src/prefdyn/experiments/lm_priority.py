"""Im & Li (ICML 2024, Sec. 5, Fig. 7): prioritization persists when every weight trains.

Two pairs of behaviors are each trained jointly (one mixed data set per pair):
the pair with the largest priority gap (one behavior's projection D_i P_i on
the pair's mean direction far above the other's, Eq. 5) and the pair with the
smallest. The theory predicts that in the first pair the higher-priority
behavior's loss falls clearly first, while the second pair's behaviors move
together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prefdyn.diagnostics import priority_gap_matrix, priority_levels
from prefdyn.errors import PrefdynError
from prefdyn.experiments.lm_common import (
    LMExperimentPreset,
    LMParams,
    lm_spec,
    lm_task,
    train_lm,
)
from prefdyn.experiments.priority import highest_gap_pair, loss_auc
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import RunContext
from prefdyn.experiments.workspace import Workspace
from prefdyn.reports import plot_curves, plot_grid
from prefdyn.tracking import class_mean_difference
from prefdyn.tracking import metrics as M
from prefdyn.training import TrainConfig

def lowest_gap_pair(ws: Workspace) -> list[int]:
    """The two behaviors whose pairwise projection gap |D_i P_i - D_j P_j| is smallest."""
    per = ws.problems()
    gaps = priority_gap_matrix(class_mean_difference(per).double(), per.mask.sum(1).double())
    g = gaps.proj_gap.abs().clone()
    g.fill_diagonal_(float("inf"))
    i, j = np.unravel_index(int(torch.argmin(g)), g.shape)
    return [int(i), int(j)]


def pair_priority(ws: Workspace, pair: list[int]) -> dict[str, dict[str, float]]:
    """Eq. 5 for the pair trained jointly: {behavior: {D, P, projection}}."""
    per = ws.problems(pair)
    pr = priority_levels(class_mean_difference(per).double(), per.mask.sum(1).double())
    return {ws.names[i]: {"D": float(pr.D[k]), "P": float(pr.P[k]),
                          "projection": float(pr.projection[k])} for k, i in enumerate(pair)}


def run_lm_priority(ws: Workspace, train: TrainConfig, *, sink=None, loaded,
                    preset: LMExperimentPreset, pairs: list[list[int]] | None = None
                    ) -> ExperimentResult:
    """Fig. 7: the highest- and lowest-priority-gap pairs (or ``pairs``), each fine-tuned
    jointly. Tests that the higher D_i P_i is learned first under full/LoRA training; reports
    per-behavior loss curves, loss AUC and the verdict per pair."""
    chosen_by = "named (experiment.pairs), larger gap first" if pairs else "Eq. 5: the highest- and lowest-gap pair"
    if pairs is None:
        hi, lo = highest_gap_pair(ws), lowest_gap_pair(ws)
        pairs = [hi] if sorted(hi) == sorted(lo) else [hi, lo]
    labels = ["high gap", "low gap"][:len(pairs)] if len(pairs) <= 2 else [f"pair {k}" for k in range(len(pairs))]
    rows, panels, summary_pairs, run_steps = [], [], {}, train.steps
    for label, pair in zip(labels, pairs):
        names = [ws.names[i] for i in pair]
        prio = pair_priority(ws, pair)
        run_name = "+".join(names)
        tr = train_lm(loaded, lm_task(ws, loaded, pair, name=run_name), train, preset, sink=sink,
                      name=run_name, snapshots=False)
        run_steps = tr.steps  # with train.epochs, one epoch of this pair's rows
        steps, loss = tr.history.curves(M.LOSS, split="train_eval", by="group")
        _, test = tr.history.curves(M.LOSS, split="test", by="group")
        auc = {n: loss_auc(loss[n]) for n in names}
        hi_name = max(names, key=lambda n: prio[n]["projection"])
        faster = min(names, key=lambda n: auc[n])
        summary_pairs[label] = {
            "behaviors": names, "priority": prio, "loss_auc": auc,
            "final_loss": {n: float(loss[n][-1]) for n in names},
            "final_test_loss": {n: float(test[n][-1]) for n in test},
            "projection_gap": abs(prio[names[0]]["projection"] - prio[names[1]]["projection"]),
            "auc_gap": abs(auc[names[0]] - auc[names[1]]),
            "higher_priority": hi_name, "learned_faster": faster,
            "prediction_holds": hi_name == faster, "seconds": tr.seconds}
        proj = {n: prio[n]["projection"] for n in names}
        title = f"{label}: {' vs '.join(names)}"
        # the title goes through plot_curves, which lifts it over the train/test key
        panels.append(lambda ax, s=steps, c=loss, t=test, p=proj, ti=title: plot_curves(
            s, c, color_values=p, color_label="D·P", ylabel="DPO loss (per behavior)",
            dashed=t or None, title=ti, ax=ax))
        for n in names:
            rows.append({"pair": label, "behavior": n, "D": prio[n]["D"], "P": prio[n]["P"],
                         "D·P": prio[n]["projection"], "loss AUC": auc[n],
                         "final loss": float(loss[n][-1])})

    first = summary_pairs[labels[0]]
    headlines = [(f"{labels[0]} pair: priority predicts the winner",
                  "yes" if first["prediction_holds"] else "no",
                  (f"{first['higher_priority']} has the larger D·P; "
                   f"{first['learned_faster']} was learned faster"))]
    text = []
    for label, s in summary_pairs.items():
        a, b = s["behaviors"]
        text.append(f"{label} pair ({a} vs {b}): projection gap {s['projection_gap']:.3g}, "
                    f"loss-AUC gap {s['auc_gap']:.3g}; the higher-priority {s['higher_priority']} "
                    f"{'was' if s['prediction_holds'] else 'was NOT'} learned faster.")
    if len(summary_pairs) == 2:
        hi_s, lo_s = summary_pairs["high gap"], summary_pairs["low gap"]
        wider = hi_s["auc_gap"] > lo_s["auc_gap"]
        headlines.append(("High-gap pair splits more", "yes" if wider else "no",
                          f"loss-AUC gap {fmt(hi_s['auc_gap'], 3)} vs {fmt(lo_s['auc_gap'], 3)}"))
        text.append(f"The high-gap pair's behaviors separate {'more' if wider else 'less'} than "
                    "the low-gap pair's (difference of their relative loss areas).")
    res = ExperimentResult(
        name="lm_priority",
        title=f"Priority under {preset.mode} fine-tuning",
        explanation=(
            "Each pair is mixed and trained jointly with DPO, updating "
            f"{'every weight' if preset.mode == 'full' else 'LoRA adapters'} (AdamW, lr "
            f"{train.lr:g}, beta {train.beta:g}, {run_steps} steps of {train.batch_size} rows). "
            "Priority levels P_i = cos(b_bar, b_i) (Im & Li, Eq. 5) are measured on the base "
            "model's hidden states; Fig. 7 of the paper shows the higher-priority behavior of a "
            f"high-gap pair learned first under full fine-tuning. Pairs: {chosen_by}.\n\n" + " ".join(text)),
        summary={"pairs": summary_pairs, "pairs_chosen_by": chosen_by, "mode": preset.mode, "lr": train.lr, "beta": train.beta,
                 "steps": run_steps, "epochs": train.epochs, "batch_size": train.batch_size,
                 "preset": preset},
        headlines=headlines)
    res.add_figure("fig7_priority_pairs", plot_grid(panels, ncols=2, panel_size=(5.6, 3.8)),
                   "Per-behavior DPO loss inside each joint run (solid train rows, dashed test "
                   "rows), coloured by the projection D_i·P_i (Fig. 7).")
    res.tables.append(("Priority and speed per pair", rows))
    res.notes.append("Loss AUC is the mean loss over the run relative to its start (lower = "
                     "learned sooner). With a few dozen steps on a 135M model the separation is "
                     "small and noisy; read the p-free verdicts as indications, not proof.")
    return res


@dataclass(frozen=True)
class LMPriorityParams(LMParams):
    """:class:`LMParams` plus ``pairs``: the pairs to train, by behavior name, the larger-gap
    pair first (the paper's Fig. 7 / Fig. 12 name theirs: "(a) Training on a pair with a
    higher priority gap [...] (b) Training on a pair with a smaller priority gap"). Empty:
    the highest- and the lowest-gap pair by Eq. 5 among the behaviors (prefdyn's selection)."""

    pairs: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [p for p in self.pairs if len(p) != 2 or p[0] == p[1]]
        if bad:
            raise PrefdynError(f"experiment.pairs: every pair names two different behaviors, got {bad}")


def named_pairs(ws: Workspace, pairs: tuple[tuple[str, ...], ...]) -> list[list[int]] | None:
    """``pairs`` as behavior indices of ``ws`` (None when no pair is named)."""
    if not pairs:
        return None
    missing = sorted({n for p in pairs for n in p if n not in ws.names})
    if missing:
        raise PrefdynError(f"experiment.pairs names behaviors not loaded: {missing}; loaded: {ws.names}")
    return [[ws.names.index(a), ws.names.index(b)] for a, b in pairs]


def run_lm_priority_spec(ctx: RunContext) -> ExperimentResult:
    ws = ctx.workspace()
    return run_lm_priority(ws, ctx.train, sink=ctx.sink, loaded=ctx.model(), preset=ctx.params,
                           pairs=named_pairs(ws, ctx.params.pairs))


run_lm_priority_spec.__doc__ = run_lm_priority.__doc__

SPEC = lm_spec("lm priority", "Priority under fine-tuning",
               "Fig. 7: the highest- and the lowest-priority-gap pair (or experiment.pairs), each trained jointly.",
               run_lm_priority_spec, "lm_priority", params=LMPriorityParams)
