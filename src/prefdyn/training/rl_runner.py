"""Run RL fine-tuning (rollouts or the bandit) through the one loop, resumable.

The sibling of :func:`prefdyn.training.lm_runner.fit_lm` for on-policy batch
streams: the policy is a :class:`~prefdyn.policies.rollout.RolloutPolicy` or a
:class:`~prefdyn.policies.bandit.BanditPolicy`, the stream a
:class:`~prefdyn.policies.rollout.RolloutStream` or
:class:`~prefdyn.policies.bandit.BanditStream` (both sample from the model *as it is
now* and carry their sampling RNG in ``state()``), the objective a registry loss
(``reinforce``, ``rloo``, ``grpo``, ``ppo_clip``, ``expected_reward``, ``sft``). The
step and the loop are :func:`~prefdyn.training.loop.train`'s, unchanged.

With ``run_folder`` the run writes ``config.yaml``, ``metrics.jsonl`` and
``summary.json`` there and checkpoints into ``run_folder/checkpoints`` (the
trainable weights as safetensors, the optimizer, every global RNG and the stream's
position and sampling generator); a folder holding a checkpoint is resumed from
it, so a run killed with SIGKILL and started again with the same command draws the
same samples and ends with the same metrics as an unbroken one. With
``keep_optimizer=False`` a run that finishes keeps only its final weights (the
optimizer state and older checkpoints are dropped:
:func:`~prefdyn.training.checkpoint.finalize`); running it again restores them and
trains no further.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prefdyn.errors import PrefdynError, TrainingError
from prefdyn.losses import get_loss
from prefdyn.losses.registry import loss_parameters
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History
from prefdyn.tracking.run_dir import read_metrics
from prefdyn.tracking.step_metrics import StepMetrics
from prefdyn.tracking.tensorboard import Tee
from prefdyn.training.checkpoint import CheckpointCallback, finalize
from prefdyn.training.config import TrainConfig
from prefdyn.training.lm_resume import open_run_folder, restore_run, write_outcome
from prefdyn.training.lm_setup import LM_DEFAULT_LR
from prefdyn.training.loop import TrainState, train
from prefdyn.training.recompute import recomputed_activations
from prefdyn.training.runner import make_optimizer

log = logging.getLogger(__name__)


@dataclass
class RLRun:
    """The trained model, the history of per-step records, the loop's final state and
    the optimizer."""

    model: nn.Module
    history: History
    state: TrainState
    optimizer: torch.optim.Optimizer


class _OnModel(Callback):
    """A callback that checkpoints ``model`` (the policy's trainable module) rather than the
    policy object the loop passes (RL policies are not modules)."""

    def __init__(self, inner: CheckpointCallback, model: nn.Module):
        self.inner, self.model = inner, model

    def on_train_start(self, state, policy) -> None:
        self.inner.on_train_start(state, self.model)

    def on_step_end(self, state, policy, out) -> None:
        self.inner.on_step_end(state, self.model, out)

    def on_train_end(self, state, policy) -> None:
        self.inner.on_train_end(state, self.model)


def stream_identity(stream: Any) -> dict:
    """What a resumed run must share with its checkpoint about the stream: its sampling
    settings (the prompts are the caller's: the same command gives the same prompts)."""
    names = ("group_size", "prompts_per_batch", "batch_size", "max_new_tokens", "temperature",
             "top_k", "top_p", "seed", "n_rows")
    return {"type": type(stream).__name__,
            **{k: getattr(stream, k) for k in names if hasattr(stream, k)}}


def fit_rl(model: nn.Module, policy, stream, cfg: TrainConfig, *,
           loss_kwargs: dict | None = None, steps: int | None = None,
           callbacks: Sequence[Callback] = (), max_grad_norm: float | None = None,
           sink=None, name: str = "rl", run_folder: str | os.PathLike | None = None,
           checkpoint_every: int | None = None, mode: str = "full",
           objective: Callable | None = None,
           trackers: Callable[[History], Sequence[Callback]] | None = None,
           keep_optimizer: bool = True) -> RLRun:
    """Train ``model``'s trainable parameters with ``policy`` on ``stream`` for ``steps``
    (default ``cfg.steps``) updates of ``cfg.loss``.

    The objective is ``get_loss(cfg.loss, **loss_kwargs)``; ``loss_kwargs`` default to
    ``{"beta": cfg.beta}`` for losses that take a KL weight (RL: Eq. 3's beta; pass
    ``{"beta": 0.0}`` for none). The optimizer is ``cfg.optimizer_for(mode)`` with
    ``cfg.lr`` (1e-5 when None) over the parameters that require grad (apply LoRA to
    ``model`` first for a LoRA run, and say so with ``mode="lora"``). The model is in
    train mode during the run (the streams sample in eval mode) and in eval mode after.
    ``run_folder`` / ``checkpoint_every``: see the module docstring; ``sink`` receives
    every record too.

    ``objective`` replaces ``get_loss(cfg.loss, **loss_kwargs)`` when the loss is more
    than a registry entry (e.g. :func:`~prefdyn.losses.entropy.with_entropy_bonus`);
    ``loss_kwargs`` still name it in the resume identity. ``trackers(history)`` builds
    callbacks that record into the run's history (e.g. a held-out
    :class:`~prefdyn.tracking.reward_spread.RewardSpreadTracker`): they exist only
    once that history does, restored records included on a resume.
    ``keep_optimizer=False``: see the module docstring (for runs that are never
    continued, e.g. the phases of an experiment, whose settings fix their steps).
    """
    if cfg.sharding != "none":
        raise TrainingError(f"sharding={cfg.sharding!r}: RL runs train in one process (their rollouts "
                            "sample from the whole model); sharding applies to LM preference runs "
                            "under a launcher (fit_lm)")
    steps = steps if steps is not None else cfg.steps
    loss_kwargs = dict(loss_kwargs) if loss_kwargs is not None else _default_loss_kwargs(cfg)
    objective = objective if objective is not None else get_loss(cfg.loss, **loss_kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters (requires_grad is off "
                            "everywhere)")
    lr = cfg.lr if cfg.lr is not None else LM_DEFAULT_LR
    optimizer = make_optimizer(params, cfg, lr, mode=mode)
    log.info("RL %s: %s, lr %.3g, %d steps, %d trainable parameters", cfg.loss, mode, lr, steps,
             sum(p.numel() for p in params))

    folder = saver = None
    start_step = 0
    history_records: list[dict] = []
    if run_folder is not None:
        folder = open_run_folder(run_folder, cfg, mode=mode,
                                 device=next(model.parameters()).device)
        rl_identity = json.loads(json.dumps({"loss_kwargs": loss_kwargs,
                                             "stream": stream_identity(stream)}))
        if folder.checkpoint is not None:
            saved = (folder.checkpoint.extra or {}).get("rl")
            if saved != rl_identity:
                raise PrefdynError(f"{folder.checkpoint.path} was written by another RL run: "
                                   f"{saved}; this run is {rl_identity}. Use another run folder "
                                   "or delete it")
            restore_run(folder, model, optimizer, steps)
            start_step = folder.start_step
            stream.load_state(folder.checkpoint.batch_state)
            path = folder.path / "metrics.jsonl"
            history_records = [r for r in (read_metrics(path) if path.is_file() else [])
                               if r.get("problem") == name]
        saver = _OnModel(CheckpointCallback(
            folder.checkpoints, checkpoint_every or steps, stream.state, optimizer=optimizer,
            extra={**folder.identity, "rl": rl_identity}, trainable_only=True), model)
    own_sinks = Tee(folder.run_dir if folder else None)
    history = History(Tee(sink, *own_sinks.sinks))
    history.records = history_records
    if sink is not None:  # the caller's sink reads as the record of an unbroken run
        for record in history_records:
            sink.log(record)
    tracker = StepMetrics(history, name=name, log_every=cfg.log_every)
    extra = list(trackers(history)) if trackers is not None else []
    model.train()
    try:
        with recomputed_activations(model, cfg.activation_checkpointing):
            state = train(policy, objective, stream, optimizer, steps=steps,
                          callbacks=[tracker, *extra, *([saver] if saver else []), *callbacks],
                          max_grad_norm=max_grad_norm, start_step=start_step,
                          divergence_factor=cfg.divergence_factor)
    except TrainingError as e:
        if folder is not None:
            write_outcome(folder, steps=steps, last_step=(e.step or 1) - 1, error=e,
                          last_checkpoint=saver.inner.last_saved if saver else None)
        raise
    finally:
        model.eval()
        own_sinks.close()
    if folder is not None:
        write_outcome(folder, steps=steps, last_step=state.step, error=None,
                      last_checkpoint=saver.inner.last_saved if saver else None)
        if not keep_optimizer:
            finalize(folder.checkpoints)
    return RLRun(model, history, state, optimizer)


def _default_loss_kwargs(cfg: TrainConfig) -> dict:
    return {"beta": cfg.beta} if "beta" in loss_parameters(cfg.loss) else {}
