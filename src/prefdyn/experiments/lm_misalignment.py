"""Im & Li (ICML 2024), Sec. 5 / Fig. 9: misalignment from the base vs the aligned model,
with every weight (``full``) or LoRA adapters (``lora``) trained.

Protocol (the paper's): DPO on the true labels gives the aligned model; then DPO
on flipped labels (``data.tasks.flip``) from the base model and from the aligned
model, each with the model at its own start as the reference. In the last-layer
version the two flipped runs coincide by construction (the loss depends on W
only through W - W_ref); here the hidden states move too, so the aligned start
can be misaligned faster. The mechanism Im & Li propose is that DPO makes the
two classes of a behavior more distinguishable (larger D), which the embedding
snapshots before and after alignment measure.

Reported per behavior: the flipped-label loss (whole train and test rows, every
``eval_every`` steps) from the base vs the aligned start, the speed-up
(:func:`prefdyn.tracking.speedup.misalignment_speedup` of that loss), the steps until
``FLIP_ACCURACY`` of the rows prefer the flipped answer, and D before/after alignment.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from prefdyn.experiments.hh_rlhf import release, trained_loaded
from prefdyn.experiments.lm_common import (
    LM_OPTIONS,
    LMExperimentPreset,
    LMParams,
    LMTraining,
    lm_spec,
    lm_task,
    on_lm_workspace,
    spread_by_D,
    train_lm,
)
from prefdyn.experiments.misalignment import FLIP_ACCURACY, SPEEDUP_TEXT, _Tagged, steps_to_reach
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import Option
from prefdyn.experiments.workspace import Workspace
from prefdyn.models import LoadedModel
from prefdyn.reports import plot_pair_curves
from prefdyn.tracking import metrics as M
from prefdyn.tracking.speedup import speedups
from prefdyn.training.config import TrainConfig

log = logging.getLogger(__name__)

def _curves(training: LMTraining, metric: str, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-behavior curves; with one behavior there are no group records, only the run's."""
    steps, curves = training.history.curves(metric, split=split, by="group")
    if not curves and len(training.task.group_names) == 1:
        steps, whole = training.history.curves(metric, split=split, by="problem")
        if whole:
            curves = {training.task.group_names[0]: next(iter(whole.values()))}
    return steps, curves


@dataclass(frozen=True)
class LMMisalignmentParams(LMParams):
    """:class:`LMParams` plus ``per_behavior``: align and misalign each behavior in its own runs
    (Sec. 5.3: "we fine-tune the model using the flipped preference labels, for each behavior"),
    the default; False trains the behaviors as one mixture (prefdyn's variant, which mixes the
    priority effect of Fig. 7 into the speed-ups)."""

    per_behavior: bool = True


@dataclass
class _Phases:
    """Align, then flip from the base and from the aligned model, for one set of behaviors:
    per-behavior curves (train rows ``split``, test rows) and the numbers read from them."""

    steps: np.ndarray
    loss_base: dict[str, np.ndarray]
    loss_al: dict[str, np.ndarray]
    acc_base: dict[str, np.ndarray]
    acc_al: dict[str, np.ndarray]
    speedup: dict[str, float]
    test_speedup: dict[str, float]
    align_acc: dict[str, float]
    D: tuple[dict[str, float], dict[str, float]]
    scale_free_D: tuple[dict[str, float], dict[str, float]]
    seconds: dict[str, float]
    align_steps: int
    flip_steps: int
    lr: float


