"""Training configuration (one dataclass for every mode)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from prefdyn.errors import PrefdynError
from prefdyn.training.divergence import DEFAULT_DIVERGENCE_FACTOR


@dataclass
class TrainConfig:
    """How to train.

    ``lr=None`` derives the step size from the loss curvature at the start
    (:func:`prefdyn.training.step_size.default_lr`) in last-layer mode, and is
    1e-5 in LM modes (:func:`prefdyn.training.lm_runner.fit_lm`). With plain
    gradient descent on the last layer the curves depend on ``lr * beta**2`` only.

    ``grad_accum`` splits each batch into that many micro-batches whose gradients
    are summed (weighted by size) before one update: the same update as the whole
    batch at a fraction of the memory. ``epochs`` (LM modes) sets the number of
    steps from the number of training rows: ``epochs * ceil(rows / batch)``; it
    overrides ``steps``.

    ``optimizer=None`` is the mode's default (:meth:`optimizer_for`): plain gradient
    descent for the last layer (Im & Li's analysis), AdamW for LoRA and full
    fine-tuning (the seed's Section 5 and App. C setting).

    ``divergence_factor``: a run whose batch loss or largest |reward margin| grows that
    many times past its first-step value (floored at 1) stops with a
    :class:`~prefdyn.errors.TrainingError` naming the step, as a NaN loss does (the rule
    and why a healthy run never meets it: :mod:`prefdyn.training.divergence`). ``None``
    disables the check. ``check_every`` reads that check and the NaN/inf checks every
    that many steps instead of after each, so a GPU run does not wait for the host each
    step (a bad step's update is skipped on the device all the same; needs a fused
    optimizer, prefdyn's AdamW: :mod:`prefdyn.training._checks`).

    ``precision="bf16"`` (LM modes) runs the forward's and backward's matrix products in
    bfloat16 under autocast, with fp32 weights, optimizer state, log-probs and losses
    (mixed precision, the usual GPU mode; :class:`~prefdyn.policies.lm.LMPolicy`). fp32,
    the default, is what exact comparisons use. ``sharding="optimizer"`` (multi-process LM
    runs) keeps each process's share of the optimizer state only (ZeRO stage 1;
    :mod:`prefdyn.training._sharded_optimizer`), the steps and checkpoints unchanged;
    ``sharding="full"`` (multi-process full fine-tuning) shards the weights, gradients and
    optimizer state (FSDP / ZeRO stage 3; :mod:`prefdyn.training.fsdp`), the same steps
    and checkpoints too. A single process ignores both. ``activation_checkpointing`` (LM
    and RL modes) recomputes each decoder layer's forward in the backward instead of
    keeping its activations (:mod:`prefdyn.training.recompute`): less memory, about one
    forward more of compute, the same gradients.
    """

    loss: str = "dpo"
    beta: float = 0.1
    optimizer: Literal["sgd", "adamw"] | None = None
    lr: float | None = None
    lr_safety: float = 1.0
    weight_decay: float = 0.0
    steps: int = 300
    batch_size: int | None = None
    rows: Literal["answers", "all"] = "answers"
    log_every: int = 1
    eval_every: int = 10
    seed: int = 0
    grad_accum: int = 1
    epochs: int | None = None
    divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR
    check_every: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    sharding: Literal["none", "optimizer", "full"] = "none"
    activation_checkpointing: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of ``precision`` (None: plain fp32)."""
        return torch.bfloat16 if self.precision == "bf16" else None

    def optimizer_for(self, mode: str) -> str:
        """The optimizer a ``mode`` ("last_layer", "lora", "full") runs with."""
        if self.optimizer is not None:
            return self.optimizer
        return "sgd" if mode == "last_layer" else "adamw"

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise PrefdynError(f"beta must be > 0, got {self.beta}")
        if self.optimizer not in (None, "sgd", "adamw"):
            raise PrefdynError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr is not None and self.lr <= 0:
            raise PrefdynError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.lr_safety <= 2:
            raise PrefdynError(f"lr_safety must be in (0, 2] (gradient descent diverges past 2/lambda_max), got {self.lr_safety}")
        if self.steps < 1:
            raise PrefdynError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise PrefdynError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.rows not in ("answers", "all"):
            raise PrefdynError(f"rows must be 'answers' or 'all', got {self.rows!r}")
        if self.grad_accum < 1:
            raise PrefdynError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.epochs is not None and self.epochs < 1:
            raise PrefdynError(f"epochs must be >= 1 (or None), got {self.epochs}")
        if self.batch_size is not None and self.batch_size < self.grad_accum:
            raise PrefdynError(f"batch_size {self.batch_size} is smaller than grad_accum "
                               f"{self.grad_accum}: a micro-batch would be empty")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise PrefdynError(f"divergence_factor must be > 1 (or None to disable the check), "
                               f"got {self.divergence_factor}")
        if self.precision not in ("fp32", "bf16"):
            raise PrefdynError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if not isinstance(self.activation_checkpointing, bool):
            raise PrefdynError(f"activation_checkpointing must be true or false, got "
                               f"{self.activation_checkpointing!r}")
        if self.sharding not in ("none", "optimizer", "full"):
            raise PrefdynError(f"sharding must be 'none', 'optimizer' or 'full', got {self.sharding!r}")
        if self.check_every < 1:
            raise PrefdynError(f"check_every must be >= 1, got {self.check_every}")
        if self.log_every < 1 or self.eval_every < 1:
            raise PrefdynError("log_every and eval_every must be >= 1")
