"""Optimizer state sharded over the processes of a data-parallel run (ZeRO stage 1).

AdamW's two moments are half of a full fine-tune's memory (8 of 16 bytes a parameter,
:mod:`prefdyn.training.memory`). With ``TrainConfig.sharding="optimizer"`` a multi-process
LM run wraps its optimizer in torch's :class:`~torch.distributed.optim.ZeroRedundancyOptimizer`:
every process keeps the state of its own share of the parameters, updates that share
after the usual gradient all-reduce (:mod:`prefdyn.training.distributed`), and the
updated weights are broadcast, so the run takes the same steps as the unsharded one.

Checkpoints stay whole and unchanged on disk: before rank 0 writes one, every process
hands its shard to rank 0 (``consolidate_state_dict``, a collective, so every process
runs :class:`ConsolidateBeforeSave` at the steps the checkpoint writer saves). On
resume each process loads the whole state and keeps its own share, so a sharded run
resumes from any checkpoint, sharded or not, and the other way round.
"""

from __future__ import annotations

import inspect
import sys

import torch

from prefdyn.training.checkpoint import BeforeSave


def shard_optimizer(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer
                    ) -> torch.optim.Optimizer:
    """``optimizer``'s class and settings over ``params``, its state sharded over the
    processes of the (initialised) default process group."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    accepted = inspect.signature(type(optimizer).__init__).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return ZeroRedundancyOptimizer(params, optimizer_class=type(optimizer), **settings)


def is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` came from :func:`shard_optimizer` (without importing
    ``torch.distributed.optim``, whose import warns about ``torch.jit``, in plain runs)."""
    zero = sys.modules.get("torch.distributed.optim")
    return zero is not None and isinstance(optimizer, zero.ZeroRedundancyOptimizer)


class ConsolidateBeforeSave(BeforeSave):
    """On every process: gather the sharded optimizer state on rank 0 before each save."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int):
        super().__init__(every)
        self.optimizer = optimizer

    def collect(self, policy) -> None:
        self.optimizer.consolidate_state_dict(to=0)
