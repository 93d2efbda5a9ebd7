"""Experiment 3 of Im & Li (ICML 2024, Sec. 4.3 / Fig. 9), last-layer version: misalignment.

First align (DPO on the true labels), then train on flipped labels from the base
W_U and from the aligned W_U, with the same step size, and compare how fast the
flipped-label loss falls.

Two reference choices are run, because they answer different questions:

* ``reference = start`` (the usual protocol: pi_ref is the model being trained).
  In the last-layer setting the DPO loss depends on W only through W - W_ref,
  so both runs are *identical* by construction (speed-up exactly 1). The speed-up
  the paper reports comes from the hidden states becoming more distinguishable
  during full fine-tuning, which a frozen-feature run cannot show.
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
from prefdyn.training import TrainConfig

FLIP_ACCURACY = 0.9
"""Misaligned "done": this share of flipped-label prompts prefer the flipped answer."""


def steps_to_reach(steps: np.ndarray, curve: np.ndarray, level: float) -> float:
    """First step where ``curve >= level`` (inf if never)."""
    hit = np.nonzero(curve >= level)[0]
    return float(steps[hit[0]]) if len(hit) else float("inf")


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

    steps, base_loss = from_base.history.curves("loss")
    _, al_loss = from_aligned.history.curves("loss")
    _, alb_loss = from_aligned_base_ref.history.curves("loss")
    _, base_acc = from_base.history.curves("policy_acc")
    _, alb_acc = from_aligned_base_ref.history.curves("policy_acc")

    def drop(c):
        return float(c[0] - c[-1])

    speedup = {n: drop(al_loss[n]) / max(drop(base_loss[n]), 1e-12) for n in names}
    speedup_base_ref = {n: drop(alb_loss[n]) / max(drop(base_loss[n]), 1e-12) for n in names}
    flip_steps_base = {n: steps_to_reach(steps, base_acc[n], FLIP_ACCURACY) for n in names}
    flip_steps_aligned = {n: steps_to_reach(steps, alb_acc[n], FLIP_ACCURACY) for n in names}
    mean_speedup = float(np.mean(list(speedup.values())))
    mean_speedup_base_ref = float(np.mean(list(speedup_base_ref.values())))
    summary = {
        "behaviors": names, "lr": aligned.lr, "beta": train.beta, "steps": train.steps,
        "aligned_final_loss": aligned.history.last("loss"),
        "speedup_ref_start": speedup, "mean_speedup_ref_start": mean_speedup,
        "speedup_ref_base": speedup_base_ref, "mean_speedup_ref_base": mean_speedup_base_ref,
        "steps_to_flip_from_base": flip_steps_base,
        "steps_to_flip_from_aligned_ref_base": flip_steps_aligned,
    }
    res = ExperimentResult(
        name="misalignment", title="Misalignment: flipped labels from the base vs the aligned model",
        explanation=(
            "Each behavior is first aligned with DPO on the last layer, then trained on flipped "
            "labels (misalignment) from the base unembedding and from the aligned one, with the "
            "same step size. Speed-up = loss drop from the aligned start / loss drop from the base.\n\n"
            f"With the usual reference (pi_ref = the model at the start) the mean speed-up is "
            f"{fmt(mean_speedup, 3)}: last-layer DPO depends on W only through W - W_ref, so the two "
            "runs coincide. The faster misalignment of aligned models that Im & Li report comes from "
            "DPO making the hidden states more distinguishable, which needs full or LoRA training.\n\n"
            f"Keeping the base model as reference, the aligned start has a mean loss-drop ratio of "
            f"{fmt(mean_speedup_base_ref)} but must first undo its alignment before it prefers the "
            "flipped answers."),
        summary=summary,
        headlines=[("Misalignment speed-up (last layer)", fmt(mean_speedup, 3),
                    "ref = start; exactly 1 by invariance")])
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
        {"behavior": n, "speed-up (ref start)": speedup[n], "loss-drop ratio (ref base)": speedup_base_ref[n],
         f"steps to {FLIP_ACCURACY:.0%} flipped (base)": flip_steps_base[n],
         f"steps to {FLIP_ACCURACY:.0%} flipped (aligned, ref base)": flip_steps_aligned[n]}
        for n in names]))
    return res


class _Tagged:
    """Forwards metrics records to ``sink`` with a ``run`` field."""

    def __init__(self, sink, tag: str):
        self.sink, self.tag = sink, tag

    def log(self, record: dict) -> None:
        self.sink.log({"run": self.tag, **record})


SPEC = register(ExperimentSpec(
    name="misalignment", title="Misalignment: flipped labels from the base vs the aligned model",
    help="Fig. 9 (last layer): flipped labels trained from the base vs the aligned unembedding.",
    run=on_workspace(run_misalignment), last_layer=True, attribution=PERSONA_ATTRIBUTION))
