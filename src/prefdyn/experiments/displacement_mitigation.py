"""Mitigating likelihood displacement: drop the high-CHES pairs, or add an SFT term?

Razin et al. (2024), Section 6: removing the training pairs with the highest
CHES score mitigates likelihood displacement better than adding an SFT term on
the preferred responses, without giving up the preference margin. Four runs
from the same initial model, the same seed and the same settings:

* ``all``: DPO on every training pair;
* ``drop top CHES``: without the top ``q`` % pairs by CHES (on the initial model);
* ``drop random``: without as many pairs drawn at random (seeded);
* ``all + SFT``: every pair, DPO + the length-normalized NLL of y+
  (:data:`prefdyn.experiments._displacement.SFT_LOSS`).

Each run is evaluated on the same two sets: a held-out set of pairs from the
same source (disjoint from training) and the training pairs that every run
trained on (the pairs neither filter dropped).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from prefdyn.data.filtering import drop_indices
from prefdyn.diagnostics.ches import ches_from_sums, pair_hidden_sums
from prefdyn.errors import PrefdynError
from prefdyn.experiments._displacement import (
    HH_DEFAULT,
    SFT_LOSS,
    SFT_WEIGHT,
    displacement_stats,
    load_source,
    train_and_measure,
)
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.reports import plot_grouped_bar_panels
from prefdyn.tracking import metrics as M
from prefdyn.tracking.metrics import describe
from prefdyn.experiments._displacement import DISPLACEMENT_OPTIONS, PairSourceParams, displacement_spec
from prefdyn.experiments.spec import Option, RunContext
from prefdyn.training.config import TrainConfig

log = logging.getLogger(__name__)

RUNS = ("all", "drop top CHES", "drop random", "all + SFT")
STATS = (M.CHOSEN_LOGP_CHANGE, M.CHOSEN_FELL, M.REWARD_ACC, M.REJECTED_LOGP_CHANGE)
EVAL_SETS = ("held-out", "shared train")


@dataclass
class MitigationConfig:
    """``n_train`` training pairs and ``n_eval`` held-out pairs from ``source``; ``top_percent``
    is q, the share of training pairs dropped by CHES (and at random)."""

    source: str = "hh"
    hh_path: str = HH_DEFAULT
    persona_path: str | None = None
    behaviors: list[str] | None = None
    n_train: int = 64
    n_eval: int = 32
    max_tokens: int | None = 160
    top_percent: float = 10.0
    chat_template: bool = True
    score_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.source not in ("hh", "persona"):
            raise PrefdynError(f"source must be hh or persona, got {self.source!r}")
        if self.n_train < 2 or self.n_eval < 1:
            raise PrefdynError(f"n_train must be >= 2 and n_eval >= 1, got {self.n_train}, {self.n_eval}")
        if not 0 < self.top_percent < 100:
            raise PrefdynError(f"top_percent must be in (0, 100), got {self.top_percent}")


def split_runs(ches: torch.Tensor, top_percent: float, seed: int) -> dict[str, list[int]]:
    """Training row indices of every run. The top-CHES and random runs drop the same number
    of rows; the random draw is seeded and independent of the scores."""
    n = len(ches)
    top = set(drop_indices(ches, top_percent=top_percent))
    if not top:
        raise PrefdynError(f"top_percent={top_percent} of {n} pairs drops none; raise it or add pairs")
    gen = torch.Generator().manual_seed(seed + 1)
    rand = set(torch.randperm(n, generator=gen)[:len(top)].tolist())
    every = list(range(n))
    return {"all": every, "drop top CHES": [i for i in every if i not in top],
            "drop random": [i for i in every if i not in rand], "all + SFT": every}


def run_mitigation(loaded, cfg: MitigationConfig, train: TrainConfig, *, sink=None,
                   mode: str = "lora") -> ExperimentResult:
    """The four runs and their displacement statistics on the same evaluation sets."""
    pairs, what = load_source(cfg.source, loaded.tokenizer, hh_path=cfg.hh_path,
                              persona_path=cfg.persona_path, behaviors=cfg.behaviors,
                              n=cfg.n_train + cfg.n_eval, max_tokens=cfg.max_tokens, seed=train.seed,
                              chat_template=cfg.chat_template)
    if len(pairs) < cfg.n_eval + 2:
        raise PrefdynError(f"{cfg.source}: {len(pairs)} pairs fit max_tokens={cfg.max_tokens}, fewer than "
                           f"n_eval + 2 = {cfg.n_eval + 2}")
    eval_pairs, train_pairs = pairs[:cfg.n_eval], pairs[cfg.n_eval:]
    ches = ches_from_sums(*pair_hidden_sums(loaded.model, loaded.tokenizer, train_pairs,
                                            batch_size=cfg.score_batch_size))["ches"]
    rows_of = split_runs(ches, cfg.top_percent, train.seed)
    shared = sorted(set(rows_of["drop top CHES"]) & set(rows_of["drop random"]))
    eval_sets = {"held-out": eval_pairs, "shared train": [train_pairs[i] for i in shared]}
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for run in RUNS:
        run_train = dataclasses.replace(train, loss=SFT_LOSS) if run == "all + SFT" else train
        log.info("mitigation run %r: %d training pairs", run, len(rows_of[run]))
        logps = train_and_measure(loaded, [train_pairs[i] for i in rows_of[run]], eval_sets, run_train,
                                  mode=mode, sink=sink, name=f"mitigation/{run}")
        stats[run] = {key: displacement_stats(v) for key, v in logps.items()}
    dropped = sorted(set(range(len(train_pairs))) - set(rows_of["drop top CHES"]))
    detail = {"selection": what, "n_train": len(train_pairs), "n_eval": len(eval_pairs),
              "n_shared": len(shared), "dropped_top_ches": [train_pairs[i].source for i in dropped],
              "dropped_random": [train_pairs[i].source for i in range(len(train_pairs))
                                 if i not in set(rows_of["drop random"])],
              "ches_mean_all": float(ches.mean()), "ches_mean_dropped": float(ches[dropped].mean())}
    return _result(stats, detail, cfg, train, mode)


def _figure(stats):
    panels = {f"{label} ({key})": {ev: [stats[r][ev][key] for r in RUNS] for ev in EVAL_SETS}
              for key, label in ((M.CHOSEN_LOGP_CHANGE, "mean Δ log π(y+|x)"),
                                 (M.CHOSEN_FELL, "share displaced"))}
    return plot_grouped_bar_panels(RUNS, panels)


def _result(stats, detail, cfg: MitigationConfig, train: TrainConfig, mode: str) -> ExperimentResult:
    rows = [{"run": run, "evaluated on": ev, **{k: s[k] for k in STATS}}
            for run in RUNS for ev, s in stats[run].items()]
    held = {run: stats[run]["held-out"] for run in RUNS}
    best = max(RUNS, key=lambda r: held[r][M.CHOSEN_LOGP_CHANGE])
    ches_beats = held["drop top CHES"][M.CHOSEN_LOGP_CHANGE] > max(
        held["drop random"][M.CHOSEN_LOGP_CHANGE], held["all + SFT"][M.CHOSEN_LOGP_CHANGE])
    notes = [f"Held-out: the least displacement (highest mean Δ log π(y+)) is '{best}'. Dropping the top "
             f"{cfg.top_percent:g}% CHES pairs {'beats' if ches_beats else 'does not beat'} both random "
             "dropping and the SFT term here " + ("(Razin et al. 2024 report that it does)." if not ches_beats
                                                  else "(as Razin et al. 2024 report).")]
    res = ExperimentResult(
        name="displacement_mitigation", title="Mitigating likelihood displacement: CHES filtering vs SFT",
        explanation=(f"Four {mode.upper()} DPO runs (β={train.beta}, {train.optimizer}, lr {train.lr}, "
                     f"{train.steps} steps, seed {train.seed}) from the same model: all {detail['n_train']} "
                     f"training pairs; without the top {cfg.top_percent:g}% by CHES; without as many random "
                     f"pairs; all pairs with an SFT term (weight {SFT_WEIGHT}). Evaluated on the same "
                     f"{detail['n_eval']} held-out pairs and on the {detail['n_shared']} training pairs every "
                     f"run saw. Data: {detail['selection']}."),
        summary={"runs": stats, **detail, "top_percent": cfg.top_percent, "mode": mode, "lr": train.lr,
                 "beta": train.beta, "steps": train.steps, "sft_weight": SFT_WEIGHT},
        headlines=[(f"held-out Δ log π(y+): {r}", fmt(held[r][M.CHOSEN_LOGP_CHANGE], 3),
                    f"{M.CHOSEN_FELL} {held[r][M.CHOSEN_FELL]:.0%}, {M.REWARD_ACC} {held[r][M.REWARD_ACC]:.0%}")
                   for r in RUNS],
        tables=[("Displacement per run and evaluation set (means over the pairs)", rows)],
        notes=notes + ["Columns: " + "; ".join(describe(k) for k in STATS) + "."])
    res.add_figure("mitigation", _figure(stats), f"mean {M.CHOSEN_LOGP_CHANGE} and {M.CHOSEN_FELL} "
                   "(share displaced) per run")
    return res


@dataclass
class MitigationParams(PairSourceParams):
    """The ``experiment:`` params of ``displacement mitigation``: ``source`` hh or persona;
    ``top_percent`` is q, the share of training pairs dropped by CHES (and at random)."""

    n_train: int = 24
    n_eval: int = 12
    top_percent: float = 25.0


def run_mitigation_spec(ctx: RunContext, loaded) -> ExperimentResult:
    """CHES filtering vs random filtering vs an SFT term: which mitigates displacement on the
    same held-out pairs (see :func:`run_mitigation`)?"""
    p = ctx.params
    settings = MitigationConfig(source=p.source, n_train=p.n_train, n_eval=p.n_eval, top_percent=p.top_percent,
                                **p.source_kwargs(ctx.cfg))
    return run_mitigation(loaded, settings, ctx.train, sink=ctx.sink, mode=p.mode)


SPEC = displacement_spec(
    "displacement mitigation", "Mitigating likelihood displacement",
    "CHES filtering vs random filtering vs an SFT term: which mitigates displacement?",
    run_mitigation_spec, MitigationParams,
    {"source": Option("hh or persona."), **DISPLACEMENT_OPTIONS,
             "n_train": Option("Training pairs (seeded)."), "n_eval": Option("Held-out evaluation pairs."),
             "top_percent": Option("q: share of training pairs dropped by CHES (and at random).")})
