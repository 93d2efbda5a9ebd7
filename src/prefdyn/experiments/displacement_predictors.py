"""Which score predicts likelihood displacement? CHES against simpler similarities.

Razin et al. (2024), Section 5 (Fig. 2-3): after DPO on a set of pairs, the
preferred response's log-prob change ``log pi_theta(y+|x) - log pi_ref(y+|x)``
is more negative for pairs with a higher CHES score; edit-distance similarity
and the inner product of the last hidden states predict it less well. Here the
change is measured per pair after LoRA DPO (:func:`fit_lm`), the scores are
computed on the initial model, and each score's Spearman correlation with the
change is reported. The claim predicts a *negative* correlation for CHES.

Beside that per-pair correlation inside one joint run, ``percentiles`` runs the slides' own
design (x-axis "Preference Similarity (Percentile)", one panel per score; "CHES score identifies
training samples causing likelihood displacement, whereas alternative measures do not"): for each
score and percentile, DPO on that percentile's subset alone, and the subset's mean change of
log π(y+|x) (:func:`run_percentile_subsets`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics.ches import ches_from_sums, pair_hidden_sums
from prefdyn.diagnostics.similarity import edit_similarity, last_hidden_inner_products
from prefdyn.errors import PrefdynError
from prefdyn.experiments._displacement import (
    HH_DEFAULT,
    displacement_stats,
    load_source,
    train_and_measure,
)
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments._displacement import DISPLACEMENT_OPTIONS, PairSourceParams, displacement_spec
from prefdyn.experiments.spec import Option, RunContext
from prefdyn.reports.plots import plot_curves, plot_scatter_rank, spearman, subplots_grid
from prefdyn.tracking import metrics as M
from prefdyn.tracking.evaluate import pair_metrics
from prefdyn.training.config import TrainConfig

log = logging.getLogger(__name__)

SCORES = {"ches": "CHES", "ches_normalized": "length-normalized CHES", "edit": "edit similarity",
          "hidden": "last-hidden inner product"}
SOURCES = ("hh", "persona")


@dataclass
class SourceConfig:
    """Where the pairs come from and how many: ``n`` seeded pairs of at most ``max_tokens``."""

    sources: tuple[str, ...] = SOURCES
    hh_path: str = HH_DEFAULT
    persona_path: str | None = None
    behaviors: list[str] | None = None
    n: int = 64
    max_tokens: int | None = 160
    chat_template: bool = True
    score_batch_size: int = 8
    percentiles: tuple[float, ...] = ()
    subset_size: int = 8
    subset_steps: int | None = None
    subset_steps: int | None = None

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources)
        self.percentiles = tuple(float(q) for q in self.percentiles)
        if any(not 0 <= q <= 100 for q in self.percentiles):
            raise PrefdynError(f"percentiles must be in [0, 100], got {self.percentiles}")
        if self.subset_size < 1:
            raise PrefdynError(f"subset_size must be >= 1, got {self.subset_size}")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise PrefdynError(f"sources must be among {', '.join(SOURCES)}, got {self.sources!r}")
        if self.n < 3:
            raise PrefdynError(f"n must be >= 3 pairs (a rank correlation needs them), got {self.n}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise PrefdynError(f"max_tokens must be >= 2, got {self.max_tokens}")


def pair_scores(loaded, pairs: Sequence[PreferencePair], *, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """The four scores of every pair on ``loaded``'s current weights, each (n,) float64."""
    ches = ches_from_sums(*pair_hidden_sums(loaded.model, loaded.tokenizer, pairs, batch_size=batch_size))
    return {"ches": ches["ches"], "ches_normalized": ches["ches_normalized"],
            "edit": edit_similarity(loaded.tokenizer, pairs),
            "hidden": last_hidden_inner_products(loaded.model, loaded.tokenizer, pairs,
                                                 batch_size=batch_size)}


def score_correlations(scores: dict[str, torch.Tensor], change: torch.Tensor) -> dict[str, dict]:
    """Spearman rho and p of each score with the chosen log-prob change."""
    out = {}
    for key, values in scores.items():
        rho, p = spearman(values.numpy(), change.numpy())
        out[key] = {"rho": rho, "p": p, "n": len(change)}
    return out


SUBSET_SCORES = ("ches", "edit", "hidden")
"""The scores of the percentile-subset design (the slide's panels: CHES, edit distance
similarity, hidden embedding similarity)."""


def percentile_subset(scores: torch.Tensor, q: float, size: int) -> list[int]:
    """The ``size`` pairs around percentile ``q`` of ``scores``: consecutive in ascending score
    order (ties by index), starting at ``round(q / 100 * (n - size))``, so 0 is the lowest
    scores and 100 the highest."""
    order = torch.sort(scores, stable=True).indices.tolist()
    start = round(q / 100 * (len(order) - size))
    return order[start:start + size]


