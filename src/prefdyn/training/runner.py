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

from prefdyn.losses import loss_for_run
from prefdyn.policies.last_layer import LastLayerData, LastLayerPolicy
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History
from prefdyn.tracking.last_layer import LastLayerTracker
from prefdyn.training.batches import ResumableMinibatches, full_batches
from prefdyn.training.config import TrainConfig
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


def make_optimizer(params, cfg: TrainConfig, lr: float, *, mode: str = "last_layer"
                   ) -> torch.optim.Optimizer:
    """``cfg.optimizer_for(mode)`` over ``params`` with step size ``lr``."""
    if cfg.optimizer_for(mode) == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)
    # The fused kernel (CPU and CUDA) updates all tensors in one pass; torch's default
    # per-tensor loop costs ~3 s a step for a 135M-parameter model on 2 CPU cores.
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=True)


@dataclass
class LastLayerSetup:
    """Everything a last-layer run needs before its first step."""

    policy: LastLayerPolicy
    objective: object
    train_data: LastLayerData
    test_data: LastLayerData | None
    lr: float
    lr_info: dict
    optimizer: torch.optim.Optimizer
    batches: object
    history: History
    tracker: LastLayerTracker


def setup_last_layer(W_init: Tensor, train_data: LastLayerData, cfg: TrainConfig, *,
                     names: Sequence[str], test_data: LastLayerData | None = None,
                     group_names: Sequence[str] | None = None, yes: int = 0, no: int = 1,
                     reference: Tensor | None = None, sink=None,
                     lr: tuple[float, dict] | None = None) -> LastLayerSetup:
    """Policy (W starts at ``W_init``; pi_ref's weights are ``reference``, default the
    start), reference log-probs, step size (``lr`` = (value, how) overrides the rule),
    optimizer, batch stream and tracker."""
    B = train_data.n_problems
    objective = loss_for_run(cfg.loss, beta=cfg.beta)
    policy = LastLayerPolicy(reference if reference is not None else W_init, B, yes=yes, no=no)
    # The step's objective, so a margin loss on two answer rows reads G once a step (the
    # policy takes the plain path for anything else; the gradient is the same either way).
    policy.one_pass = objective
    train_data = policy.reference_for(train_data)
    test_data = policy.reference_for(test_data) if test_data is not None else None
    with torch.no_grad():
        start = W_init.float()
        policy.W.copy_(start.expand_as(policy.W) if start.dim() == 2 else start)
        policy.W0.copy_(policy.W)

    if lr is not None:
        lr_value, lr_info = lr
    elif cfg.lr is not None:
        lr_value, lr_info = cfg.lr, {"rule": "given"}
    else:
        lr_value, lr_info = default_lr(policy, objective, train_data, optimizer=cfg.optimizer_for("last_layer"),
                                       beta=cfg.beta, safety=cfg.lr_safety)
    log.info("learning rate %.4g (%s)", lr_value, lr_info["rule"])

    if cfg.batch_size is None:
        batches = full_batches(train_data)
    else:
        batches = ResumableMinibatches(train_data, cfg.batch_size, seed=cfg.seed)
    history = History(sink)
    tracker = LastLayerTracker(objective, train_data, test_data, names=list(names),
                               group_names=list(group_names or []), log_every=cfg.log_every,
                               eval_every=cfg.eval_every, history=history)
    return LastLayerSetup(policy, objective, train_data, test_data, lr_value, lr_info,
                          make_optimizer([policy.W], cfg, lr_value), batches, history, tracker)


def fit_last_layer(W_init: Tensor, train_data: LastLayerData, cfg: TrainConfig, *,
                   names: Sequence[str], test_data: LastLayerData | None = None,
                   group_names: Sequence[str] | None = None, yes: int = 0, no: int = 1,
                   reference: Tensor | None = None, sink=None,
                   callbacks: Sequence[Callback] = ()) -> LastLayerRun:
    """Train the unembedding rows ``W_init`` ((R, d) shared start, or (B, R, d)) on
    ``train_data`` with ``cfg``.

    ``reference`` sets pi_ref's weights (default: the start, the usual DPO protocol);
    ``sink`` receives every metrics record (a :class:`~prefdyn.tracking.run_dir.RunDir`).
    For a run that survives being killed, see :mod:`prefdyn.training.resume`.
    """
    run = setup_last_layer(W_init, train_data, cfg, names=names, test_data=test_data,
                           group_names=group_names, yes=yes, no=no, reference=reference, sink=sink)
    state = train(run.policy, run.objective, run.batches, run.optimizer, steps=cfg.steps,
                  callbacks=[run.tracker, *callbacks], divergence_factor=cfg.divergence_factor,
                  check_every=cfg.check_every)
    return LastLayerRun(run.policy, run.history, run.lr, run.lr_info, state)
