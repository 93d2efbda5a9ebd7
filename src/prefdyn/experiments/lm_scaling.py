"""The K x Q scaling law (Im & Li 2024b, "Can DPO Learn Diverse Human Values?") with every weight
(``full``) or LoRA adapters trained, not only the last layer.

The summary of the paper (``../shared/papers``): "The training procedure uses AdamW optimizer with
learning rate 1e-5 and batch size 32 per GPU" on LLaMA-2-7B, and "Training reward margins grow more
rapidly with fewer preference concepts (clusters)", "Test reward margins follow the same trend as
training margins", "Generalization error decreases as the number of samples per concept
increases". Each ``(K, Q)`` cell mixes the first ``K`` persona behaviors of one seeded order, ``Q``
training rows per (behavior, class), trains one LM run from the base model for the same number of
steps, and tracks the mean reward margin on its train rows and on the behaviors' test rows. The
cells use the one LM runner (:func:`~prefdyn.experiments.lm_common.train_lm`); the last-layer
version is ``prefdyn theory scaling``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from prefdyn.data.tasks import mix_behaviors
from prefdyn.errors import PrefdynError
from prefdyn.experiments.lm_common import LM_OPTIONS, LMParams, LMTask, lm_spec, train_lm
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import Option, RunContext
from prefdyn.experiments.theory_scaling import q_gap_effect
from prefdyn.experiments.workspace import Workspace
from prefdyn.reports import plot_curves
from prefdyn.theory.scaling import fit_exponent, steps_to_margin
from prefdyn.tracking import metrics as M
from prefdyn.training.config import TrainConfig


@dataclass(frozen=True)
class LMScalingParams(LMParams):
    """:class:`LMParams` plus the grid: ``ks`` (behaviors mixed) and ``qs`` (training rows per
    behavior and class); ``target``: the train margin whose first crossing is each cell's speed
    (None: half the smallest final train margin of the largest-Q cells)."""

    ks: tuple[int, ...] = (1, 2, 4)
    qs: tuple[int, ...] = (4, 8)
    target: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ks or not self.qs or min(self.ks) < 1 or min(self.qs) < 1:
            raise PrefdynError(f"experiment.ks and qs need values >= 1, got {self.ks}, {self.qs}")


def cell_task(ws: Workspace, loaded, order: list[int], K: int, Q: int, generator: torch.Generator) -> LMTask:
    """Behaviors ``order[:K]`` mixed, each limited to ``Q`` seeded training rows per class (its
    test rows kept whole)."""
    parts = []
    for i in order[:K]:
        b = ws.behaviors[i]
        idx = b.train_idx[torch.randperm(len(b.train_idx), generator=generator)]
        pos, neg = idx[b.prefers_yes[idx]], idx[~b.prefers_yes[idx]]
        if min(len(pos), len(neg)) < Q:
            raise PrefdynError(f"Q = {Q} asked for, but {b.name} has only {min(len(pos), len(neg))} training "
                               "rows of one class; lower experiment.qs or use more data (--data, --n)")
        parts.append(dataclasses.replace(b, train_idx=torch.cat([pos[:Q], neg[:Q]]).sort().values))
    max_len = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    return LMTask(mix_behaviors(parts, name=f"K{K}_Q{Q}"), ws.answer_ids[0], ws.answer_ids[1],
                  loaded.tokenizer, max_len)


def run_lm_scaling(ws: Workspace, train: TrainConfig, *, loaded, preset: LMScalingParams, sink=None,
                   seed: int = 0) -> ExperimentResult:
    """Every ``(K, Q)`` cell trained from the base model for ``train.steps`` steps in
    ``preset.mode``; margins, the steps to the target margin, its exponent in K and the Q effect."""
    ks = [k for k in preset.ks if k <= len(ws.names)]
    if not ks:
        raise PrefdynError(f"experiment.ks {preset.ks}: the data has only {len(ws.names)} behaviors")
    order = torch.randperm(len(ws.names), generator=torch.Generator().manual_seed(seed)).tolist()
    train = dataclasses.replace(train, epochs=None)  # one step budget for every cell, so speeds compare
    curves, cells = {}, []
    for K in ks:
        for Q in preset.qs:
            name = f"K={K}, Q={Q}"
            task = cell_task(ws, loaded, order, K, Q, torch.Generator().manual_seed(seed + 1))
            tr = train_lm(loaded, task, train, preset, sink=sink, name=f"K{K}_Q{Q}", snapshots=False)
            steps, m_train = tr.history.curves(M.MARGIN, split="train_eval", by="problem")
            t_steps, m_test = tr.history.curves(M.MARGIN, split="test", by="problem")
            run = f"K{K}_Q{Q}"
            curves[name] = (steps, m_train[run], t_steps, m_test.get(run))
            cells.append({"K": K, "Q": Q, "final train margin": float(m_train[run][-1]),
                          "final test margin": float(m_test[run][-1]) if run in m_test else float("nan"),
                          "seconds": tr.seconds})
    q_max = max(preset.qs)
    target = preset.target or 0.5 * min(c["final train margin"] for c in cells if c["Q"] == q_max)
    for c in cells:
        steps, m_train, _, _ = curves[f"K={c['K']}, Q={c['Q']}"]
        c["steps to target (train)"] = steps_to_margin(steps, m_train, target)
    at_q = [c for c in cells if c["Q"] == q_max]
    expo = fit_exponent([c["K"] for c in at_q], [c["steps to target (train)"] for c in at_q])
    effect = q_gap_effect(cells)
    smaller = sum(v["gap_large_Q"] < v["gap_small_Q"] for v in effect.values())
    summary = {"mode": preset.mode, "Ks": ks, "Qs": list(preset.qs), "lr": train.lr, "beta": train.beta,
               "steps": train.steps, "target_margin": target, "exponent_steps_vs_K": {str(q_max): expo},
               "exponent_is": "fitted here; the paper states no exponent in K", "q_gap_effect": effect,
               "cells": cells, "behavior_order": [ws.names[i] for i in order[:max(ks)]]}
    res = ExperimentResult(
        name="lm_scaling", title=f"Scaling law, {preset.mode} fine-tuning: K concepts x Q samples",
        explanation=(
            f"Each cell mixes K persona behaviors with Q training rows per (behavior, class) and trains "
            f"{'every weight' if preset.mode == 'full' else 'LoRA adapters'} from the base model for "
            f"{train.steps} steps (AdamW, lr {train.lr:g}, beta {train.beta:g}); the mean reward margin is "
            f"tracked on the cell's train rows and on its behaviors' test rows. Im & Li 2024b (summary): "
            "\"Training reward margins grow more rapidly with fewer preference concepts (clusters)\" and "
            "\"Generalization error decreases as the number of samples per concept increases\".\n\n"
            f"Measured: steps to a train margin of {target:.3g} grow like K^{fmt(expo)} at Q = {q_max}; the "
            f"train - test margin gap is smaller at Q = {q_max} than at Q = {min(preset.qs)} for {smaller} of "
            f"{len(effect)} values of K."),
        summary=summary,
        headlines=[("Steps-to-margin exponent in K", fmt(expo), f"Q = {q_max}, train rows"),
                   ("More samples per concept, smaller train-test gap", f"{smaller}/{len(effect)} K",
                    f"Q = {q_max} vs Q = {min(preset.qs)}")])
    at = {n: v for n, v in curves.items() if n.endswith(f"Q={q_max}")}
    res.add_figure("lm_scaling_margins", plot_curves(
        {n: v[0] for n, v in at.items()}, {n: v[1] for n, v in at.items()},
        dashed={n: v[3] for n, v in at.items() if v[3] is not None}, dashed_steps=next(iter(at.values()))[2],
        ylabel="mean reward margin", title=f"Reward margins, Q = {q_max}"),
        "Train rows (solid) and test rows (dashed) per K.")
    gaps = {(c["K"], c["Q"]): c["final train margin"] - c["final test margin"] for c in cells}
    res.add_figure("lm_scaling_q_effect", plot_curves(
        {f"K={K}": np.array(preset.qs, dtype=float) for K in ks},
        {f"K={K}": np.array([gaps[(K, Q)] for Q in preset.qs]) for K in ks},
        xlabel="Q (rows per behavior and class)", ylabel="final train - test margin",
        title="More samples per concept, smaller generalization gap?"), "One curve per K.")
    res.tables.append(("Per (K, Q) cell", cells))
    return res


def run_lm_scaling_spec(ctx: RunContext) -> ExperimentResult:
    return run_lm_scaling(ctx.workspace(), ctx.train, loaded=ctx.model(), preset=ctx.params, sink=ctx.sink,
                          seed=ctx.cfg.seed)


run_lm_scaling_spec.__doc__ = run_lm_scaling.__doc__

SPEC = lm_spec("lm scaling", "Scaling law under fine-tuning: K concepts x Q samples",
               "Im & Li 2024b with every weight or LoRA trained: margins over K behaviors x Q rows per class.",
               run_lm_scaling_spec, "lm_scaling", params=LMScalingParams,
               options={**LM_OPTIONS, "ks": Option("Behaviors mixed per cell, e.g. 1,2,4."),
                        "qs": Option("Training rows per behavior and class, e.g. 4,8.")})
