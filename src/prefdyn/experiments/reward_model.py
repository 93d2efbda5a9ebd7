"""``prefdyn rl reward-model``: a Bradley-Terry reward model of the HH-RLHF pairs.

Im & Li (2024), Eq. 2: "$\\mathcal{L}_R = -\\mathbb{E}_{(x, y_w, y_l) \\sim \\mathcal{D}}
[\\log \\sigma(r(x, y_w) - r(x, y_l))]$", with ``r`` a scalar head on the embedded model.
Trained through the one loop and cached in the store by
:func:`prefdyn.training.reward_model.fit_reward_model`; the experiment reports its
pairwise accuracy on held-out pairs. RL experiments get the same model (from the
cache, once trained) as a reward with :func:`hh_reward_model`::

    trained = hh_reward_model(loaded, RewardModelParams())
    reward = trained.reward()        # the registered "reward_model" reward, bound
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from prefdyn.data import load_pairs
from prefdyn.data.generation import HH_DATA
from prefdyn.errors import PrefdynError
from prefdyn.experiments.hh_rlhf import HH_ATTRIBUTION, select_pairs
from prefdyn.experiments.result import ExperimentResult, fmt
from prefdyn.experiments.spec import ExperimentSpec, Option, RunContext, register
from prefdyn.models import LoadedModel
from prefdyn.reports.plots import plot_curves
from prefdyn.training.reward_model import (
    RewardModelSettings,
    TrainedRewardModel,
    fit_reward_model,
)


@dataclass
class RewardModelParams:
    """The ``experiment:`` params of ``rl reward-model``; steps, lr and batch size are
    ``train``'s (see :func:`settings_from`). ``pairs``: the HH-RLHF file; ``n_train`` /
    ``n_test``: a seeded subsample of the pairs whose prompt + response fits
    ``max_tokens``; ``train_layers``: the last decoder blocks that train with the head
    (0: the head alone, on cached hidden states)."""

    pairs: str = HH_DATA
    n_train: int = 128
    n_test: int = 64
    max_tokens: int | None = 64
    train_layers: int = 0

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_test < 1:
            raise PrefdynError(f"n_train and n_test must be >= 1, got {self.n_train}, {self.n_test}")


def settings_from(p: RewardModelParams, *, steps: int = 300, lr: float | None = None,
                  batch_size: int | None = None, seed: int = 0) -> RewardModelSettings:
    """The training settings: ``lr`` None is 1e-3 for the head alone, 1e-5 with blocks."""
    default_lr = 1e-3 if p.train_layers == 0 else 1e-5
    return RewardModelSettings(train_layers=p.train_layers, steps=steps,
                               batch_size=batch_size or 16, lr=lr or default_lr, seed=seed,
                               max_length=p.max_tokens)


def hh_reward_model(loaded: LoadedModel, p: RewardModelParams,
                    settings: RewardModelSettings | None = None, *,
                    cache_dir: str | os.PathLike | None = None, sink=None) -> TrainedRewardModel:
    """The reward model of ``p``'s HH-RLHF pairs from ``loaded`` (trained once, then read
    from the store)."""
    settings = settings or settings_from(p)
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    train_pairs, test_pairs = select_pairs(load_pairs(p.pairs, on_error="skip"), loaded.tokenizer,
                                           p.n_train, p.n_test, p.max_tokens, settings.seed,
                                           context=context)
    return fit_reward_model(loaded, train_pairs, test_pairs, settings, cache_dir=cache_dir,
                            sink=sink)


def run_reward_model(ctx: RunContext) -> ExperimentResult:
    """Train (or load) the reward model and report its held-out pairwise accuracy."""
    p, train = ctx.params, ctx.train
    settings = settings_from(p, steps=train.steps, lr=train.lr, batch_size=train.batch_size,
                             seed=ctx.cfg.seed)
    loaded = ctx.model()
    ctx.subtitle, ctx.footer["data"] = f"{loaded.name}, train_layers {p.train_layers}", p.pairs
    trained = hh_reward_model(loaded, p, settings, cache_dir=ctx.cfg.model.cache_dir, sink=ctx.sink)
    held, fit = trained.heldout, trained.train_fit
    what = ("the scalar head alone, on the frozen model's last-token hidden states (read once "
            "from the embedding cache)" if p.train_layers == 0 else
            f"the scalar head and the last {p.train_layers} decoder block(s)")
    summary = {"heldout_accuracy": held["accuracy"], "heldout_margin": held["margin"],
               "n_test": held["pairs"], "train_accuracy": fit["accuracy"],
               "train_margin": fit["margin"], "n_train": fit["pairs"],
               "settings": dataclasses.asdict(settings), "key": str(trained.key),
               "from_cache": trained.cached}
    res = ExperimentResult(
        name="reward_model", title="Bradley-Terry reward model of HH-RLHF (Im & Li Eq. 2)",
        explanation=(
            f"A scalar head on {loaded.name} scores prompt + response; trained by Eq. 2 "
            f"(-log σ(r(x, y_w) − r(x, y_l))) on {fit['pairs']} HH-RLHF pairs of at most "
            f"{p.max_tokens} tokens for {settings.steps} AdamW steps (lr {settings.lr:g}, batch "
            f"{settings.batch_size}); what trains: {what}. Pairwise accuracy: the share of "
            f"{held['pairs']} held-out pairs whose chosen response scores higher (ties count "
            "as wrong; 0.5 is chance)."
            + (" Loaded from the store (trained before with the same model, pairs and "
               "settings)." if trained.cached else "")),
        summary=summary,
        headlines=[("Held-out pairwise accuracy", fmt(held["accuracy"]),
                    f"{held['pairs']} pairs; train {fmt(fit['accuracy'])}"),
                   ("Held-out mean margin r(y_w) − r(y_l)", fmt(held["margin"]), "")])
    if trained.history is not None:
        steps, loss = trained.history.curves("loss")
        res.add_figure("reward_model_loss", plot_curves(
            steps, {"Bradley-Terry loss": np.asarray(loss["reward_model"])}, ylabel="loss (Eq. 2)",
            title="Reward-model training loss"), "Batch loss per step; log 2 ≈ 0.69 is the "
            "zero-initialised head's (every margin 0).")
    return res


SPEC = register(ExperimentSpec(
    name="rl reward-model", title="Bradley-Terry reward model of HH-RLHF",
    help="Train (or load from the cache) a scalar-head reward model on HH-RLHF pairs by Im & Li "
         "Eq. 2 and report its held-out pairwise accuracy.",
    run=run_reward_model, params=RewardModelParams, folder=lambda cfg: "reward_model",
    default_out="runs/rl", default_preset="quick", attribution=HH_ATTRIBUTION,
    options={"pairs": Option("HH-RLHF pairs (.jsonl or .jsonl.gz)."),
             "n_train": Option("Training pairs (seeded subsample)."),
             "n_test": Option("Held-out pairs."),
             "max_tokens": Option("Keep pairs whose prompt+response fits this many tokens."),
             "train_layers": Option("Last decoder blocks trained with the head (0: head only).")}))
