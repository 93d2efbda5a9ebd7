"""The pieces of an LM run that come before the loop: the policy, its optimizer and
step count on the right device and process layout (:func:`setup_lm`), and pi_ref's
log-probs (:func:`reference_for`). :func:`prefdyn.training.lm_runner.fit_lm` composes
them with the records, the resume and the one loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from prefdyn._runtime import resolve_device
from prefdyn.errors import TrainingError
from prefdyn.losses import loss_for_run
from prefdyn.models.loading import model_fingerprint
from prefdyn.policies.lm import LMPolicy, ReferenceCache, apply_lora
from prefdyn.training._sharded_optimizer import shard_optimizer
from prefdyn.training.config import TrainConfig
from prefdyn.training.distributed import Distributed, launched_world_size, setup_distributed
from prefdyn.training.fsdp import shard_policy
from prefdyn.training.lm_data import LMBatchStream
from prefdyn.training.reference_cache import (
    cached_reference,
    precompute_reference,
    reference_key,
)
from prefdyn.training.runner import make_optimizer
from prefdyn.training.start_weights import StartWeights
from prefdyn.training.step import Objective

log = logging.getLogger(__name__)

LM_DEFAULT_LR = 1e-5


def make_lm_policy(loaded, mode: Literal["full", "lora"], *, seed: int = 0,
                   lora_kwargs: dict | None = None, autocast: torch.dtype | None = None) -> LMPolicy:
    """The policy for ``mode``. Both modify ``loaded.model`` in place (LoRA injects its
    adapters, full mode trains every weight); full mode keeps W(0) on disk for pi_ref
    and the drift (:class:`~prefdyn.training.start_weights.StartWeights`). ``autocast``:
    mixed precision (:class:`~prefdyn.policies.lm.LMPolicy`)."""
    if mode == "lora":
        return LMPolicy(apply_lora(loaded.model, seed=seed, **(lora_kwargs or {})), autocast=autocast)
    if mode == "full":
        start = StartWeights(loaded.model)  # W(0) on disk, not a second model in memory
        loaded.model.requires_grad_(True)
        return LMPolicy(loaded.model, start_weights=start, autocast=autocast)
    raise ValueError(f"mode must be 'full' or 'lora', got {mode!r}")


def _total_steps(cfg: TrainConfig, steps: int | None, stream: LMBatchStream | None) -> int:
    if steps is not None:
        return steps
    if cfg.epochs is not None:
        if stream is None:
            raise TrainingError("TrainConfig.epochs needs a batch stream from "
                                "prefdyn.training.lm_data (it knows the number of rows)")
        return cfg.epochs * stream.steps_per_epoch
    return cfg.steps


@dataclass(frozen=True)
class ReferenceOptions:
    """Where pi_ref's log-probs come from (see :func:`prefdyn.training.lm_runner.fit_lm`):
    ``cache`` None (auto), True (always precompute every row into the on-disk cache) or
    False (never touch the disk); ``cache_dir`` of that cache; ``batch_size`` of the
    precomputing pass."""

    cache: bool | None = None
    cache_dir: str | os.PathLike | None = None
    batch_size: int = 8


@dataclass
class LMSetup:
    """What one run trains and how: the policy and its optimizer, the objective, the step
    size and count, the batch stream (None for a plain iterator), this process's place
    in a distributed run and the device batches go to."""

    policy: LMPolicy
    optimizer: torch.optim.Optimizer
    objective: Objective
    mode: str
    lr: float
    steps: int
    stream: LMBatchStream | None
    dist: Distributed
    device: torch.device
    start_fingerprint: str

    @property
    def sharded(self) -> bool:
        """Whether FSDP shards the weights over the processes (:mod:`prefdyn.training.fsdp`)."""
        return self.policy.sharded


def setup_lm(loaded, batches: Iterator[Any], cfg: TrainConfig, *, mode: Literal["full", "lora"],
             steps: int | None = None, device: str | None = None, lora_kwargs: dict | None = None,
             resumable: bool = False) -> LMSetup:
    """Place the model (``device``, or this process's GPU under a launcher), lay the stream
    out over processes and micro-batches, and build the policy and optimizer for ``mode``."""
    stream = batches if isinstance(batches, LMBatchStream) else None
    if stream is None and (cfg.grad_accum > 1 or resumable or launched_world_size() > 1):
        raise TrainingError("gradient accumulation, resuming and multi-process runs need a "
                            "batch stream from prefdyn.training.lm_data (answer_batches, "
                            "pair_batches)")
    wanted = resolve_device(device) if device is not None else next(loaded.model.parameters()).device
    dist = setup_distributed(wanted)
    if dist.device is not None and dist.device != next(loaded.model.parameters()).device:
        loaded.model.to(dist.device)  # under a launcher: this process's GPU
    model_device = next(loaded.model.parameters()).device
    if stream is not None:
        stream.layout(micro_batches=cfg.grad_accum, rank=dist.rank, world=dist.world)
    steps = _total_steps(cfg, steps, stream)
    objective = loss_for_run(cfg.loss, beta=cfg.beta)
    # The reference cache is keyed on the weights pi_ref actually has (the start of this
    # run), recomputed here (~0.1 s): ``loaded.fingerprint`` is stale for a model trained
    # in place or copied from a trained one, and would serve the base model's values.
    start_fingerprint = model_fingerprint(loaded.model, loaded.tokenizer)
    policy = make_lm_policy(loaded, mode, seed=cfg.seed, lora_kwargs=lora_kwargs,
                            autocast=cfg.autocast_dtype)
    lr = cfg.lr if cfg.lr is not None else LM_DEFAULT_LR
    log.info("%s mode: %s, lr %.3g (%s), %d steps", mode, cfg.optimizer_for(mode), lr,
             "given" if cfg.lr is not None else "LM default; cfg.lr is None", steps)
    if cfg.sharding == "full" and dist.active:
        _check_even_shards(stream, cfg.grad_accum, dist.world)
        shard_policy(policy, param_dtype=cfg.autocast_dtype)  # before the optimizer sees them
    params = [p for p in policy.model.parameters() if p.requires_grad]
    log.info("%s mode: %d trainable parameters", mode, sum(p.numel() for p in params))
    optimizer = make_optimizer(params, cfg, lr, mode=mode)
    if cfg.sharding == "optimizer" and dist.active:
        optimizer = shard_optimizer(params, optimizer)
    return LMSetup(policy, optimizer, objective, mode, lr, steps, stream, dist, model_device,
                   start_fingerprint)


def _check_even_shards(stream: LMBatchStream, grad_accum: int, world: int) -> None:
    """Sharded weights are gathered by all processes together, so every process must run
    as many forwards as the others: every batch, an epoch's short last one included,
    must give each process ``grad_accum`` non-empty micro-batches."""
    last = stream.n % stream.batch_size or stream.batch_size
    if last < grad_accum * world:
        raise TrainingError(f"sharding='full': an epoch's last batch has {last} of {stream.n} rows, "
                            f"fewer than {world} process(es) x {grad_accum} micro-batch(es); "
                            "pick a batch size that divides the rows or leaves enough in the last batch")


def reference_for(setup: LMSetup, options: ReferenceOptions, *, resumable: bool) -> ReferenceCache:
    """pi_ref's log-probs for the run's batches: from the on-disk cache
    (:mod:`prefdyn.training.reference_cache`) where ``options`` and the run call for it
    (see :func:`prefdyn.training.lm_runner.fit_lm`), else computed lazily in memory for
    the rows drawn."""
    stream, table = setup.stream, None
    if stream is not None and options.cache is not False:
        key = reference_key(setup.start_fingerprint, stream.content, mode=setup.mode,
                            dtype=next(setup.policy.model.parameters()).dtype,
                            autocast=setup.policy.autocast)
        # Auto: precompute every row when the run sees them all anyway, or when a resumed
        # run must get the values an unbroken one got; a short run only reads a cache.
        precompute = (options.cache or resumable or setup.dist.active
                      or setup.steps * stream.batch_size >= stream.n)
        table = (precompute_reference(setup.policy, stream, key, batch_size=options.batch_size,
                                      cache_dir=options.cache_dir) if precompute
                 else cached_reference(key, stream.n, cache_dir=options.cache_dir))
    return ReferenceCache(setup.policy, table)
