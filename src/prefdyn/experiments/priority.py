"""Experiment 2 of Im & Li (ICML 2024, Sec. 4.2, Fig. 5): behaviors trained jointly compete.

All chosen behaviors are mixed into one data set and trained together. The
update follows the mean direction b_bar of the b_i = mu_i+ - mu_i-, so a
behavior's priority level P_i = cos(b_bar, b_i) (Eq. 5), or its projection
D_i P_i, predicts which behavior's loss falls first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prefdyn.diagnostics import priority_gap_matrix, priority_levels
from prefdyn.errors import PrefdynError
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.workspace import Workspace
from prefdyn.experiments.spec import PERSONA_ATTRIBUTION, ExperimentSpec, Option, RunContext, register
from prefdyn.reports import plot_bars, plot_curves, plot_heatmap, plot_scatter_rank, spearman
from prefdyn.tracking import class_mean_difference
from prefdyn.training import TrainConfig


def loss_auc(curve: np.ndarray) -> float:
    """Mean loss over the run relative to its start: lower = learned sooner."""
    return float(np.mean(curve) / curve[0])


def run_priority(ws: Workspace, train: TrainConfig, *, which: list[int] | None = None,
                 sink=None) -> ExperimentResult:
    """Fig. 5: behaviors ``which`` (default all) mixed and trained jointly on the last layer.
    Tests Eq. 5's claim that the projection D_i P_i orders who is learned first; reports
    per-behavior loss curves, priority levels, loss AUC and (for a pair) the verdict."""
    which = list(range(len(ws.names))) if which is None else which
    names = [ws.names[i] for i in which]
    data = ws.mixture(which)
    has_test = all(len(ws.behaviors[i].test_idx) > 0 for i in which)
    run = ws.fit(data, train, names=["joint"], group_names=names,
                         test_data=ws.mixture(which, split="test") if has_test else None, sink=sink)

    per = ws.problems(which)
    bs = class_mean_difference(per).double()
    weights = per.mask.sum(1).double()
    pr = priority_levels(bs, weights)
    gaps = priority_gap_matrix(bs, weights)
    P = dict(zip(names, pr.P.tolist()))
    proj = dict(zip(names, pr.projection.tolist()))
    D = dict(zip(names, bs.norm(dim=1).tolist()))

    steps, loss = run.history.curves("loss", by="group")
    auc = {n: loss_auc(loss[n]) for n in names}
    summary = {"behaviors": names, "lr": run.lr, "beta": train.beta, "steps": train.steps,
               "priority_level": P, "projection": proj, "D": D, "loss_auc": auc,
               "final_loss": {n: float(loss[n][-1]) for n in names},
               "priority_gap": gaps.gap.tolist(), "projection_gap": gaps.proj_gap.tolist()}
    headlines = []
    if len(names) == 2:
        hi = max(names, key=lambda n: proj[n])
        faster = min(names, key=lambda n: auc[n])
        summary.update(higher_priority=hi, learned_faster=faster, prediction_holds=hi == faster)
        verdict = (f"The higher-priority behavior ({hi}, D·P = {proj[hi]:.3g}) "
                   f"{'was' if hi == faster else 'was NOT'} learned faster.")
        headlines.append(("Priority predicts the winner", "yes" if hi == faster else "no", verdict))
    else:
        rho, p = spearman([proj[n] for n in names], [auc[n] for n in names])
        summary.update(spearman_projection_auc=rho, spearman_projection_auc_p=p)
        verdict = (f"Spearman(D_i·P_i, loss AUC) = {fmt(rho)} (p = {p:.2g}); the theory predicts "
                   "a negative value (higher priority, lower area under the loss curve).")
        headlines.append(("Spearman(D·P, loss AUC)", fmt(rho), f"joint run of {len(names)}; expected < 0"))

    res = ExperimentResult(
        name="priority",
        title=(f"Priority within a pair: {names[0]} vs {names[1]}" if len(names) == 2
               else "Joint training prioritizes some behaviors"),
        explanation=(
            f"The behaviors {', '.join(names)} are mixed and trained together with DPO on the last "
            "layer. The shared update follows the mean b_bar of the per-behavior directions "
            "b_i = mu_i+ - mu_i-; Im & Li (Eq. 5) call P_i = cos(b_bar, b_i) the priority level. "
            "Behaviors with a large projection D_i·P_i are learned first; those nearly orthogonal "
            f"to b_bar starve.\n\n{verdict}"),
        summary=summary, headlines=headlines)
    res.add_figure("priority_loss_curves", plot_curves(
        steps, loss, color_values=proj, color_label="D·P", ylabel="DPO loss (per behavior)",
        title="Joint training: per-behavior loss"),
        "Loss of each behavior inside the joint run, coloured by its projection D_i·P_i.")
    res.add_figure("priority_levels", plot_bars(
        names, [P[n] for n in names], ylabel="P_i = cos(b_bar, b_i)", title="Priority levels"),
        "Priority level of each behavior (Eq. 5).")
    res.add_figure("priority_vs_auc", plot_scatter_rank(
        [proj[n] for n in names], [auc[n] for n in names], names, xlabel="D_i·P_i",
        ylabel="loss AUC (relative)", title="Priority vs speed"),
        "Relative area under each behavior's loss curve (lower = learned sooner).")
    if len(names) > 2:
        res.add_figure("priority_gap_matrix", plot_heatmap(
            gaps.gap.numpy(), names, names, title="Pairwise priority gap P_i - P_j"),
            "If behaviors i and j were trained as a pair: P_i - P_j with their pair's mean direction.")
    res.tables.append(("Priority, highest projection first", [
        {"behavior": n, "D": D[n], "P": P[n], "D·P": proj[n], "loss AUC": auc[n],
         "final loss": float(loss[n][-1])} for n in sorted(names, key=lambda n: -proj[n])]))
    return res


def highest_gap_pair(ws: Workspace) -> list[int]:
    """The two behaviors whose pairwise priority gap is largest."""
    per = ws.problems()
    gaps = priority_gap_matrix(class_mean_difference(per).double(), per.mask.sum(1).double())
    i, j = np.unravel_index(int(torch.argmax(gaps.proj_gap)), gaps.proj_gap.shape)
    return [int(i), int(j)]


@dataclass
class PriorityParams:
    """``pair``: train only this pair, ``"a,b"`` or ``"auto"`` (the largest priority gap);
    None: every behavior jointly."""

    pair: str | None = None


def run_priority_spec(ctx: RunContext) -> ExperimentResult:
    """Fig. 5 of Im & Li: the behaviors (or one pair) trained jointly on the last layer; does
    the priority level predict which is learned first? Reports loss curves per behavior,
    priority levels, loss AUC and the verdict."""
    ws = ctx.workspace()
    pair = ctx.params.pair
    which = None
    if pair == "auto":
        which = highest_gap_pair(ws)
    elif pair:
        names = pair.split(",")
        missing = [n for n in names if n not in ws.names]
        if len(names) != 2 or missing:
            raise PrefdynError(f"--pair needs two of {ws.names}, got {pair!r}")
        which = [ws.names.index(n) for n in names]
    return run_priority(ws, ctx.train, which=which, sink=ctx.sink)


SPEC = register(ExperimentSpec(
    name="priority", title="Joint training prioritizes some behaviors",
    help="Fig. 5: behaviors trained jointly; does the priority level predict who is learned first?", run=run_priority_spec,
    params=PriorityParams, last_layer=True, attribution=PERSONA_ATTRIBUTION,
    options={"pair": Option('Train only this pair: "a,b", or "auto" for the largest priority gap.')}))