def _run_phases(ws: Workspace, loaded: LoadedModel, which: list[int], train: TrainConfig,
                preset: LMExperimentPreset, sink, align_steps: int | None, suffix: str = "") -> _Phases:
    """The paper's protocol on the behaviors ``which`` (one mixture); run names end in ``suffix``."""
    names = [ws.names[i] for i in which]
    task = lm_task(ws, loaded, which, name="align")
    flipped = lm_task(ws, loaded, which, flip=True, name="flipped")

    def tagged(tag):
        return _Tagged(sink, tag) if sink is not None else None

    # An explicit align_steps replaces train's steps and epochs for the alignment phase.
    align_cfg = dataclasses.replace(train, steps=align_steps, epochs=None) if align_steps else train
    aligned = train_lm(loaded, task, align_cfg, preset, sink=tagged("align" + suffix), name="align" + suffix)
    aligned_loaded = trained_loaded(loaded, aligned.run)
    release(aligned.run)
    from_base = train_lm(loaded, flipped, train, preset, sink=tagged("flip_from_base" + suffix),
                         name="flip_from_base" + suffix, snapshots=False)
    release(from_base.run)
    from_aligned = train_lm(aligned_loaded, flipped, train, preset, sink=tagged("flip_from_aligned" + suffix),
                            name="flip_from_aligned" + suffix, snapshots=False, copy_model=False)
    del aligned_loaded
    release(from_aligned.run)

    split = "train_eval"
    steps, loss_base = _curves(from_base, M.LOSS, split)
    _, loss_al = _curves(from_aligned, M.LOSS, split)
    _, acc_base = _curves(from_base, M.POLICY_ACC, split)
    _, acc_al = _curves(from_aligned, M.POLICY_ACC, split)
    test_steps, test_base = _curves(from_base, M.LOSS, "test")
    _, test_al = _curves(from_aligned, M.LOSS, "test")
    _, align_acc = _curves(aligned, M.POLICY_ACC, split)
    return _Phases(
        steps, loss_base, loss_al, acc_base, acc_al, speedups(steps, loss_al, loss_base, names)[0],
        speedups(test_steps, test_al, test_base, names)[0], {n: float(align_acc[n][-1]) for n in names},
        # Full fine-tuning rescales the hidden states; D / sqrt(trace Sigma) does not see that.
        _snapshot_D(aligned), _snapshot_D(aligned, "scale_free_D"),
        {"align" + suffix: aligned.seconds, "flip_from_base" + suffix: from_base.seconds,
         "flip_from_aligned" + suffix: from_aligned.seconds},
        aligned.steps, from_base.steps, aligned.run.lr)


def _merge(runs: list[_Phases]) -> _Phases:
    """One :class:`_Phases` of several per-behavior runs; curves cut to the shortest run's
    evaluation steps (runs of equally many rows have the same ones)."""
    if len(runs) == 1:
        return runs[0]
    n = min(len(r.steps) for r in runs)

    def cut(attr):
        return {k: v[:n] for r in runs for k, v in getattr(r, attr).items()}

    def union(attr):
        return {k: v for r in runs for k, v in getattr(r, attr).items()}

    def pair(attr):
        return tuple({k: v for r in runs for k, v in getattr(r, attr)[i].items()} for i in (0, 1))

    first = runs[0]
    return _Phases(first.steps[:n], cut("loss_base"), cut("loss_al"), cut("acc_base"), cut("acc_al"),
                   union("speedup"), union("test_speedup"), union("align_acc"), pair("D"), pair("scale_free_D"),
                   union("seconds"), first.align_steps, first.flip_steps, first.lr)


