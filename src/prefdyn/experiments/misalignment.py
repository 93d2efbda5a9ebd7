"""Experiment 3 of Im & Li (ICML 2024, Sec. 4.3 / Fig. 9), last-layer version: misalignment.

First align (DPO on the true labels), then train on flipped labels from the base
W_U and from the aligned W_U, with the same step size, and compare how fast the
flipped-label loss falls.

Two reference choices are run, because they answer different questions:

* ``reference = start`` (the usual protocol: pi_ref is the model being trained).
  This last-layer version is prefdyn's extension, not the paper's experiment: the
  DPO loss depends on W only through W - W_ref, so both runs are *identical* by
  construction and the speed-up (:func:`prefdyn.tracking.speedup.misalignment_speedup`,
  the definition the LM and HH-RLHF experiments use too) is exactly 1. It is a
  check of the invariance, not a finding. The speed-up the paper reports comes
  from the hidden states becoming more distinguishable during full fine-tuning
  (:mod:`prefdyn.experiments.lm_misalignment`), which frozen features cannot show.
* ``reference = base`` (pi_ref stays the base model): the aligned start sits on
  the wrong side of the flipped preference, so its loss starts high and its
  gradients are large; we report how the loss drop and the flip of the
  preference compare.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.workspace import Workspace
from prefdyn.experiments.spec import PERSONA_ATTRIBUTION, ExperimentSpec, on_workspace, register
from prefdyn.reports import plot_pair_curves
from prefdyn.tracking import metrics as M
from prefdyn.tracking.speedup import speedups
from prefdyn.training import TrainConfig

FLIP_ACCURACY = 0.9
"""Misaligned "done": this share of flipped-label prompts prefer the flipped answer."""


def steps_to_reach(steps: np.ndarray, curve: np.ndarray, level: float) -> float:
    """First step where ``curve >= level`` (inf if never)."""
    hit = np.nonzero(curve >= level)[0]
    return float(steps[hit[0]]) if len(hit) else float("inf")


SPEEDUP_TEXT = ("Speed-up = drop of the flipped-label DPO loss on the training rows from the "
                "aligned start / from the base start, over the same steps "
                "(prefdyn.tracking.speedup.misalignment_speedup).")


def run_misalignment(ws: Workspace, train: TrainConfig, *, which: list[int] | None = None,
                     sink=None) -> ExperimentResult:
    """Fig. 9, last layer: align, then train on flipped labels from the base and from the
    aligned W_U. Reports the loss-drop speed-up (exactly 1 with reference = start, by
    invariance) and, with the base model as reference, steps until the flip."""
    which = list(range(len(ws.names))) if which is None else which
    names = [ws.names[i] for i in which]
    aligned = ws.fit(ws.problems(which), train, names=names)
    # One step size for every run so that speeds are comparable.
    same = dataclasses.replace(train, lr=aligned.lr)
    W_aligned = aligned.policy.W.detach().clone()
    flipped = ws.problems(which, flip=True)

    W_base = ws.start_weights(train.rows)[0]

    def fit(start, reference=None, tag=""):
        return ws.fit(flipped, same, start=start, reference=reference, names=names,
                      sink=_Tagged(sink, tag) if sink is not None else None)

    from_base = fit(None, tag="from_base")
    from_aligned = fit(W_aligned, tag="from_aligned")
    from_aligned_base_ref = fit(W_aligned, reference=W_base, tag="from_aligned_base_ref")

    steps, base_loss = from_base.history.curves(M.LOSS)
    _, al_loss = from_aligned.history.curves(M.LOSS)
    _, alb_loss = from_aligned_base_ref.history.curves(M.LOSS)
    _, base_acc = from_base.history.curves(M.POLICY_ACC)
    _, alb_acc = from_aligned_base_ref.history.curves(M.POLICY_ACC)

    speedup, mean_speedup = speedups(steps, al_loss, base_loss, names)
    speedup_base_ref, mean_speedup_base_ref = speedups(steps, alb_loss, base_loss, names)
    flip_steps_base = {n: steps_to_reach(steps, base_acc[n], FLIP_ACCURACY) for n in names}
    flip_steps_aligned = {n: steps_to_reach(steps, alb_acc[n], FLIP_ACCURACY) for n in names}
    summary = {
        "behaviors": names, "lr": aligned.lr, "beta": train.beta, "steps": train.steps,
        "aligned_final_loss": aligned.history.last(M.LOSS),
        M.SPEEDUP: speedup, M.MEAN_SPEEDUP: mean_speedup,
        "speedup_note": "prefdyn's last-layer extension: exactly 1 by construction, not a finding",
        "speedup_ref_base": speedup_base_ref, "mean_speedup_ref_base": mean_speedup_base_ref,
        "steps_to_flip_from_base": flip_steps_base,
        "steps_to_flip_from_aligned_ref_base": flip_steps_aligned,
    }
    res = ExperimentResult(
        name="misalignment", title="Misalignment: flipped labels from the base vs the aligned model",
        explanation=(
            "Each behavior is first aligned with DPO on the last layer, then trained on flipped "
            "labels (misalignment) from the base unembedding and from the aligned one, with the "
            f"same step size. {SPEEDUP_TEXT}\n\n"
            "This last-layer version is prefdyn's extension, not a finding: with the usual reference "
            "(pi_ref = the model at the start) last-layer DPO depends on W only through W - W_ref, so "
            f"the two runs coincide by construction and the mean speed-up ({fmt(mean_speedup, 3)}) is "
            "exactly 1. The faster misalignment of aligned models that Im & Li report comes from DPO "
            "making the hidden states more distinguishable, which needs full or LoRA training "
            "(prefdyn lm misalignment).\n\n"
            f"Keeping the base model as reference, the aligned start has a mean loss-drop ratio of "
            f"{fmt(mean_speedup_base_ref)} but must first undo its alignment before it prefers the "
            "flipped answers."),
        summary=summary,
        headlines=[("Invariance check: speed-up, last layer (prefdyn extension)", fmt(mean_speedup, 3),
                    "exactly 1 by construction (W enters only through W − W_ref); not a finding")])
    res.add_figure("misalignment_ref_start", plot_pair_curves(
        steps, base_loss, al_loss, label_a="from base", label_b="from aligned",
        ylabel="DPO loss on flipped labels", title="Misalignment, reference = start",
        annotations={n: f"x{speedup[n]:.2f}" for n in names}),
        "Flipped-label loss from the base (solid) and the aligned (dashed) unembedding.")
    res.add_figure("misalignment_ref_base", plot_pair_curves(
        steps, base_acc, alb_acc, label_a="from base", label_b="from aligned",
        ylabel="share preferring the flipped answer", title="Misalignment, reference = base"),
        "Policy accuracy on the flipped labels, with the base model as the reference for both.")
    res.tables.append(("Misalignment per behavior", [
        {"behavior": n, "speedup (ref start, 1 by construction)": speedup[n],
         "speedup_ref_base": speedup_base_ref[n],
         f"steps to {FLIP_ACCURACY:.0%} flipped (base)": flip_steps_base[n],
         f"steps to {FLIP_ACCURACY:.0%} flipped (aligned, ref base)": flip_steps_aligned[n]}
        for n in names]))
    return res


class _Tagged:
    """Forwards metrics records to ``sink`` with a ``run`` field; ``path`` is the sink's
    run folder (where a run's checkpoints go)."""

    def __init__(self, sink, tag: str):
        self.sink, self.tag = sink, tag
        self.path = getattr(sink, "path", None)

    def log(self, record: dict) -> None:
        self.sink.log({"run": self.tag, **record})


SPEC = register(ExperimentSpec(
    name="misalignment", title="Misalignment: flipped labels from the base vs the aligned model",
    help="Fig. 9 (last layer): flipped labels trained from the base vs the aligned unembedding.",
    run=on_workspace(run_misalignment), last_layer=True, attribution=PERSONA_ATTRIBUTION))
