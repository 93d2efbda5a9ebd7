"""Training that survives being killed: checkpoint, then continue exactly.

Shared pieces (:func:`truncate_metrics`, :func:`config_dict`) serve every mode;
LM runs resume through ``fit_lm(run_folder=...)`` (:mod:`prefdyn.training.lm_resume`).
Last-layer runs resume with :func:`fit_last_layer_resumable`:

The pieces are ``fit_last_layer``'s (same policy, reference, step size, optimizer,
tracker and the one loop); only the batch stream is the resumable twin of
``random_minibatches`` and a :class:`CheckpointCallback` is added, so a resumed
run writes the same weights and the same ``metrics.jsonl`` as an unbroken one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.policies.last_layer import LastLayerData
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.run_dir import RunDir
from prefdyn.training.checkpoint import (
    CheckpointCallback,
    ResumableMinibatches,
    load_checkpoint,
    restore,
)
from prefdyn.training.config import TrainConfig
from prefdyn.training.loop import train
from prefdyn.training.runner import LastLayerRun, setup_last_layer

log = logging.getLogger(__name__)


class _SkipStart(Callback):
    """A tracker whose step-0 (here: resumed-from step) records are already on disk."""

    def __init__(self, inner: Callback):
        self.inner = inner

    def on_step_end(self, state, policy, out) -> None:
        self.inner.on_step_end(state, policy, out)

    def on_train_end(self, state, policy) -> None:
        self.inner.on_train_end(state, policy)


def kept_records(path: Path, step: int) -> list[dict]:
    """The records of ``path`` of steps <= ``step`` (those the checkpoint's weights
    produced), without a half-written last line; nothing is written."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if record.get("step", 0) <= step:
            kept.append(record)
    return kept


def truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep the records of steps <= ``step`` (:func:`kept_records`), dropping later ones
    and a half-written last line; rewritten atomically."""
    if not path.is_file():
        return []
    kept = kept_records(path, step)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return kept


def config_dict(cfg: TrainConfig) -> dict:
    """What a resumed run must share with the checkpoint: the config without the step
    count (``steps``/``epochs`` may grow between runs: train longer) and how often the
    step's checks are read and whether the optimizer state is sharded (``check_every``,
    ``sharding``: neither changes a number); ``precision`` only where
    it is not the default fp32 (checkpoints written before it existed are fp32 runs)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in ("steps", "epochs", "check_every", "sharding")
            and not (k == "precision" and v == "fp32")}


_config_dict = config_dict


def fit_last_layer_resumable(W_init: Tensor, train_data: LastLayerData, cfg: TrainConfig, *,
                             names: Sequence[str], run_folder: str | Path, checkpoint_every: int,
                             test_data: LastLayerData | None = None,
                             group_names: Sequence[str] | None = None, yes: int = 0, no: int = 1,
                             reference: Tensor | None = None,
                             callbacks: Sequence[Callback] = ()) -> LastLayerRun:
    """:func:`~prefdyn.training.runner.fit_last_layer` into ``run_folder``, continuing
    from ``run_folder/checkpoints`` when it holds a checkpoint.

    The returned history holds every record of the run, old and new.
    """
    run_folder = Path(run_folder)
    ckpt_folder = run_folder / "checkpoints"
    ckpt = load_checkpoint(ckpt_folder)
    saved_cfg = (ckpt.extra or {}).get("config") if ckpt is not None else None
    if ckpt is not None and saved_cfg != json.loads(json.dumps(_config_dict(cfg))):
        raise PrefdynError(f"{ckpt.path} was written with another config: {saved_cfg}")

    sink = RunDir(run_folder, config=cfg, seed=cfg.seed)
    lr = (ckpt.extra["lr"], ckpt.extra["lr_info"]) if ckpt is not None else None
    run = setup_last_layer(W_init, train_data, cfg, names=names, test_data=test_data,
                           group_names=group_names, yes=yes, no=no, reference=reference,
                           sink=sink, lr=lr)
    policy, optimizer, history = run.policy, run.optimizer, run.history
    minibatches = run.batches if isinstance(run.batches, ResumableMinibatches) else None
    batches_state_fn = minibatches.state if minibatches is not None else None
    tracker: Callback = run.tracker
    start_step = 0
    if ckpt is not None:
        restore(ckpt, policy, optimizer)
        if minibatches is not None:
            minibatches.load_state(ckpt.batch_state)
        start_step = ckpt.step
        history.records = truncate_metrics(sink.file("metrics.jsonl"), start_step)
        tracker = _SkipStart(tracker)
        log.info("resuming from %s (step %d)", ckpt.path, start_step)
    else:
        truncate_metrics(sink.file("metrics.jsonl"), -1)  # a fresh run starts an empty log

    saver = CheckpointCallback(ckpt_folder, checkpoint_every, batches_state_fn, optimizer=optimizer,
                               extra={"lr": run.lr, "lr_info": run.lr_info, "config": _config_dict(cfg)})
    try:
        state = train(policy, run.objective, run.batches, optimizer, steps=cfg.steps,
                      callbacks=[tracker, saver, *callbacks], start_step=start_step,
                      divergence_factor=cfg.divergence_factor, check_every=cfg.check_every)
    finally:
        sink.close()
    return LastLayerRun(policy, history, run.lr, run.lr_info, state)