def run_lm_misalignment(ws: Workspace, train: TrainConfig, *, loaded: LoadedModel,
                        preset: LMExperimentPreset, sink=None, which: list[int] | None = None,
                        align_steps: int | None = None) -> ExperimentResult:
    """Align (true labels), then misalign (flipped labels) from the base and from the aligned
    model, in ``preset.mode``: each behavior in its own runs when ``preset.per_behavior`` (the
    paper's protocol), else all as one mixture. ``train`` sets the optimisation of every phase
    (``align_steps`` overrides the alignment's step count); ``loaded`` stays the base model."""
    if which is None:
        which = spread_by_D(ws, preset.n_behaviors) if ws.behaviors else []
    names = [ws.names[i] for i in which]
    mode = preset.mode
    per_behavior = bool(getattr(preset, "per_behavior", False)) and len(which) > 1
    groups = [[i] for i in which] if per_behavior else [list(which)]
    ph = _merge([_run_phases(ws, loaded, g, train, preset, sink, align_steps,
                             suffix=f"_{ws.names[g[0]]}" if per_behavior else "") for g in groups])
    steps, loss_base, loss_al, acc_base, acc_al = ph.steps, ph.loss_base, ph.loss_al, ph.acc_base, ph.acc_al
    speedup, test_speedup = ph.speedup, ph.test_speedup
    finite = [v for v in speedup.values() if np.isfinite(v)]
    mean_speedup = float(np.mean(finite)) if finite else float("nan")
    flip_base = {n: steps_to_reach(steps, acc_base[n], FLIP_ACCURACY) for n in names}
    flip_al = {n: steps_to_reach(steps, acc_al[n], FLIP_ACCURACY) for n in names}
    (D_before, D_after), (sfD_before, sfD_after) = ph.D, ph.scale_free_D
    faster = sum(v > 1 for v in finite)
    runs_text = ("each behavior in its own runs (the paper's \"for each behavior\")" if per_behavior
                 else "as one mixture" if len(names) > 1 else "")
    summary = {
        "mode": mode, "behaviors": names, "per_behavior": per_behavior, "lr": ph.lr, "beta": train.beta,
        "steps": ph.flip_steps, "align_steps": ph.align_steps, "epochs": train.epochs,
        "batch_size": train.batch_size,
        "aligned_policy_acc": ph.align_acc,
        M.SPEEDUP: speedup, M.MEAN_SPEEDUP: mean_speedup, "test_speedup": test_speedup,
        "steps_to_flip_from_base": flip_base, "steps_to_flip_from_aligned": flip_al,
        "final_flipped_acc_from_base": {n: float(acc_base[n][-1]) for n in names},
        "final_flipped_acc_from_aligned": {n: float(acc_al[n][-1]) for n in names},
        "D_before_alignment": D_before, "D_after_alignment": D_after,
        "scale_free_D_before_alignment": sfD_before, "scale_free_D_after_alignment": sfD_after,
        "seconds": ph.seconds,
    }
    res = ExperimentResult(
        name=f"lm_misalignment_{mode}",
        title=f"Misalignment ({mode}): flipped labels from the base vs the aligned model",
        explanation=(
            f"{len(names)} behaviors ({', '.join(names)}) are aligned with {mode} DPO {runs_text} "
            f"({ph.align_steps} steps, AdamW lr {ph.lr:g}, beta {train.beta}), then "
            f"trained {ph.flip_steps} steps on flipped labels from the base model and from the "
            "aligned model, each with its own start as the reference (the paper's protocol). "
            f"{SPEEDUP_TEXT}\n\n"
            "Unlike prefdyn's last-layer version (speed-up exactly 1 by construction), the hidden "
            "states move here; Im & Li (Fig. 9) find aligned models misaligned faster and trace "
            "it to larger distinguishability D after DPO."),
        summary=summary,
        headlines=[(f"Misalignment speed-up ({mode})", fmt(mean_speedup),
                    f"{faster} of {len(finite)} behaviors faster from the aligned model")])
    res.add_figure(f"misalignment_{mode}_loss", plot_pair_curves(
        steps, loss_base, loss_al, label_a="from base", label_b="from aligned",
        ylabel="DPO loss on flipped labels (train rows)", title=f"Misalignment, {mode}",
        annotations={n: f"x{speedup[n]:.2f}" for n in names}),
        "Flipped-label loss of every training row from the base (solid) and the aligned "
        "(dashed) model.")
    res.add_figure(f"misalignment_{mode}_acc", plot_pair_curves(
        steps, acc_base, acc_al, label_a="from base", label_b="from aligned",
        ylabel="share preferring the flipped answer", title=f"Misalignment, {mode}: accuracy"),
        f"Share of training rows whose flipped answer has the higher log-prob; "
        f"'flipped' = {FLIP_ACCURACY:.0%}.")
    res.tables.append((f"Misalignment per behavior ({mode})", [
        {"behavior": n, "speedup (train)": speedup[n], "speedup (test)": test_speedup.get(n),
         f"steps to {FLIP_ACCURACY:.0%} flipped (base)": flip_base[n],
         f"steps to {FLIP_ACCURACY:.0%} flipped (aligned)": flip_al[n],
         "aligned acc.": summary["aligned_policy_acc"][n],
         "D before": D_before.get(n), "D after alignment": D_after.get(n),
         "scale-free D before": sfD_before.get(n), "scale-free D after": sfD_after.get(n)}
        for n in names]))
    res.notes.append(_verdict(summary, names))
    return res


