"""Set up and run last-layer training: policy, reference, step size, optimizer, tracking.

Everything goes through :func:`prefdyn.training.loop.train`; this module only
assembles the pieces for the last-layer mode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.losses import get_loss
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History
from prefdyn.tracking.last_layer import LastLayerTracker
from prefdyn.training.batches import full_batches, random_minibatches
from prefdyn.training.config import TrainConfig
from prefdyn.training.last_layer import LastLayerData, LastLayerPolicy
from prefdyn.training.loop import TrainState, train
from prefdyn.training.step_size import default_lr

log = logging.getLogger(__name__)


@dataclass
class LastLayerRun:
    """The trained policy, its history, and the step size it used (and why)."""

    policy: LastLayerPolicy
    history: History
    lr: float
    lr_info: dict
    state: TrainState


def make_optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def fit_last_layer(W_init: Tensor, train_data: LastLayerData, cfg: TrainConfig, *,
                   names: Sequence[str], test_data: LastLayerData | None = None,
                   group_names: Sequence[str] | None = None, yes: int = 0, no: int = 1,
                   reference: Tensor | None = None, sink=None,
                   callbacks: Sequence[Callback] = ()) -> LastLayerRun:
    """Train the unembedding rows ``W_init`` ((R, d) shared start, or (B, R, d)) on
    ``train_data`` with ``cfg``.

    ``reference`` sets pi_ref's weights (default: the start, the usual DPO protocol);
    ``sink`` receives every metrics record (a :class:`~prefdyn.tracking.run_dir.RunDir`).
    """
    B = train_data.n_problems
    objective = get_loss(cfg.loss, beta=cfg.beta)
    policy = LastLayerPolicy(reference if reference is not None else W_init, B, yes=yes, no=no)
    train_data = policy.reference_for(train_data)
    test_data = policy.reference_for(test_data) if test_data is not None else None
    with torch.no_grad():
        start = W_init.float()
        policy.W.copy_(start.expand_as(policy.W) if start.dim() == 2 else start)
        policy.W0.copy_(policy.W)

    if cfg.lr is not None:
        lr, lr_info = cfg.lr, {"rule": "given"}
    else:
        lr, lr_info = default_lr(policy, objective, train_data, optimizer=cfg.optimizer,
                                 beta=cfg.beta, safety=cfg.lr_safety)
    log.info("learning rate %.4g (%s)", lr, lr_info["rule"])

    if cfg.batch_size is None:
        batches = full_batches(train_data)
    else:
        batches = random_minibatches(train_data, cfg.batch_size, seed=cfg.seed)
    history = History(sink)
    tracker = LastLayerTracker(objective, train_data, test_data, names=list(names),
                               group_names=list(group_names or []), log_every=cfg.log_every,
                               eval_every=cfg.eval_every, history=history)
    optimizer = make_optimizer([policy.W], cfg, lr)
    state = train(policy, objective, batches, optimizer, steps=cfg.steps,
                  callbacks=[tracker, *callbacks])
    return LastLayerRun(policy, history, lr, lr_info, state)
