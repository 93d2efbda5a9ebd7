"""Set up and run LM preference training (full fine-tuning or LoRA).

The sibling of :mod:`prefdyn.training.runner`: it assembles a policy, its
reference, an optimizer and a tracker, then calls the one loop
:func:`prefdyn.training.loop.train` (and so the one step) unchanged.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from prefdyn._runtime import resolve_device
from prefdyn.errors import TrainingError
from prefdyn.losses import get_loss
from prefdyn.models.loading import model_fingerprint
from prefdyn.tracking.callbacks import Callback, CallbackList
from prefdyn.tracking.history import History
from prefdyn.tracking.preference import per_example_metrics
from prefdyn.tracking.run_dir import read_metrics
from prefdyn.tracking.tensorboard import Tee, TensorBoardSink
from prefdyn.training.checkpoint import CheckpointCallback, restore
from prefdyn.training.config import TrainConfig
from prefdyn.training.distributed import launched_world_size, setup_distributed
from prefdyn.training.lm_data import LMBatchStream
from prefdyn.training.lm_policy import LMPolicy, ReferenceCache, apply_lora, to_device
from prefdyn.training.lm_resume import open_run_folder, write_outcome
from prefdyn.training.loop import TrainState, train
from prefdyn.training.reference_cache import (
    cached_reference,
    precompute_reference,
    reference_key,
)
from prefdyn.training.runner import make_optimizer
from prefdyn.training.start_weights import StartWeights

log = logging.getLogger(__name__)

LM_DEFAULT_LR = 1e-5


@dataclass
class LMRun:
    """The trained policy, its history, the step size, the loop's final state and the
    optimizer (its class is ``cfg.optimizer``'s)."""

    policy: LMPolicy
    history: History
    lr: float
    state: TrainState
    optimizer: torch.optim.Optimizer | None = None


def _block(name: str) -> str:
    """The drift group of a parameter: ``layer_<i>`` for decoder block i, else ``other``."""
    m = re.search(r"\.layers\.(\d+)\.", name)
    return f"layer_{int(m.group(1)):02d}" if m else "other"


class LMTracker(Callback):
    """Per-step preference metrics, gradient norm, per-block relative weight drift and
    the unembedding's absolute drift ``delta_W_U = ||W_U(t) - W_U(0)||``.

    Drift of block l is ``||W_l(t) - W_l(0)|| / ||W_l(0)||`` over the block's
    trainable parameters in full mode, measured against the frozen reference copy
    (which *is* W(0), also after a resume); with LoRA it is the effective update
    ``||scale * B A|| / ||W_base||`` over the adapted matrices (B starts at 0, so
    the adapters' own drift would be undefined). LoRA leaves W_U (tied to the
    input embedding in SmolLM2) untouched, so ``delta_W_U`` is 0 there by
    construction. ``gather`` (distributed runs) concatenates per-example values of
    every process, so the metrics are those of the global batch.
    """

    def __init__(self, history: History, *, name: str = "lm", log_every: int = 1,
                 gather: Callable[[Tensor], Tensor] | None = None):
        self.history, self.name, self.log_every, self.gather = history, name, log_every, gather

    @torch.no_grad()
    def weight_change(self, policy: LMPolicy) -> dict[str, float]:
        """``delta_W_U`` and ``drift/<block>``, reading each W(0) tensor once."""
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        delta_W_U = 0.0  # LoRA adapts attention projections only; W_U is frozen
        if policy.lora:
            for name, module in policy.model.named_modules():
                if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                    for adapter in module.active_adapters:
                        g = _block(name + ".")
                        num[g] = num.get(g, 0.0) + module.get_delta_weight(adapter).pow(2).sum().item()
                        den[g] = den.get(g, 0.0) + module.base_layer.weight.pow(2).sum().item()
        else:
            params = dict(policy.model.named_parameters())
            W_U = policy.model.get_output_embeddings().weight
            for name, start in policy.start_tensors():
                p = params.get(name)
                if p is None or not p.requires_grad:
                    continue
                change = (p - start.to(p.device)).pow(2).sum().item()
                if p is W_U:
                    delta_W_U = change ** 0.5
                g = _block(name)
                num[g] = num.get(g, 0.0) + change
                den[g] = den.get(g, 0.0) + start.pow(2).sum().item()
        drift = {f"drift/{g}": (num[g] / den[g]) ** 0.5 if den[g] > 0 else 0.0 for g in sorted(num)}
        return {"delta_W_U": delta_W_U, **drift}

    def on_step_end(self, state, policy: LMPolicy, out) -> None:
        if state.step % self.log_every and state.step != state.max_steps:
            return
        record: dict[str, Any] = {"step": state.step, "split": "train", "problem": self.name,
                                  "group": None}
        for key, values in per_example_metrics(out.out, out.logps).items():
            if self.gather is not None:
                values = self.gather(values.float().contiguous())
            record[key] = values.float().mean().item()
        record["grad_norm"] = out.grad_norm.item()
        record.update(self.weight_change(policy))
        self.history.add(record)


def make_lm_policy(loaded, mode: Literal["full", "lora"], *, seed: int = 0,
                   lora_kwargs: dict | None = None) -> LMPolicy:
    """The policy for ``mode``. Both modify ``loaded.model`` in place (LoRA injects its
    adapters, full mode trains every weight); full mode keeps W(0) on disk for pi_ref
    and the drift (:class:`~prefdyn.training.start_weights.StartWeights`)."""
    if mode == "lora":
        return LMPolicy(apply_lora(loaded.model, seed=seed, **(lora_kwargs or {})))
    if mode == "full":
        start = StartWeights(loaded.model)  # W(0) on disk, not a second model in memory
        loaded.model.requires_grad_(True)
        return LMPolicy(loaded.model, start_weights=start)
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


def fit_lm(loaded, batches: Iterator[Any], cfg: TrainConfig, *,
           mode: Literal["full", "lora"] = "full", steps: int | None = None,
           callbacks: Sequence[Callback] = (), max_grad_norm: float | None = None,
           lora_kwargs: dict | None = None, sink=None, name: str = "lm",
           run_folder: str | os.PathLike | None = None, checkpoint_every: int | None = None,
           tensorboard_dir: str | os.PathLike | None = None, device: str | None = None,
           cache_reference: bool | None = None, reference_cache_dir: str | os.PathLike | None = None,
           reference_batch_size: int = 8) -> LMRun:
    """Train ``loaded.model`` on ``batches`` (from :mod:`prefdyn.training.lm_data`).

    The loss is ``get_loss(cfg.loss, beta=cfg.beta)``; the optimizer is
    ``cfg.optimizer_for(mode)`` (AdamW unless SGD is asked for) with ``cfg.lr``, or 1e-5 when
    it is None (the last-layer curvature rule does not apply here). Steps: ``steps``,
    else ``cfg.epochs`` epochs of the stream's rows, else ``cfg.steps``; each step
    accumulates ``cfg.grad_accum`` micro-batches. The model is in train mode during
    the run (LoRA dropout is active) and back in eval mode afterwards.

    Reference log-probs: with a stream from :mod:`~prefdyn.training.lm_data` they are
    read from the on-disk cache (:mod:`prefdyn.training.reference_cache`, keyed by
    model fingerprint + data + mode; under ``reference_cache_dir`` or the default
    cache) or computed for every row once and written there. ``cache_reference=None``
    (auto) precomputes when the run covers an epoch, resumes or is distributed, and
    otherwise computes only the rows drawn, lazily in memory; True always precomputes,
    False never touches the disk. Other iterators get them lazily in memory.

    ``run_folder``: write ``config.yaml``, ``metrics.jsonl``, ``summary.json`` there and
    checkpoint every ``checkpoint_every`` steps (and at the end) into
    ``run_folder/checkpoints``; a folder holding a checkpoint is resumed from it. A
    NaN/inf loss keeps the last checkpoint and the metrics, and ``summary.json``
    names the failing step; the :class:`TrainingError` is re-raised.
    ``tensorboard_dir``: mirror the records as TensorBoard scalars. ``device``:
    move the model there first (``auto``, ``cpu``, ``cuda``, ...); batches always
    follow the model's device. Under ``accelerate launch`` with several processes
    each takes its shard of every batch and gradients are averaged
    (:mod:`prefdyn.training.distributed`); only rank 0 writes files.
    """
    stream = batches if isinstance(batches, LMBatchStream) else None
    if stream is None and (cfg.grad_accum > 1 or run_folder is not None
                           or launched_world_size() > 1):
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
    objective = get_loss(cfg.loss, beta=cfg.beta)
    # The reference cache is keyed on the weights pi_ref actually has (the start of this
    # run), recomputed here (~0.1 s): ``loaded.fingerprint`` is stale for a model trained
    # in place or copied from a trained one, and would serve the base model's values.
    start_fingerprint = model_fingerprint(loaded.model, loaded.tokenizer)
    policy = make_lm_policy(loaded, mode, seed=cfg.seed, lora_kwargs=lora_kwargs)
    lr = cfg.lr if cfg.lr is not None else LM_DEFAULT_LR
    log.info("%s mode: %s, lr %.3g (%s), %d steps", mode, cfg.optimizer_for(mode), lr,
             "given" if cfg.lr is not None else "LM default; cfg.lr is None", steps)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    log.info("%s mode: %d trainable parameters", mode, sum(p.numel() for p in params))
    optimizer = make_optimizer(params, cfg, lr, mode=mode)

    table = None
    if stream is not None and cache_reference is not False:
        key = reference_key(start_fingerprint, stream.content, mode=mode,
                            dtype=next(policy.model.parameters()).dtype)
        # Auto: precompute every row when the run sees them all anyway, or when a resumed
        # run must get the values an unbroken one got; a short run only reads a cache.
        precompute = (cache_reference or run_folder is not None or dist.active
                      or steps * stream.batch_size >= stream.n)
        table = (precompute_reference(policy, stream, key, batch_size=reference_batch_size,
                                      cache_dir=reference_cache_dir) if precompute
                 else cached_reference(key, stream.n, cache_dir=reference_cache_dir))
    reference = ReferenceCache(policy, table)
    CallbackList(callbacks).on_setup(policy)
    # From here on the weights may change (a restored checkpoint, the first update):
    # pi_ref is no longer the model itself.
    policy.at_start = False

    folder = None
    if run_folder is not None:
        folder = open_run_folder(run_folder, cfg, mode=mode, is_main=dist.is_main,
                                 device=model_device)
    tb = TensorBoardSink(tensorboard_dir) if tensorboard_dir is not None and dist.is_main else None
    own_sinks = Tee(folder.run_dir if folder else None, tb)
    history = History(Tee(sink, *own_sinks.sinks) if dist.is_main else None)
    tracker = LMTracker(history, name=name, log_every=cfg.log_every,
                        gather=dist.gather if dist.active else None)
    run_callbacks: list[Callback] = [tracker]
    saver = None
    if folder is not None:
        if folder.checkpoint is not None:
            restore(folder.checkpoint, policy, optimizer)
            stream.load_state(folder.checkpoint.batch_state)
            history.records = [r for r in _read_records(folder) if r.get("problem") == name]
        if dist.is_main:
            saver = CheckpointCallback(folder.checkpoints, checkpoint_every or steps, stream.state,
                                       optimizer=optimizer, extra=folder.identity,
                                       trainable_only=True)
            run_callbacks.append(saver)
    feed = reference.wrap(to_device(b, model_device) for b in batches)
    policy.model.train()
    state = None
    try:
        state = train(policy, objective, feed, optimizer, steps=steps,
                      callbacks=[*run_callbacks, *callbacks], max_grad_norm=max_grad_norm,
                      start_step=folder.start_step if folder else 0,
                      grad_sync=dist.grad_sync if dist.active else None,
                      divergence_factor=cfg.divergence_factor)
    except TrainingError as e:
        if folder is not None:
            write_outcome(folder, steps=steps, last_step=(e.step or 1) - 1, error=e,
                          last_checkpoint=saver.last_saved if saver else None)
        raise
    finally:
        policy.model.eval()
        own_sinks.close()
    if folder is not None:
        write_outcome(folder, steps=steps, last_step=state.step, error=None,
                      last_checkpoint=saver.last_saved if saver else None)
    return LMRun(policy, history, lr, state, optimizer)


def _read_records(folder) -> list[dict]:
    path = folder.path / "metrics.jsonl"
    return read_metrics(path) if path.is_file() else []
