"""Run folders for LM training: resume from the last checkpoint, record how it ended.

Used by :func:`prefdyn.training.lm_runner.fit_lm` when given ``run_folder``. The
folder holds what every run writes (``config.yaml``, ``environment.json``,
``metrics.jsonl``), ``checkpoints/`` (trainable parameters only, as safetensors,
with optimizer, RNG and batch-stream state; see :mod:`prefdyn.training.checkpoint`)
and ``summary.json`` saying whether the run finished or which step failed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from prefdyn.errors import PrefdynError
from prefdyn.tracking.run_dir import RunDir
from prefdyn.training.checkpoint import Checkpoint, LoadState, load_checkpoint, restore
from prefdyn.training.config import TrainConfig
from prefdyn.training.resume import config_dict, truncate_metrics

log = logging.getLogger(__name__)


@dataclass
class LMRunFolder:
    """An opened run folder: its RunDir (None on processes other than rank 0), the
    checkpoint to resume from (None for a fresh run) and the run's identity."""

    path: Path
    run_dir: RunDir | None
    checkpoint: Checkpoint | None
    identity: dict

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def start_step(self) -> int:
        return self.checkpoint.step if self.checkpoint is not None else 0


def open_run_folder(path: str | Path, cfg: TrainConfig, *, mode: str, is_main: bool = True,
                    device=None) -> LMRunFolder:
    """Open ``path`` for an LM run, resuming when ``path/checkpoints`` holds a checkpoint
    written with the same config (``steps`` may differ) and mode; metrics after the
    checkpoint's step are dropped, a fresh run starts an empty ``metrics.jsonl``."""
    path = Path(path)
    identity = json.loads(json.dumps({"config": config_dict(cfg), "mode": mode}))
    ckpt = load_checkpoint(path / "checkpoints")
    if ckpt is not None:
        saved = {k: (ckpt.extra or {}).get(k) for k in identity}
        if saved != identity:
            raise PrefdynError(f"{ckpt.path} was written by another run: {saved}; this run is "
                               f"{identity}. Use another run folder or delete it")
    run_dir = None
    if is_main:
        run_dir = RunDir(path, config={"train": cfg, "mode": mode}, seed=cfg.seed, device=device)
        truncate_metrics(run_dir.file("metrics.jsonl"), ckpt.step if ckpt is not None else -1)
    if ckpt is not None:
        log.info("resuming %s from %s (step %d)", path, ckpt.path, ckpt.step)
    return LMRunFolder(path, run_dir, ckpt, identity)


def restore_run(folder: LMRunFolder, model, optimizer, steps: int, *,
                load: LoadState | None = None) -> None:
    """Put the folder's checkpoint back into ``model`` and ``optimizer``. A finished run's
    final checkpoint (:func:`~prefdyn.training.checkpoint.finalize`: weights, no optimizer
    state) restores the weights only, and is refused when the run would train past it.
    ``load``: how the state goes in (:func:`~prefdyn.training.checkpoint.restore`; a
    sharded run's own)."""
    ckpt = folder.checkpoint
    finished = ckpt.optimizer is None
    if finished and ckpt.step < steps:
        raise PrefdynError(f"{ckpt.path} is the final checkpoint of a run that finished at step "
                           f"{ckpt.step}; it kept no optimizer state, so it cannot train on to step "
                           f"{steps}. Use another run folder or delete it")
    restore(ckpt, model, None if finished else optimizer, **({"load": load} if load else {}))


def write_outcome(folder: LMRunFolder, *, steps: int, last_step: int,
                  error: BaseException | None, last_checkpoint: int | None) -> None:
    """``summary.json``: finished, or the failing step and the checkpoint to resume from."""
    if folder.run_dir is None:
        return
    summary: dict = {"status": "finished" if error is None else "failed", "steps": steps,
                     "last_step": last_step, "last_checkpoint": last_checkpoint}
    if error is not None:
        summary["failed_step"] = getattr(error, "step", None)
        summary["error"] = str(error)
    folder.run_dir.write_summary(summary)
