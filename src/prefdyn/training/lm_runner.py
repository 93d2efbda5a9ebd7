"""Set up and run LM preference training (full fine-tuning or LoRA).

The sibling of :mod:`prefdyn.training.runner`: it assembles a policy, its
reference, an optimizer and a tracker, then calls the one loop
:func:`prefdyn.training.loop.train` (and so the one step) unchanged.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from prefdyn.losses import get_loss
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History
from prefdyn.tracking.preference import per_example_metrics
from prefdyn.training.config import TrainConfig
from prefdyn.training.lm_policy import LMPolicy, ReferenceCache, apply_lora
from prefdyn.training.loop import TrainState, train

log = logging.getLogger(__name__)

LM_DEFAULT_LR = 1e-5


@dataclass
class LMRun:
    """The trained policy, its history, the step size and the loop's final state."""

    policy: LMPolicy
    history: History
    lr: float
    state: TrainState


def _block(name: str) -> str:
    """The drift group of a parameter: ``layer_<i>`` for decoder block i, else ``other``."""
    m = re.search(r"\.layers\.(\d+)\.", name)
    return f"layer_{int(m.group(1)):02d}" if m else "other"


class LMTracker(Callback):
    """Per-step preference metrics, gradient norm and per-block relative weight drift.

    Drift of block l is ``||W_l(t) - W_l(0)|| / ||W_l(0)||`` over the block's
    trainable parameters in full mode; with LoRA it is the effective update
    ``||scale * B A|| / ||W_base||`` over the adapted matrices (B starts at 0, so
    the adapters' own drift would be undefined).
    """

    def __init__(self, history: History, *, name: str = "lm", log_every: int = 1):
        self.history, self.name, self.log_every = history, name, log_every
        self._start: dict[str, Tensor] = {}

    def on_train_start(self, state, policy: LMPolicy) -> None:
        if not policy.lora:
            self._start = {n: p.detach().clone() for n, p in policy.model.named_parameters()
                           if p.requires_grad}

    @torch.no_grad()
    def drift(self, policy: LMPolicy) -> dict[str, float]:
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        if policy.lora:
            for name, module in policy.model.named_modules():
                if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                    for adapter in module.active_adapters:
                        g = _block(name + ".")
                        num[g] = num.get(g, 0.0) + module.get_delta_weight(adapter).pow(2).sum().item()
                        den[g] = den.get(g, 0.0) + module.base_layer.weight.pow(2).sum().item()
        else:
            for name, p in policy.model.named_parameters():
                if name in self._start:
                    g = _block(name)
                    num[g] = num.get(g, 0.0) + (p - self._start[name]).pow(2).sum().item()
                    den[g] = den.get(g, 0.0) + self._start[name].pow(2).sum().item()
        return {f"drift/{g}": (num[g] / den[g]) ** 0.5 if den[g] > 0 else 0.0 for g in sorted(num)}

    def on_step_end(self, state, policy: LMPolicy, out) -> None:
        if state.step % self.log_every and state.step != state.max_steps:
            return
        record: dict[str, Any] = {"step": state.step, "split": "train", "problem": self.name,
                                  "group": None}
        for key, values in per_example_metrics(out.out, out.logps).items():
            record[key] = values.float().mean().item()
        record["grad_norm"] = out.grad_norm.item()
        record.update(self.drift(policy))
        self.history.add(record)


def make_lm_policy(loaded, mode: Literal["full", "lora"], *, seed: int = 0,
                   lora_kwargs: dict | None = None) -> LMPolicy:
    """The policy for ``mode``. Both modify ``loaded.model`` in place (LoRA injects its
    adapters, full mode trains every weight); full mode keeps a frozen copy as pi_ref."""
    if mode == "lora":
        return LMPolicy(apply_lora(loaded.model, seed=seed, **(lora_kwargs or {})))
    if mode == "full":
        reference = copy.deepcopy(loaded.model)
        loaded.model.requires_grad_(True)
        return LMPolicy(loaded.model, reference_model=reference)
    raise ValueError(f"mode must be 'full' or 'lora', got {mode!r}")


def fit_lm(loaded, batches: Iterator[Any], cfg: TrainConfig, *,
           mode: Literal["full", "lora"] = "full", steps: int | None = None,
           callbacks: Sequence[Callback] = (), max_grad_norm: float | None = None,
           lora_kwargs: dict | None = None, sink=None, name: str = "lm") -> LMRun:
    """Train ``loaded.model`` on ``batches`` (from :mod:`prefdyn.training.lm_data`).

    The loss is ``get_loss(cfg.loss, beta=cfg.beta)``; LM modes always use AdamW,
    with ``cfg.lr`` or 1e-5 when it is None (``cfg.optimizer`` and the last-layer
    curvature rule do not apply here). Reference log-probs are computed once per
    row (:class:`ReferenceCache`). The model is in train mode during the run (LoRA
    dropout is active) and back in eval mode afterwards.
    """
    steps = cfg.steps if steps is None else steps
    objective = get_loss(cfg.loss, beta=cfg.beta)
    policy = make_lm_policy(loaded, mode, seed=cfg.seed, lora_kwargs=lora_kwargs)
    if cfg.lr is not None:
        lr = cfg.lr
        log.info("%s mode: AdamW, lr %.3g (given)", mode, lr)
    else:
        lr = LM_DEFAULT_LR
        log.info("%s mode: AdamW, lr %.3g (LM default; cfg.lr is None)", mode, lr)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    log.info("%s mode: %d trainable parameters", mode, sum(p.numel() for p in params))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    history = History(sink)
    tracker = LMTracker(history, name=name, log_every=cfg.log_every)
    reference = ReferenceCache(policy)
    policy.model.train()
    try:
        state = train(policy, objective, reference.wrap(batches), optimizer, steps=steps,
                      callbacks=[tracker, *callbacks], max_grad_norm=max_grad_norm)
    finally:
        policy.model.eval()
    return LMRun(policy, history, lr, state)
