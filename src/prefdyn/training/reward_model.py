"""Train a Bradley-Terry reward model on preference pairs, through the one loop, cached.

Im & Li (2024), Eq. 1: "Under the Bradley-Terry model (Bradley & Terry, 1952), the
preference distribution is modeled as $p^*(y_w \\succ y_l|x) = \\sigma(r^*(x, y_w) -
r^*(x, y_l))$", and Eq. 2 fits the reward model by "$\\mathcal{L}_R =
-\\mathbb{E}_{(x, y_w, y_l) \\sim \\mathcal{D}} [\\log \\sigma(r(x, y_w) - r(x, y_l))]$"
(the registered loss ``bradley_terry``). ``r`` is a scalar head on the embedded model
(:class:`~prefdyn.rewards.RewardModel`: a linear map of the final hidden state at the
last token of prompt + response). The step and the loop are
:func:`~prefdyn.training.loop.train`'s, as for DPO and RL.

What trains (``RewardModelSettings.train_layers``):

- ``0`` (the quick setting): the head only, on a frozen backbone. Its input for each
  prompt + response is then fixed, so it is read once from the embedding cache
  (:func:`~prefdyn.embeddings.cached_embeddings`, the same g(x)) and every step is a
  matrix product: a few hundred steps take seconds on 2 CPU cores.
- ``k > 0``: the last ``k`` decoder blocks and the final norm train with the head;
  every step runs the model on the pairs' tokens (slow on a CPU).

The trained parameters and the pairwise accuracies are an artifact of the
:mod:`prefdyn._store` (kind ``reward_model``, safetensors), keyed by the model's
fingerprint, a hash of the training and held-out pairs and the settings: the same
call again loads it instead of training.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prefdyn._hashing import hash_obj
from prefdyn._store import ArtifactKey, ArtifactStore, TensorSpec
from prefdyn.data.records import PreferencePair
from prefdyn.embeddings.cache import cached_embeddings
from prefdyn.errors import PrefdynError
from prefdyn.losses import get_loss
from prefdyn.models.loading import LoadedModel
from prefdyn.policies.reward_model import (
    FeaturePairs,
    HeadPolicy,
    RewardModelPolicy,
    feature_batches,
    pairwise_accuracy,
)
from prefdyn.rewards import Reward, RewardModel, get_reward
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History
from prefdyn.tracking.step_metrics import StepMetrics
from prefdyn.training.config import TrainConfig
from prefdyn.training.lm_data import LMBatchStream, fixed_pair_batches, pair_batches
from prefdyn.training.loop import train
from prefdyn.training.runner import make_optimizer

log = logging.getLogger(__name__)

_STORE = ArtifactStore("reward_model", version=1, label="reward model")
_METRICS = ("heldout", "train_fit")  # each a float64 tensor [accuracy, margin, pairs]


@dataclass(frozen=True)
class RewardModelSettings:
    """How the reward model trains: ``train_layers`` last decoder blocks with the head
    (0: the head alone on cached hidden states), ``steps`` AdamW updates of ``lr`` on
    shuffled batches of ``batch_size`` pairs, ``seed``; ``max_length`` caps the tokens
    of prompt + response when ``train_layers > 0``; ``eval_batch_size`` pairs a
    forward pass when scoring (accuracies, and the reward when the backbone trains)."""

    train_layers: int = 0
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    max_length: int | None = None
    eval_batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise PrefdynError(f"reward model: {name} must be >= 1, got {getattr(self, name)}")
        if self.train_layers < 0:
            raise PrefdynError(f"reward model: train_layers must be >= 0, got {self.train_layers}")
        if not self.lr > 0:
            raise PrefdynError(f"reward model: lr must be > 0, got {self.lr}")


@dataclass
class TrainedRewardModel:
    """A trained (or loaded) reward model, its tokenizer, its pairwise accuracy and mean
    margin on the held-out pairs (``heldout``) and on the training pairs (``train_fit``),
    the store key it lives under, whether it came from the cache, and the training
    history (None when loaded)."""

    model: RewardModel
    tokenizer: object
    heldout: dict[str, float]
    train_fit: dict[str, float]
    key: ArtifactKey
    cached: bool
    history: History | None = None

    def reward(self) -> Reward:
        """The registered ``reward_model`` reward with this model bound."""
        return get_reward("reward_model", model=self.model, tokenizer=self.tokenizer)


def build_reward_model(loaded: LoadedModel, train_layers: int = 0) -> RewardModel:
    """A :class:`RewardModel` on its own copy of ``loaded``'s decoder (the policy an RL run
    trains in place must not move the reward), with the head and the last
    ``train_layers`` blocks (and the final norm, when any block trains) trainable."""
    decoder = copy.deepcopy(loaded.model.get_decoder())
    decoder.requires_grad_(False)
    if train_layers:
        layers = getattr(decoder, "layers", None)
        if layers is None or train_layers > len(layers):
            raise PrefdynError(f"train_layers {train_layers}: the decoder has "
                               f"{len(layers) if layers is not None else 'no'} blocks")
        for block in layers[-train_layers:]:
            block.requires_grad_(True)
        norm = getattr(decoder, "norm", None)
        if norm is not None:
            norm.requires_grad_(True)
    rm = RewardModel(decoder).to(next(decoder.parameters()).device)
    return rm.eval()


def _trainable(rm: RewardModel) -> dict[str, torch.Tensor]:
    return {n: p for n, p in rm.named_parameters() if p.requires_grad}


def _pair_content(pairs: Sequence[PreferencePair]) -> str:
    return hash_obj([[p.prompt, p.chosen, p.rejected] for p in pairs])


def reward_model_key(loaded: LoadedModel, train_pairs: Sequence[PreferencePair],
                     test_pairs: Sequence[PreferencePair], settings: RewardModelSettings
                     ) -> ArtifactKey:
    """The content key of the reward model trained on ``train_pairs`` (and evaluated on
    ``test_pairs``) from ``loaded`` with ``settings``."""
    return _STORE.key(model=loaded.fingerprint, train=_pair_content(train_pairs),
                      test=_pair_content(test_pairs), settings=dataclasses.asdict(settings))


def _texts(pairs: Sequence[PreferencePair]) -> tuple[list[str], list[str]]:
    return [p.prompt + p.chosen for p in pairs], [p.prompt + p.rejected for p in pairs]


def _features(loaded: LoadedModel, pairs: Sequence[PreferencePair], cache_dir, batch_size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    chosen, rejected = _texts(pairs)
    g = cached_embeddings(loaded, chosen + rejected, cache_dir=cache_dir, batch_size=batch_size)
    return g[:len(pairs)], g[len(pairs):]


def _metrics_tensor(m: dict[str, float]) -> torch.Tensor:
    return torch.tensor([m["accuracy"], m["margin"], float(m["pairs"])], dtype=torch.float64)


def _metrics_dict(t: torch.Tensor) -> dict[str, float]:
    return {"accuracy": float(t[0]), "margin": float(t[1]), "pairs": int(t[2])}


def fit_reward_model(loaded: LoadedModel, train_pairs: Sequence[PreferencePair],
                     test_pairs: Sequence[PreferencePair],
                     settings: RewardModelSettings = RewardModelSettings(), *,
                     cache_dir: str | os.PathLike | None = None, sink=None,
                     callbacks: Sequence[Callback] = ()) -> TrainedRewardModel:
    """The reward model of ``train_pairs`` from ``loaded`` (left untouched): loaded from
    the store when trained before with the same model, pairs and settings, else
    trained by Eq. 2 through the one loop and stored. Its held-out pairwise accuracy is
    measured on ``test_pairs``. ``sink`` gets the per-step records (loss, the two
    scores, gradient norm) when it trains."""
    if not train_pairs:
        raise PrefdynError("no training pairs for the reward model")
    rm = build_reward_model(loaded, settings.train_layers)
    trainable = _trainable(rm)
    expected = {n: TensorSpec(tuple(p.shape), p.dtype) for n, p in trainable.items()}
    expected |= {m: TensorSpec((3,), torch.float64) for m in _METRICS}
    key = reward_model_key(loaded, train_pairs, test_pairs, settings)
    history: list[History] = []

    def compute() -> dict[str, torch.Tensor]:
        h, metrics = _train(loaded, rm, train_pairs, test_pairs, settings, cache_dir, sink,
                            callbacks)
        history.append(h)
        return {n: p.detach().cpu() for n, p in _trainable(rm).items()} | metrics

    stored = _STORE.get_or_compute(key, expected, compute, cache_dir=cache_dir,
                                   info={"model": loaded.name})
    if not history:  # loaded from the store
        rm.load_state_dict({n: t for n, t in stored.items() if n not in _METRICS}, strict=False)
    rm.requires_grad_(False).eval()
    return TrainedRewardModel(rm, loaded.tokenizer, _metrics_dict(stored["heldout"]),
                              _metrics_dict(stored["train_fit"]), key, cached=not history,
                              history=history[0] if history else None)


def _train(loaded: LoadedModel, rm: RewardModel, train_pairs, test_pairs,
           settings: RewardModelSettings, cache_dir, sink, callbacks
           ) -> tuple[History, dict[str, torch.Tensor]]:
    s = settings
    if s.train_layers == 0:
        policy: RewardModelPolicy = HeadPolicy(rm)
        train_c, train_r = _features(loaded, train_pairs, cache_dir, s.eval_batch_size)
        stream = LMBatchStream(len(train_pairs), s.batch_size, s.seed,
                               lambda idx: FeaturePairs(train_c[idx], train_r[idx], torch.tensor(idx)))
        eval_train = feature_batches(train_c, train_r, range(len(train_pairs)), 256)
        eval_test = []
        if test_pairs:
            test_c, test_r = _features(loaded, test_pairs, cache_dir, s.eval_batch_size)
            eval_test = feature_batches(test_c, test_r, range(len(test_pairs)), 256)
    else:
        policy = RewardModelPolicy(rm)
        stream = pair_batches(train_pairs, loaded.tokenizer, s.batch_size, s.seed, s.max_length)
        eval_train = fixed_pair_batches(train_pairs, loaded.tokenizer, s.eval_batch_size,
                                        s.max_length)
        eval_test = (fixed_pair_batches(test_pairs, loaded.tokenizer, s.eval_batch_size,
                                        s.max_length) if test_pairs else [])
    cfg = TrainConfig(loss="bradley_terry", optimizer="adamw", lr=s.lr,
                      weight_decay=s.weight_decay, steps=s.steps, seed=s.seed)
    optimizer = make_optimizer([p for p in rm.parameters() if p.requires_grad], cfg, s.lr,
                               mode="full")
    history = History(sink)
    log.info("reward model: %d steps on %d pairs (train_layers %d)", s.steps, len(train_pairs),
             s.train_layers)
    rm.train()
    try:
        train(policy, get_loss("bradley_terry"), stream, optimizer, steps=s.steps,
              callbacks=[StepMetrics(history, name="reward_model", log_every=1), *callbacks],
              # The zero-initialised head gives every pair margin 0 at step 1, so the
              # guard's first-step reference would be its floor, not this run's scale.
              divergence_factor=None)
    finally:
        rm.eval()
    heldout = pairwise_accuracy(policy, eval_test)
    fit = pairwise_accuracy(policy, eval_train)
    log.info("reward model: held-out pairwise accuracy %.3f on %d pairs (train %.3f)",
             heldout["accuracy"], heldout["pairs"], fit["accuracy"])
    return history, {"heldout": _metrics_tensor(heldout), "train_fit": _metrics_tensor(fit)}
