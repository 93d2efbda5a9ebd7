"""Run LM preference training (full fine-tuning or LoRA).

The sibling of :mod:`prefdyn.training.runner`: :func:`fit_lm` takes a policy, its
reference and an optimizer from :mod:`prefdyn.training.lm_setup`, opens the records
(:class:`LMTracker`, run folder, TensorBoard), resumes from a checkpoint, then calls
the one loop :func:`prefdyn.training.loop.train` (and so the one step) unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from prefdyn.errors import TrainingError
from prefdyn.policies.lm import LMPolicy, to_device
from prefdyn.tracking.callbacks import Callback, CallbackList
from prefdyn.tracking.history import History
from prefdyn.tracking.preference import per_example_metrics
from prefdyn.tracking.run_dir import read_metrics
from prefdyn.tracking.tensorboard import Tee, TensorBoardSink
from prefdyn.training._sharded_optimizer import ConsolidateBeforeSave, is_sharded
from prefdyn.training.checkpoint import CheckpointCallback, finalize
from prefdyn.training.config import TrainConfig
from prefdyn.training.fsdp import (
    GatherBeforeSave,
    load_full_state,
    plain_model,
    sharded_grad_sync,
    squared_distance,
)
from prefdyn.training.lm_resume import LMRunFolder, open_run_folder, restore_run, write_outcome
from prefdyn.training.lm_setup import LMSetup, ReferenceOptions, reference_for, setup_lm
from prefdyn.training.loop import TrainState, train
from prefdyn.training.recompute import recomputed_activations


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
        """``delta_W_U`` and ``drift/<block>``, reading each W(0) tensor once and the
        device once (every parameter's sums stacked into one host read)."""
        parts: list[tuple[str, Tensor, Tensor, bool]] = []  # (block, ||change||^2, ||W0||^2, is W_U)
        if policy.lora:  # LoRA adapts attention projections only; W_U is frozen
            for name, module in policy.model.named_modules():
                if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                    for adapter in module.active_adapters:
                        parts.append((_block(name + "."), module.get_delta_weight(adapter).pow(2).sum(),
                                      module.base_layer.weight.pow(2).sum(), False))
        else:
            params = dict(policy.model.named_parameters())
            W_U = policy.model.get_output_embeddings().weight
            for name, start in policy.start_tensors():
                p = params.get(name)
                if p is None or not p.requires_grad:
                    continue
                start = start.to(p.device)
                parts.append((_block(name), squared_distance(p, start), start.pow(2).sum(), p is W_U))
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        delta_W_U = 0.0
        # Each sum as it was computed, exactly in float64 (one dtype for the stack).
        sums = torch.stack([s.double() for _, c, w, _ in parts for s in (c, w)]).tolist() if parts else []
        for (g, _, _, is_W_U), change, start in zip(parts, sums[0::2], sums[1::2]):
            if is_W_U:
                delta_W_U = change ** 0.5
            num[g] = num.get(g, 0.0) + change
            den[g] = den.get(g, 0.0) + start
        drift = {f"drift/{g}": (num[g] / den[g]) ** 0.5 if den[g] > 0 else 0.0 for g in sorted(num)}
        return {"delta_W_U": delta_W_U, **drift}

    def on_step_end(self, state, policy: LMPolicy, out) -> None:
        if state.step % self.log_every and state.step != state.max_steps:
            return
        record: dict[str, Any] = {"step": state.step, "split": "train", "problem": self.name,
                                  "group": None}
        means = {}
        for key, values in per_example_metrics(out.out, out.logps).items():
            if self.gather is not None:
                values = self.gather(values.float().contiguous())
            means[key] = values.float().mean()
        means["grad_norm"] = out.grad_norm
        record.update(zip(means, torch.stack([m.double() for m in means.values()]).tolist()))  # one host read
        record.update(self.weight_change(policy))
        self.history.add(record)


@dataclass(frozen=True)
class RunOutputs:
    """Where a run's records go (see :func:`fit_lm`): ``name`` tags them (``problem``),
    ``sink`` receives them too, ``run_folder`` keeps them with checkpoints every
    ``checkpoint_every`` steps (and resumes), ``tensorboard_dir`` mirrors them;
    ``keep_optimizer=False`` keeps only the final weights of a finished run
    (:func:`~prefdyn.training.checkpoint.finalize`)."""

    name: str = "lm"
    sink: Any = None
    run_folder: str | os.PathLike | None = None
    checkpoint_every: int | None = None
    tensorboard_dir: str | os.PathLike | None = None
    keep_optimizer: bool = True


@dataclass
class RunRecords:
    """Where the run records: its history (with the sinks it owns), the per-step tracker
    and the opened run folder (None without one)."""

    history: History
    tracker: LMTracker
    folder: LMRunFolder | None
    own_sinks: Tee


def open_records(setup: LMSetup, cfg: TrainConfig, outputs: RunOutputs) -> RunRecords:
    """The run folder (rank 0 writes), TensorBoard mirror, history and :class:`LMTracker`."""
    dist, folder = setup.dist, None
    if outputs.run_folder is not None:
        folder = open_run_folder(outputs.run_folder, cfg, mode=setup.mode, is_main=dist.is_main,
                                 device=setup.device)
    tb = (TensorBoardSink(outputs.tensorboard_dir)
          if outputs.tensorboard_dir is not None and dist.is_main else None)
    own_sinks = Tee(folder.run_dir if folder else None, tb)
    history = History(Tee(outputs.sink, *own_sinks.sinks) if dist.is_main else None)
    tracker = LMTracker(history, name=outputs.name, log_every=cfg.log_every,
                        gather=dist.gather if dist.active else None)
    return RunRecords(history, tracker, folder, own_sinks)


def resume(setup: LMSetup, records: RunRecords, outputs: RunOutputs,
           gather: GatherBeforeSave | None = None) -> CheckpointCallback | None:
    """Continue from the run folder's checkpoint, if any (weights, optimizer, stream
    position, the records up to it), and return the checkpoint writer (rank 0 of a run
    with a folder; None otherwise). ``gather``: a sharded run's whole state for the writer."""
    folder = records.folder
    if folder is None:
        return None
    if folder.checkpoint is not None:
        restore_run(folder, setup.policy, setup.optimizer, setup.steps,
                    load=load_full_state if setup.sharded else None)
        setup.stream.load_state(folder.checkpoint.batch_state)
        records.history.records = [r for r in _read_records(folder)
                                   if r.get("problem") == outputs.name]
        if outputs.sink is not None and setup.dist.is_main:
            # The caller's sink (an experiment's metrics.jsonl) gets the restored records
            # again, so it reads as the record of an unbroken run.
            for record in records.history.records:
                outputs.sink.log(record)
    if not setup.dist.is_main:
        return None
    return CheckpointCallback(folder.checkpoints, outputs.checkpoint_every or setup.steps,
                              setup.stream.state, optimizer=setup.optimizer,
                              extra=folder.identity, trainable_only=True,
                              state_source=gather.take if gather is not None else None)


def _train(setup: LMSetup, records: RunRecords, saver: CheckpointCallback | None,
           feed: Iterator[Any], callbacks: Sequence[Callback],
           max_grad_norm: float | None, divergence_factor: float | None,
           check_every: int = 1, consolidate: Callback | None = None,
           recompute: bool = False) -> TrainState:
    """The one loop, in train mode; how it ended written to the run folder (also on a
    NaN/inf loss, whose :class:`TrainingError` is re-raised); eval mode after."""
    folder, policy, steps = records.folder, setup.policy, setup.steps
    # A sharded state is gathered on rank 0 (every process) before it saves.
    run_callbacks: list[Callback] = [records.tracker, *([consolidate] if consolidate else []),
                                     *([saver] if saver else [])]
    policy.model.train()
    try:
        with recomputed_activations(policy.model, recompute):
            state = train(policy, setup.objective, feed, setup.optimizer, steps=steps,
                          callbacks=[*run_callbacks, *callbacks], max_grad_norm=max_grad_norm,
                          start_step=folder.start_step if folder else 0,
                          grad_sync=_grad_sync(setup),
                          divergence_factor=divergence_factor, check_every=check_every)
    except TrainingError as e:
        if folder is not None:
            write_outcome(folder, steps=steps, last_step=(e.step or 1) - 1, error=e,
                          last_checkpoint=saver.last_saved if saver else None)
        raise
    finally:
        policy.model.eval()
        records.own_sinks.close()
    if folder is not None:
        write_outcome(folder, steps=steps, last_step=state.step, error=None,
                      last_checkpoint=saver.last_saved if saver else None)
    return state


def _handed_back(policy: LMPolicy) -> LMPolicy:
    """The trained policy as the caller gets it: a sharded one as a plain policy over a
    whole copy of the trained weights (:func:`~prefdyn.training.fsdp.plain_model`)."""
    if not policy.sharded:
        return policy
    plain = LMPolicy(plain_model(policy), start_weights=policy.start_weights,
                     share_prefix=policy.share_prefix, autocast=policy.autocast)
    plain.at_start = False
    return plain


def _grad_sync(setup: LMSetup):
    if not setup.dist.active:
        return None
    return sharded_grad_sync if setup.sharded else setup.dist.grad_sync


def fit_lm(loaded, batches: Iterator[Any], cfg: TrainConfig, *,
           mode: Literal["full", "lora"] = "full", steps: int | None = None,
           callbacks: Sequence[Callback] = (), max_grad_norm: float | None = None,
           lora_kwargs: dict | None = None, sink=None, name: str = "lm",
           run_folder: str | os.PathLike | None = None, checkpoint_every: int | None = None,
           tensorboard_dir: str | os.PathLike | None = None, device: str | None = None,
           cache_reference: bool | None = None, reference_cache_dir: str | os.PathLike | None = None,
           reference_batch_size: int = 8, keep_optimizer: bool = True) -> LMRun:
    """Train ``loaded.model`` on ``batches`` (from :mod:`prefdyn.training.lm_data`).

    The loss is ``get_loss(cfg.loss, beta=cfg.beta)``; the optimizer is
    ``cfg.optimizer_for(mode)`` (AdamW unless SGD is asked for) with ``cfg.lr``, or 1e-5 when
    it is None (the last-layer curvature rule does not apply here). Steps: ``steps``,
    else ``cfg.epochs`` epochs of the stream's rows, else ``cfg.steps``; each step
    accumulates ``cfg.grad_accum`` micro-batches. The model is in train mode during
    the run (LoRA dropout is active) and back in eval mode afterwards.

    Reference log-probs (:class:`ReferenceOptions`): with a stream from
    :mod:`~prefdyn.training.lm_data` they are read from the on-disk cache
    (:mod:`prefdyn.training.reference_cache`, keyed by model fingerprint + data + mode;
    under ``reference_cache_dir`` or the default cache) or computed for every row once
    and written there. ``cache_reference=None`` (auto) precomputes when the run covers
    an epoch, resumes or is distributed, and otherwise computes only the rows drawn,
    lazily in memory; True always precomputes, False never touches the disk. Other
    iterators get them lazily in memory.

    Outputs (:class:`RunOutputs`): ``run_folder``: write ``config.yaml``,
    ``metrics.jsonl``, ``summary.json`` there and checkpoint every ``checkpoint_every``
    steps (and at the end) into ``run_folder/checkpoints``; a folder holding a
    checkpoint is resumed from it. A NaN/inf loss keeps the last checkpoint and the
    metrics, and ``summary.json`` names the failing step; the :class:`TrainingError`
    is re-raised. ``keep_optimizer=False``: a run that finishes keeps only its final
    weights (no optimizer state, no older checkpoints), for runs that are never
    continued (an experiment's runs, whose settings fix their steps); running it again
    restores them. ``tensorboard_dir``: mirror the records as TensorBoard scalars.
    ``device``: move the model there first (``auto``, ``cpu``, ``cuda``, ...); batches
    always follow the model's device. Under ``accelerate launch`` with several
    processes each takes its shard of every batch and gradients are averaged
    (:mod:`prefdyn.training.distributed`); only rank 0 writes files.

    The pieces, in order: :func:`~prefdyn.training.lm_setup.setup_lm`,
    :func:`~prefdyn.training.lm_setup.reference_for`, the callbacks' ``on_setup``,
    :func:`open_records`, :func:`resume`, then the one loop.
    """
    outputs = RunOutputs(name, sink, run_folder, checkpoint_every, tensorboard_dir, keep_optimizer)
    resumable = run_folder is not None
    setup = setup_lm(loaded, batches, cfg, mode=mode, steps=steps, device=device,
                     lora_kwargs=lora_kwargs, resumable=resumable)
    reference = reference_for(setup, ReferenceOptions(cache_reference, reference_cache_dir,
                                                      reference_batch_size), resumable=resumable)
    CallbackList(callbacks).on_setup(setup.policy)
    # From here on the weights may change (a restored checkpoint, the first update):
    # pi_ref is no longer the model itself.
    setup.policy.at_start = False
    records = open_records(setup, cfg, outputs)
    # Sharded state is gathered on rank 0 (every process) before the writer saves it.
    every, saved = outputs.checkpoint_every or setup.steps, records.folder is not None
    gather = GatherBeforeSave(setup.optimizer, every) if saved and setup.sharded else None
    consolidate = gather or (ConsolidateBeforeSave(setup.optimizer, every)
                             if saved and is_sharded(setup.optimizer) else None)
    saver = resume(setup, records, outputs, gather)
    feed = reference.wrap(to_device(b, setup.device) for b in batches)
    state = _train(setup, records, saver, feed, callbacks, max_grad_norm, cfg.divergence_factor,
                   cfg.check_every, consolidate, recompute=cfg.activation_checkpointing)
    if not keep_optimizer and records.folder is not None and setup.dist.is_main:
        finalize(records.folder.checkpoints)
    return LMRun(_handed_back(setup.policy), records.history, setup.lr, state, setup.optimizer)


def _read_records(folder) -> list[dict]:
    path = folder.path / "metrics.jsonl"
    return read_metrics(path) if path.is_file() else []