def run_percentile_subsets(loaded, pairs: Sequence[PreferencePair], scores: dict[str, torch.Tensor],
                           src: SourceConfig, train: TrainConfig, *, mode: str, sink=None,
                           source: str = "") -> dict[str, dict[str, dict[str, float]]]:
    """The slides' design ("Preference Similarity (Percentile)" on the x-axis, one panel per
    score): for each score and each percentile of it, DPO from the initial model on that
    subset alone, and the subset's mean change of log π(y+|x) (:func:`displacement_stats`).
    The subset size, its steps (``subset_steps``, else ``train.steps``) and the percentiles are
    prefdyn's choice (the slides give none of them)."""
    if src.subset_steps is not None:
        train = dataclasses.replace(train, steps=src.subset_steps, epochs=None)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key in SUBSET_SCORES:
        out[key] = {}
        for q in src.percentiles:
            # fewer pairs than subset_size (a short source): every subset is all of them
            rows = percentile_subset(scores[key], q, min(src.subset_size, len(pairs)))
            subset = [pairs[i] for i in rows]
            log.info("%s: DPO on the %g-th percentile of %s (%d pairs)", source, q, key, len(subset))
            measured = train_and_measure(loaded, subset, {"subset": subset}, train, mode=mode, sink=sink,
                                         name=f"predictors/{source}/{key}_p{q:g}")["subset"]
            out[key][f"{q:g}"] = {"score_mean": float(scores[key][rows].mean()), **displacement_stats(measured)}
    return out


def run_predictors(loaded, src: SourceConfig, train: TrainConfig, *, sink=None,
                   mode: str = "lora") -> ExperimentResult:
    """Per source: scores on the initial model, DPO on the pairs, Spearman(score, change)."""
    rows, per_source, figures, described = [], {}, [], []
    for source in src.sources:
        pairs, what = load_source(source, loaded.tokenizer, hh_path=src.hh_path,
                                  persona_path=src.persona_path, behaviors=src.behaviors, n=src.n,
                                  max_tokens=src.max_tokens, seed=train.seed,
                                  chat_template=src.chat_template)
        if len(pairs) < 3:
            raise PrefdynError(f"{source}: only {len(pairs)} pairs fit max_tokens={src.max_tokens}; "
                               "raise it or give more pairs")
        described.append(what)
        log.info("%s: scoring %d pairs", source, len(pairs))
        scores = pair_scores(loaded, pairs, batch_size=src.score_batch_size)
        log.info("%s: DPO (%s) on %d pairs", source, mode, len(pairs))
        measured = train_and_measure(loaded, pairs, {"train": pairs}, train, mode=mode, sink=sink,
                                     name=f"predictors/{source}")["train"]
        change = pair_metrics(measured.to(torch.float64))[M.CHOSEN_LOGP_CHANGE]
        corr = score_correlations(scores, change)
        for key, c in corr.items():
            rows.append({"source": source, "score": SCORES[key], "Spearman ρ": c["rho"], "p": c["p"],
                         "pairs": c["n"]})
        if src.percentiles:
            per_source_subsets = run_percentile_subsets(loaded, pairs, scores, src, train, mode=mode, sink=sink,
                                                        source=source)
        else:
            per_source_subsets = {}
        per_source[source] = {"correlations": corr, "pairs": len(pairs), "selection": what,
                              "percentile_subsets": per_source_subsets,
                              **displacement_stats(measured),
                              "per_pair": [{"source": p.source, M.CHOSEN_LOGP_CHANGE: float(change[i]),
                                            **{k: float(v[i]) for k, v in scores.items()}}
                                           for i, p in enumerate(pairs)]}
        figures.append((source, _scatter(scores, change, source)))
    return _result(rows, per_source, figures, described, train, mode)


def _scatter(scores: dict[str, torch.Tensor], change: torch.Tensor, source: str):
    fig, axes = subplots_grid(len(scores), ncols=4, panel_size=(3.6, 3.2))
    for ax, (key, values) in zip(axes, scores.items()):
        plot_scatter_rank(values.numpy(), change.numpy(), xlabel=SCORES[key],
                          ylabel="Δ log π(y+|x)", title=source, ax=ax)
    return fig


