"""Im & Li (ICML 2024), Appendix C / Fig. 15-16: HH-RLHF with LoRA, aligned vs base misalignment.

Protocol (the paper's): LoRA DPO on the true HH-RLHF preferences gives the
*aligned* model; then LoRA DPO on flipped preferences (chosen and rejected
swapped) is run from the *base* model and from the *aligned* model (its
adapters merged, fresh adapters on top), each with the model at its own start
as the reference. What is tracked is the policy's chosen-minus-rejected
log-prob difference ``log pi(y_w|x) - log pi(y_l|x)`` on held-out pairs (the
true orientation; not a ratio to the reference), every ``eval_every`` steps.

The paper's claim: misaligning the aligned model drives that difference back
near the base model's within the first 100 steps. We report the first step at
which the aligned start has undone ``FALLBACK_SHARE`` of what alignment gained,
and the drop of the difference from the aligned start vs from the base start
over the same steps.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from prefdyn.data import load_pairs
from prefdyn.data.records import PreferencePair
from prefdyn.errors import DataError, PrefdynError
from prefdyn.experiments._resume import ResumableRun, run_identity
from prefdyn.experiments.misalignment import _Tagged
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import ExperimentSpec, Option, RunContext, register
from prefdyn.losses import loss_for_run
from prefdyn.models import LoadedModel
from prefdyn.reports import plot_pair_curves
from prefdyn.reports import plot_fallback_curves
from prefdyn.tracking import metrics as M
from prefdyn.tracking.history import History
from prefdyn.tracking.lm_metrics import LMEvalTracker
from prefdyn.tracking.speedup import decrease, misalignment_speedup
from prefdyn.training.config import TrainConfig
from prefdyn.training.lm_data import pair_batches, tokenize_pair
from prefdyn.training.lm_data import fixed_pair_batches
from prefdyn.training.lm_runner import LMRun, fit_lm

log = logging.getLogger(__name__)

HH_ATTRIBUTION = ("HH-RLHF: Anthropic (Bai et al. 2022, arXiv 2204.05862), MIT license. Theory: "
                  "Im & Li, 'Understanding the Learning Dynamics of Alignment with Human "
                  "Feedback', ICML 2024.")

FALLBACK_SHARE = 0.9
"""'Fallen back near the base': this share of the alignment gain in the held-out
log-prob difference is undone."""


@dataclass
class HHPreset:
    """Settings of the HH-RLHF experiment (built from the resolved config by :func:`run_hh_spec`;
    the named presets are YAML files under ``experiments/presets/lm-hh-rlhf/``).

    Im & Li 2024, App. C: "All training for this experiment was conducted with LoRA [...]
    applied to the query and value weights [...] with the AdamW optimizer. The learning rate
    is 1e-5 and β = 0.01. The LoRA configuration was with r = 8 and α = 32 and 0.05 dropout."
    (``lora_*``; the paper preset sets lr and beta) and "[...] for 1 epoch", and the "first
    100 steps" window. Not stated (prefdyn's choice): batch size, pair counts, the token cap.
    """

    n_train: int = 32
    n_test: int = 16
    max_tokens: int | None = 64
    batch_size: int = 4
    align_steps: int = 40
    flip_steps: int = 25
    eval_every: int = 5
    lr: float = 5e-4
    beta: float = 0.1
    window: int = 25
    """Steps within which the paper says the difference falls back (scaled in quick)."""
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "batch_size", "align_steps", "flip_steps",
                     "eval_every", "window"):
            if getattr(self, name) < 1:
                raise PrefdynError(f"hh-rlhf preset: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise PrefdynError(f"hh-rlhf preset: max_tokens must be >= 2, got {self.max_tokens}")
        if self.lr <= 0 or self.beta <= 0:
            raise PrefdynError("hh-rlhf preset: lr and beta must be > 0")


def flip_pairs(pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
    """The same pairs with chosen and rejected swapped (misalignment data)."""
    return [dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen) for p in pairs]


def select_pairs(pairs: Sequence[PreferencePair], tokenizer, n_train: int, n_test: int,
                 max_tokens: int | None, seed: int, *, context: int | None = None
                 ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """A seeded (train, test) subsample of the pairs whose prompt+response fits ``max_tokens``.

    Pairs that do not tokenize cleanly (prompt not a token prefix) or exceed the cap
    (or the model's ``context``) are left out; too few left is a DataError.
    """
    cap = min(c for c in (max_tokens, context) if c is not None) if (max_tokens or context) else None
    keep = []
    for i, p in enumerate(pairs):
        try:
            tokenize_pair(p, tokenizer, i, cap)
        except DataError:
            continue
        keep.append(p)
    need = n_train + n_test
    if len(keep) < need:
        raise DataError(f"only {len(keep)} of {len(pairs)} pairs fit {cap} tokens; "
                        f"{need} needed (n_train {n_train} + n_test {n_test}): lower them or "
                        "raise max_tokens", source=pairs[0].source.rsplit(":", 1)[0] if pairs else None)
    order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [keep[i] for i in order[:need]]
    return chosen[:n_train], chosen[n_train:]


def merged_model(run: LMRun) -> torch.nn.Module:
    """The trained model as a plain model: LoRA adapters merged into the weights."""
    model = run.policy.model
    if run.policy.lora:
        model = model.merge_and_unload()
    return model.eval()


def release(run: LMRun) -> None:
    """Drop what a finished run holds beyond its history (the trained model, the frozen
    reference copy, the optimizer state): three full copies of the model in full mode."""
    run.policy = None  # type: ignore[assignment]
    run.optimizer = None
    gc.collect()


def trained_loaded(loaded: LoadedModel, run: LMRun) -> LoadedModel:
    """The model trained in ``run`` (adapters merged) as a :class:`LoadedModel` with its
    own fingerprint: fit_lm keys its on-disk reference cache on the fingerprint, and the
    base model's would hand the aligned run the base model's reference log-probs."""
    trained = dataclasses.replace(loaded, model=merged_model(run))
    trained.refresh_fingerprint()
    if trained.fingerprint == loaded.fingerprint:
        raise PrefdynError("the trained model has the base model's fingerprint: training did "
                           "not change the weights (lr too small?)")
    return trained


def fit_with_probe(loaded: LoadedModel, train_pairs, probe_splits, tokenizer, cfg: TrainConfig,
                   preset: HHPreset, *, steps: int, mode: Literal["full", "lora"], sink, tag: str,
                   seed: int) -> tuple[LMRun, History]:
    """One fit_lm run on ``train_pairs`` with the log-prob probe attached, checkpointed
    into ``<sink's folder>/checkpoints/<tag>`` and resumed from there."""
    tagged = _Tagged(sink, tag) if sink is not None else None
    batches = pair_batches(train_pairs, tokenizer, preset.batch_size, seed)
    resumable = ResumableRun(tagged, tag, run_identity(loaded, batches, cfg, mode))
    probe_history = resumable.history()
    probe = LMEvalTracker(loss_for_run(cfg.loss, beta=cfg.beta), probe_splits, history=probe_history,
                          every=preset.eval_every, name=tag)
    log.info("hh-rlhf %s: %d steps on %d pairs", tag, steps, len(train_pairs))
    lora = {"r": preset.lora_r, "alpha": preset.lora_alpha, "dropout": preset.lora_dropout}
    run = fit_lm(loaded, batches, cfg, mode=mode, steps=steps, lora_kwargs=lora if mode == "lora" else None,
                 callbacks=[probe, *resumable.callbacks()], sink=tagged, name=tag,
                 **resumable.fit_kwargs(steps, preset.eval_every))
    return run, probe_history


def first_step_at_or_below(steps: np.ndarray, curve: np.ndarray, level: float) -> float:
    """First step where ``curve <= level`` (inf if never)."""
    hit = np.nonzero(curve <= level)[0]
    return float(steps[hit[0]]) if len(hit) else float("inf")


SPLITS = {"test": "held-out pairs", "train_probe": "training pairs"}


def fallback_stats(steps: np.ndarray, from_base: np.ndarray, from_aligned: np.ndarray,
                   window: int) -> dict[str, float]:
    """How far and how fast misalignment undoes alignment, from two log-prob-difference
    curves on the same steps (step 0 first): the base's and the aligned model's start,
    the gain, the first step at which ``FALLBACK_SHARE`` of the gain is undone, the drop
    of each curve over the window and the misalignment speed-up
    (:func:`~prefdyn.tracking.speedup.misalignment_speedup` with the window as budget)."""
    base, aligned = float(from_base[0]), float(from_aligned[0])
    gain = aligned - base
    fallback = (first_step_at_or_below(steps, from_aligned, aligned - FALLBACK_SHARE * gain)
                if gain > 0 else float("nan"))
    last = np.nonzero(steps <= window)[0][-1]
    return {"base": base, "aligned": aligned, "gain": gain, "fallback_step": fallback,
            "fell_back_within_window": bool(np.isfinite(fallback) and fallback <= window),
            "window_end": float(steps[last]),
            "drop_from_base": decrease(steps, from_base, window),
            "drop_from_aligned": decrease(steps, from_aligned, window),
            M.SPEEDUP: misalignment_speedup(steps, from_aligned, from_base, budget=window),
            "aligned_minus_base_at_window": float(from_aligned[last] - base)}


def run_hh_rlhf(loaded: LoadedModel, pairs: Sequence[PreferencePair], preset: HHPreset, *,
                seed: int = 0, mode: Literal["full", "lora"] = "lora", loss: str = "dpo",
                sink=None) -> ExperimentResult:
    """Align on the true preferences, then misalign from the base and from the aligned model.

    The log-prob difference is probed on the held-out pairs (``test``) and on a fixed
    subset of the training pairs (``train_probe``, as many as held out): DPO on few pairs
    need not generalise, and the claim can be checked on both. ``loaded`` is left
    untouched (every run trains a copy).
    """
    tok = loaded.tokenizer
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    train_pairs, test_pairs = select_pairs(pairs, tok, preset.n_train, preset.n_test,
                                           preset.max_tokens, seed, context=context)
    probe_bs = max(preset.batch_size, 8)
    probe_splits = {"test": fixed_pair_batches(test_pairs, tok, probe_bs),
                    "train_probe": fixed_pair_batches(train_pairs[:preset.n_test], tok, probe_bs)}
    cfg = TrainConfig(loss=loss, beta=preset.beta, optimizer="adamw", lr=preset.lr,
                      steps=preset.align_steps, log_every=1, eval_every=preset.eval_every, seed=seed)
    flipped = flip_pairs(train_pairs)

    def fit(start: LoadedModel, data, steps: int, tag: str):
        return fit_with_probe(start, data, probe_splits, tok, cfg, preset, steps=steps, mode=mode,
                              sink=sink, tag=tag, seed=seed)

    aligned, align_probe = fit(loaded.copy(), train_pairs, preset.align_steps, "align")
    aligned_loaded = trained_loaded(loaded, aligned)
    release(aligned)
    from_base, base_probe = fit(loaded.copy(), flipped, preset.flip_steps, "flip_from_base")
    release(from_base)
    from_aligned, al_probe = fit(aligned_loaded, flipped, preset.flip_steps, "flip_from_aligned")
    del aligned_loaded
    release(from_aligned)

    curves: dict[str, dict[str, np.ndarray]] = {}
    stats: dict[str, dict[str, float]] = {}
    steps = s_align = None
    for split in SPLITS:
        s_align, c_align = align_probe.curves(M.LOGP_DIFF, split=split)
        steps, c_base = base_probe.curves(M.LOGP_DIFF, split=split)
        _, c_al = al_probe.curves(M.LOGP_DIFF, split=split)
        _, a_base = base_probe.curves(M.POLICY_ACC, split=split)
        _, a_al = al_probe.curves(M.POLICY_ACC, split=split)
        curves[split] = {"align": c_align["align"], "base": c_base["flip_from_base"],
                         "aligned": c_al["flip_from_aligned"], "acc_base": a_base["flip_from_base"],
                         "acc_aligned": a_al["flip_from_aligned"]}
        stats[split] = fallback_stats(steps, curves[split]["base"], curves[split]["aligned"],
                                      preset.window)
    held, train = stats["test"], stats["train_probe"]
    _, loss_base = from_base.history.curves(M.LOSS)
    loss_steps, loss_al = from_aligned.history.curves(M.LOSS)

    summary = {
        "mode": mode, "beta": preset.beta, "lr": preset.lr, "seed": seed,
        "preset": dataclasses.asdict(preset), "n_train": len(train_pairs), "n_test": len(test_pairs),
        "base_logp_diff": held["base"], "aligned_logp_diff": held["aligned"],
        "alignment_gain": held["gain"], "fallback_share": FALLBACK_SHARE,
        "fallback_step": held["fallback_step"],
        "fell_back_within_window": held["fell_back_within_window"], "window": preset.window,
        "logp_diff_drop_from_base": held["drop_from_base"],
        "logp_diff_drop_from_aligned": held["drop_from_aligned"], M.SPEEDUP: held[M.SPEEDUP],
        "aligned_minus_base_at_window": held["aligned_minus_base_at_window"],
        "train_alignment_gain": train["gain"], "train_fallback_step": train["fallback_step"],
        "train_speedup": train[M.SPEEDUP], "by_split": stats,
        "align_final_loss": aligned.history.last(M.LOSS).get("align"),
    }
    res = ExperimentResult(
        name="hh_rlhf", title=f"HH-RLHF: misaligning the aligned vs the base model ({mode})",
        explanation=_explain(summary, preset, mode), summary=summary,
        headlines=[
            ("Held-out log-prob diff: base → aligned", f"{fmt(held['base'])} → {fmt(held['aligned'])}",
             "mean log π(chosen) − log π(rejected)"),
            (f"Steps to undo {FALLBACK_SHARE:.0%} of alignment (held-out / train)",
             f"{fmt(held['fallback_step'], 0)} / {fmt(train['fallback_step'], 0)}",
             f"window: {preset.window} steps"),
            ("Misalignment speed-up (held-out / train)",
             f"{fmt(held[M.SPEEDUP])} / {fmt(train[M.SPEEDUP])}",
             f"drop of {M.LOGP_DIFF} over {preset.window} steps, aligned start / base start")])
    for split, what in SPLITS.items():
        c = curves[split]
        fig = plot_fallback_curves(
            {"alignment (true prefs)": s_align, "misalign from base": steps,
             "misalign from aligned": steps},
            {"alignment (true prefs)": c["align"], "misalign from base": c["base"],
             "misalign from aligned": c["aligned"]}, base_level=stats[split]["base"],
            budget=preset.window, ylabel=f"{M.LOGP_DIFF}: log π(chosen) − log π(rejected)",
            title=f"HH-RLHF log-prob difference, {what} (Fig. 15)")
        res.add_figure(f"hh_logp_diff_{split}", fig,
                       f"Chosen-minus-rejected log-prob difference on the {what} during alignment "
                       "and during misalignment from the base and from the aligned model; dotted: "
                       f"the base model's value, dashed: the {preset.window}-step window.")
    res.add_figure("hh_flipped_loss", plot_pair_curves(
        loss_steps, {"HH-RLHF": loss_base["flip_from_base"]}, {"HH-RLHF": loss_al["flip_from_aligned"]},
        label_a="from base", label_b="from aligned", ylabel="DPO loss on flipped pairs (train)",
        title="Misalignment loss (Fig. 16)"),
        "Training loss on the flipped pairs, each run with its own start as the reference.")
    ct, cr = curves["test"], curves["train_probe"]
    res.tables.append(("Log-prob difference over misalignment", [
        {"step": int(st), "held-out from base": float(ct["base"][i]),
         "held-out from aligned": float(ct["aligned"][i]),
         "train from base": float(cr["base"][i]), "train from aligned": float(cr["aligned"][i]),
         "held-out pref. acc. from base": float(ct["acc_base"][i]),
         "held-out pref. acc. from aligned": float(ct["acc_aligned"][i])}
        for i, st in enumerate(steps)]))
    res.notes += [_verdict(stats[split], what, preset.window) for split, what in SPLITS.items()]
    if held["gain"] <= 0:
        res.warnings.append("Alignment did not raise the held-out log-prob difference (DPO on "
                            f"{len(train_pairs)} pairs did not generalise), so on held-out pairs "
                            "there is nothing to fall back from; see the training pairs, or train "
                            "on more pairs for longer.")
    return res


def _explain(s: dict, preset: HHPreset, mode: str) -> str:
    cap = f"at most {preset.max_tokens} tokens" if preset.max_tokens else "any length"
    return (
        f"{s['n_train']} training and {s['n_test']} held-out pairs of HH-RLHF (a seeded subsample "
        f"of the pairs with prompt+response of {cap}). {mode.upper()} DPO (beta {preset.beta}, "
        f"AdamW lr {preset.lr:g}, batch {preset.batch_size}) on the true preferences for "
        f"{preset.align_steps} steps gives the aligned model; then {preset.flip_steps} steps on "
        "flipped preferences from the base and from the aligned model (adapters merged, new ones "
        "on top), each with its own start as the reference.\n\n"
        "Tracked: the policy's log π(chosen) − log π(rejected) in the true orientation, on the "
        f"held-out pairs and on {s['n_test']} of the training pairs. Im & Li (App. C, Fig. 15-16) "
        "report that from the aligned model it falls back near the base model's within the "
        f"first 100 steps; here the window is {preset.window} steps.")


def _verdict(st: dict, what: str, window: int) -> str:
    if st["gain"] <= 0:
        return (f"On the {what}, alignment did not raise the log-prob difference "
                f"({fmt(st['base'])} → {fmt(st['aligned'])}), so there is no fall-back to test.")
    fb = st["fallback_step"]
    when = f"after {fmt(fb, 0)} steps" if np.isfinite(fb) else "not within the steps run"
    within = "inside" if st["fell_back_within_window"] else "not inside"
    return (f"On the {what}, alignment raised the log-prob difference {fmt(st['base'])} → "
            f"{fmt(st['aligned'])}; misalignment from the aligned model undid "
            f"{FALLBACK_SHARE:.0%} of that gain {when} ({within} the {window}-step window). Over "
            f"the window it dropped by {fmt(st['drop_from_aligned'])} from the aligned start vs "
            f"{fmt(st['drop_from_base'])} from the base start (speed-up {fmt(st[M.SPEEDUP])}); at the "
            f"window's end the aligned run sits {fmt(st['aligned_minus_base_at_window'])} above "
            "the base model's starting value.")


@dataclass
class HHParams:
    """The ``experiment:`` params of ``lm hh-rlhf``; lr, beta, batch size and eval_every are
    ``train``'s. ``pairs``: the HH-RLHF file (.jsonl or .jsonl.gz)."""

    pairs: str | None = None
    mode: Literal["full", "lora"] = "lora"
    n_train: int = 32
    n_test: int = 16
    max_tokens: int | None = 64
    align_steps: int = 40
    flip_steps: int = 25
    window: int = 25
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05

    def __post_init__(self) -> None:
        if self.mode not in ("full", "lora"):
            raise PrefdynError(f"--mode (experiment.mode) must be full or lora, got {self.mode!r}")


def run_hh_spec(ctx: RunContext) -> ExperimentResult:
    """Fig. 15-16 (App. C): LoRA DPO on HH-RLHF, then flipped preferences from the base vs the
    aligned model; tests whether the held-out log-prob difference falls back near the base's
    within the window (see :func:`run_hh_rlhf`)."""
    p, train = ctx.params, ctx.train
    if p.pairs is None:
        raise PrefdynError("give the preference pairs with --pairs PATH "
                           "(e.g. ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz)")
    if train.lr is None:
        raise PrefdynError("lm hh-rlhf needs a learning rate: --lr or train.lr")
    batch = train.batch_size or 4
    # train.epochs (App. C: "for 1 epoch") sets both phases from the training pairs.
    align, flip = ((p.align_steps, p.flip_steps) if train.epochs is None
                   else (train.epochs * -(-p.n_train // batch),) * 2)
    settings = HHPreset(n_train=p.n_train, n_test=p.n_test, max_tokens=p.max_tokens,
                        batch_size=batch, align_steps=align, flip_steps=flip,
                        eval_every=train.eval_every, lr=train.lr, beta=train.beta, window=p.window,
                        lora_r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout)
    loaded = ctx.model()
    ctx.subtitle, ctx.footer["data"] = f"{loaded.name}, {p.mode}", p.pairs
    return run_hh_rlhf(loaded, load_pairs(p.pairs, on_error="skip"), settings, seed=ctx.cfg.seed,
                       mode=p.mode, loss=train.loss, sink=ctx.sink)


SPEC = register(ExperimentSpec(
    name="lm hh-rlhf", title="HH-RLHF: misaligning the aligned vs the base model",
    help="Fig. 15-16 (App. C): LoRA DPO on HH-RLHF, then flipped preferences from the base vs the "
         "aligned model; does the held-out log-prob difference fall back near the base's?",
    run=run_hh_spec, params=HHParams, folder=lambda cfg: "hh_rlhf", default_out="runs/lm",
    default_preset="quick", attribution=HH_ATTRIBUTION,
    options={"pairs": Option("HH-RLHF pairs (.jsonl or .jsonl.gz), e.g. ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz."),
             "mode": Option("lora (the paper's App. C) or full."),
             "n_train": Option("Training pairs (seeded subsample)."),
             "n_test": Option("Held-out pairs."),
             "max_tokens": Option("Keep pairs whose prompt+response fits this many tokens."),
             "align_steps": Option("Steps on the true preferences."),
             "flip_steps": Option("Steps on the flipped preferences."),
             "window": Option("Steps within which the difference should fall back."),
             "lora_r": Option("LoRA rank (App. C: 8)."), "lora_alpha": Option("LoRA alpha (App. C: 32)."),
             "lora_dropout": Option("LoRA dropout (App. C: 0.05).")}))