def _snapshot_D(aligned: LMTraining, key: str = "D") -> tuple[dict[str, float], dict[str, float]]:
    """Per-behavior ``key`` (D or scale_free_D) of the probe before (step 0) and after
    alignment (last snapshot)."""
    snaps = aligned.snapshots
    if snaps is None or not snaps.snapshots:
        return {}, {}
    first, last = min(snaps.snapshots), max(snaps.snapshots)
    before, after = snaps.stats(first), snaps.stats(last)
    return ({n: v[key] for n, v in before.items()}, {n: v[key] for n, v in after.items()})


def _verdict(s: dict, names: list[str]) -> str:
    sp = s[M.SPEEDUP]
    faster = [n for n in names if np.isfinite(sp[n]) and sp[n] > 1]
    parts = [(f"The aligned model was misaligned faster for {len(faster)} of {len(names)} "
              f"behaviors (mean speed-up {fmt(s[M.MEAN_SPEEDUP])}).")]
    Db, Da = s["D_before_alignment"], s["D_after_alignment"]
    grew = [n for n in names if n in Db and n in Da and Da[n] > Db[n]]
    if Db:
        parts.append(f"Alignment raised D for {len(grew)} of {len(names)} behaviors "
                     f"({', '.join(f'{n}: {fmt(Db[n])}→{fmt(Da[n])}' for n in names if n in Db)}).")
    Sb, Sa = s["scale_free_D_before_alignment"], s["scale_free_D_after_alignment"]
    if Sb:
        parts.append("Scale-free D (D / sqrt(trace Sigma)): "
                     f"{', '.join(f'{n}: {fmt(Sb[n])}→{fmt(Sa[n])}' for n in names if n in Sb)}.")
    stalled = [n for n in names if np.isfinite(sp[n]) and sp[n] > 1
               and not np.isfinite(s["steps_to_flip_from_aligned"][n])]
    if stalled:
        acc_b, acc_a = s["final_flipped_acc_from_base"], s["final_flipped_acc_from_aligned"]
        parts.append(f"Yet the faster loss drop from the aligned model did not reach "
                     f"{FLIP_ACCURACY:.0%} flipped answers for {', '.join(stalled)} (final share "
                     f"preferring the flipped answer, aligned vs base start: "
                     f"{', '.join(f'{fmt(acc_a[n])} vs {fmt(acc_b[n])}' for n in stalled)}): with "
                     "the aligned model as the reference, undoing the alignment (back to "
                     "indifference) already earns a large margin, so a loss-based speed-up "
                     "overstates how fast the flipped behavior is learned; see the accuracy plot.")
    weak = [n for n in names if s["aligned_policy_acc"][n] < 0.75]
    if weak:
        parts.append(f"Alignment was weak for {', '.join(weak)} (train accuracy < 75%), so the "
                     "aligned start is close to the base; more steps make the comparison sharper.")
    return " ".join(parts)


SPEC = lm_spec("lm misalignment", "Misalignment: flipped labels from the base vs the aligned model",
               "Fig. 9: align, then train on flipped labels from the base vs the aligned model (--mode "
               "full|lora; the preset's by_mode.lora section gives LoRA its lr unless --lr is given).",
               on_lm_workspace(run_lm_misalignment), lambda cfg: f"misalignment_{cfg.experiment.mode}",
               params=LMMisalignmentParams,
               options={**LM_OPTIONS, "per_behavior": Option(
                   "Each behavior aligned and misaligned in its own runs (the paper's; default) or, with "
                   "--no-per-behavior, all as one mixture.")})