def _result(rows, per_source, figures, described, train: TrainConfig, mode: str) -> ExperimentResult:
    headlines, notes = [], []
    for source, info in per_source.items():
        corr = info["correlations"]
        best = max(corr, key=lambda k: abs(corr[k]["rho"]) if np.isfinite(corr[k]["rho"]) else -1)
        headlines.append((f"{source}: Spearman(CHES, Δ log π(y+))", fmt(corr["ches"]["rho"]),
                          f"strongest |ρ|: {SCORES[best]}"))
        rho = corr["ches"]["rho"]
        verdict = ("supports" if np.isfinite(rho) and rho < 0 and corr["ches"]["p"] < 0.05 else
                   "does not significantly support")
        notes.append(f"{source}: ρ(CHES, Δ log π(y+)) = {fmt(rho)} (p = {corr['ches']['p']:.2g}); this "
                     f"{verdict} the claim that higher CHES means more displacement (negative ρ). "
                     f"{info[M.CHOSEN_FELL]:.0%} of the pairs lost chosen log-prob "
                     f"({M.CHOSEN_FELL}; mean {M.CHOSEN_LOGP_CHANGE} {info[M.CHOSEN_LOGP_CHANGE]:+.3f}).")
        if source == "persona" and corr["ches"]["rho"] == corr["ches_normalized"]["rho"]:
            notes.append("persona: every response is the answer token and the end-of-turn token (same "
                         "length), so length-normalized CHES ranks the pairs exactly as CHES does.")
        if not np.isfinite(corr["edit"]["rho"]):
            notes.append(f"{source}: edit similarity is the same for every pair (n/a): the responses "
                         "are the same two texts for every prompt.")
    res = ExperimentResult(
        name="displacement_predictors", title="Which score predicts likelihood displacement?",
        explanation=(f"{mode.upper()} DPO (β={train.beta}, {train.optimizer}, lr {train.lr}) on each set of "
                     "pairs; per pair the change of the preferred response's log-probability (trained policy "
                     "vs its reference) against four scores computed on the initial model (Razin et al. "
                     "2024, Sec. 5). Data: " + " | ".join(described)),
        summary={"sources": per_source, "mode": mode, "lr": train.lr, "beta": train.beta,
                 "steps": train.steps, "batch_size": train.batch_size},
        headlines=headlines, tables=[("Spearman correlation with Δ log π(y+|x)", rows)], notes=notes)
    for source, fig in figures:
        res.add_figure(f"scatter_{source}", fig, f"{source}: Δ log π(y+|x) against each score")
    _add_subsets(res, per_source)
    return res


def subset_drop(subsets: dict[str, dict[str, float]]) -> float:
    """Mean Δ log π(y+) on the lowest-percentile subset minus on the highest: positive when
    the high-score subset loses more preferred likelihood (the slide's CHES panel)."""
    qs = sorted(subsets, key=float)
    return subsets[qs[0]][M.CHOSEN_LOGP_CHANGE] - subsets[qs[-1]][M.CHOSEN_LOGP_CHANGE]


def _add_subsets(res: ExperimentResult, per_source: dict) -> None:
    """The percentile-subset design's table, figure and note (when it ran)."""
    for source, info in per_source.items():
        subsets = info["percentile_subsets"]
        if not subsets:
            continue
        qs = sorted(next(iter(subsets.values())), key=float)
        res.tables.append((f"{source}: DPO on each percentile subset of each score", [
            {"score": SCORES[key], "percentile": float(q), "mean score": v[q]["score_mean"],
             f"mean {M.CHOSEN_LOGP_CHANGE}": v[q][M.CHOSEN_LOGP_CHANGE], M.CHOSEN_FELL: v[q][M.CHOSEN_FELL]}
            for key, v in subsets.items() for q in qs]))
        res.add_figure(f"percentile_subsets_{source}", plot_curves(
            np.array([float(q) for q in qs]),
            {SCORES[k]: np.array([v[q][M.CHOSEN_LOGP_CHANGE] for q in qs]) for k, v in subsets.items()},
            xlabel="preference similarity (percentile of the score)", ylabel="mean Δ log π(y+|x)",
            title=f"{source}: training on percentile subsets"),
            f"{source}: one DPO run per score and percentile, on that subset alone (the slides' design).")
        drops = {k: subset_drop(v) for k, v in subsets.items() if len(v) > 1}
        if drops:
            res.notes.append(f"{source}, percentile subsets: Δ log π(y+) lowest minus highest percentile: "
                             + ", ".join(f"{SCORES[k]} {d:+.3f}" for k, d in drops.items())
                             + " (positive: the high-score subset loses more preferred likelihood).")


@dataclass
class PredictorsParams(PairSourceParams):
    """The ``experiment:`` params of ``displacement predictors``: ``source`` hh, persona or both."""

    source: str = "both"
    n_pairs: int = 32
    percentiles: tuple[float, ...] = ()
    subset_size: int = 8
    subset_steps: int | None = None


def run_predictors_spec(ctx: RunContext, loaded) -> ExperimentResult:
    """Which score predicts displacement? Spearman of CHES and baselines with the chosen
    log-prob change after DPO, per source (see :func:`run_predictors`)."""
    p = ctx.params
    settings = SourceConfig(sources=("hh", "persona") if p.source == "both" else (p.source,), n=p.n_pairs,
                            percentiles=p.percentiles, subset_size=p.subset_size, subset_steps=p.subset_steps,
                            **p.source_kwargs(ctx.cfg))
    return run_predictors(loaded, settings, ctx.train, sink=ctx.sink, mode=p.mode)


SPEC = displacement_spec(
    "displacement predictors", "Which score predicts likelihood displacement",
    "Which score predicts displacement? Spearman of CHES and baselines with the chosen log-prob change.",
    run_predictors_spec, PredictorsParams,
    {"source": Option("hh, persona or both."), **DISPLACEMENT_OPTIONS,
             "n_pairs": Option("Pairs per source (seeded)."),
             "percentiles": Option("Percentiles of each score whose subsets are trained alone, e.g. 0,50,100 "
                                   "(the slides' design; empty: off)."),
             "subset_size": Option("Pairs per percentile subset."),
             "subset_steps": Option("Steps of each subset's run (default: --steps).")})
