"""Resumable LM training runs inside an experiment.

An experiment writes into its run folder (a :class:`~prefdyn.tracking.run_dir.RunDir`,
the ``sink``); each of its LM training runs checkpoints into
``<run folder>/checkpoints/<run name>`` through :func:`fit_lm`'s ``run_folder``
and ``checkpoint_every``. Re-running the same command with the same ``--out``
therefore continues every run from its last checkpoint, and a finished run is
restored from its final checkpoint instead of being trained again (``fit_lm``
restores the weights, the optimizer, the batch stream and every RNG, so the
resumed run ends as an unbroken one would, and the RNG state after a restored
run is the one the unbroken run left behind).

What the experiment's own callbacks recorded (whole-split evaluation,
embedding snapshots) is mirrored to ``records.jsonl`` in the same folder, cut
back to the checkpoint's step on resume and handed back to the callbacks
through their :class:`History`, so the curves of a resumed run are those of an
unbroken one. Only the last checkpoint of a run is kept.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from prefdyn._hashing import hash_obj, stable_json
from prefdyn._runtime import is_main_process
from prefdyn.models.loading import model_fingerprint
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History
from prefdyn.tracking.tensorboard import Tee
from prefdyn.training.config import TrainConfig
from prefdyn.training.resume import config_dict, kept_records, truncate_metrics

log = logging.getLogger(__name__)

CHECKPOINTS_PER_RUN = 4
"""About this many checkpoints over a run (each on an evaluation step): a kill loses at
most a quarter of a run, and a full-model checkpoint (weights + AdamW state, ~3x the
model) is written only a few times."""


def checkpoint_every(steps: int, eval_every: int | None = None) -> int:
    """``steps / CHECKPOINTS_PER_RUN`` rounded up to a multiple of ``eval_every``."""
    every = max(1, -(-steps // CHECKPOINTS_PER_RUN))
    if eval_every:
        every = -(-every // eval_every) * eval_every
    return every


class _RecordFile:
    """Appends records to a JSONL file, one flushed line each (a kill keeps what was written)."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _checkpoint_step(folder: Path) -> int:
    """Step of ``folder/checkpoints/latest`` (written last, atomically), -1 if none."""
    latest = folder / "checkpoints" / "latest"
    return int(latest.read_text().strip().removeprefix("step_")) if latest.is_file() else -1


class _PruneCheckpoints(Callback):
    """Keeps only the newest checkpoint of the run (the saver runs before this callback)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _prune(self) -> None:
        latest = self.folder / "latest"
        if not latest.is_file() or not is_main_process():
            return
        keep = latest.read_text().strip()
        for old in self.folder.glob("step_*"):
            if old.is_dir() and old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    def on_step_end(self, state, policy, out) -> None:
        self._prune()

    def on_train_end(self, state, policy) -> None:
        self._prune()


def _barrier() -> None:
    """Wait for every process of a launched run whose process group is up (the first run
    of an experiment starts it later, in its set-up, which waits for rank 0 itself)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_identity(loaded, batches, cfg: TrainConfig, mode: str) -> dict[str, Any]:
    """What a run's checkpoints are valid for: the train config (its step count may
    grow), the mode, the data (the batch stream's content) and the start weights."""
    return {"config": json.loads(stable_json(config_dict(cfg))), "mode": mode,
            "data": hash_obj(getattr(batches, "content", None)),
            "start": model_fingerprint(loaded.model, loaded.tokenizer)}


class ResumableRun:
    """Where one training run of an experiment checkpoints, and its restored records.

    ``sink``: the experiment's run folder (anything with ``path`` and ``log``; None
    runs without checkpoints, as a library call without a run folder does);
    ``name``: the run's name, unique inside the experiment; ``identity``: the run's
    :func:`run_identity`. Checkpoints written by a run of another identity (the same
    ``--out`` with other settings, data or start) are deleted with a warning and the
    run starts from scratch, as it did before runs could resume.
    """

    def __init__(self, sink: Any, name: str, identity: dict[str, Any]):
        root = getattr(sink, "path", None)
        self.folder = (Path(root) / "checkpoints" / re.sub(r"[^\w.+=-]+", "_", name)
                       if root is not None else None)
        self.sink = sink
        if self.folder is not None:
            self._claim(identity)

    def _claim(self, identity: dict[str, Any]) -> None:
        if is_main_process():  # a launched run: rank 0 claims (and clears) the folder
            marker = self.folder / "run.json"
            if marker.is_file() and json.loads(marker.read_text()) != identity:
                log.warning("%s holds another run (other settings, data or start weights): "
                            "starting this run from scratch", self.folder)
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(identity, indent=1))
        _barrier()  # the other processes read the folder only once rank 0 has cleared it

    def history(self) -> History:
        """A :class:`History` for the run's callbacks: records go to the experiment's sink
        and to ``records.jsonl``; those up to the last checkpoint are restored."""
        if self.folder is None:
            return History(self.sink)
        records, step = self.folder / "records.jsonl", _checkpoint_step(self.folder)
        if not is_main_process():  # the same records as rank 0, which writes the file
            history = History(self.sink)
            history.records = kept_records(records, step)
            return history
        kept = truncate_metrics(records, step)
        history = History(Tee(self.sink, _RecordFile(records)))
        history.records = kept
        for record in kept:  # the experiment's metrics.jsonl reads as an unbroken run's
            self.sink.log(record)
        return history

    def fit_kwargs(self, steps: int, eval_every: int | None = None) -> dict[str, Any]:
        """``run_folder`` and ``checkpoint_every`` for :func:`fit_lm` (nothing without a
        folder); a finished run keeps only its final weights (``keep_optimizer=False``:
        its identity fixes its steps, so it is never continued)."""
        if self.folder is None:
            return {}
        return {"run_folder": self.folder, "checkpoint_every": checkpoint_every(steps, eval_every),
                "keep_optimizer": False}

    def callbacks(self) -> list[Callback]:
        """Callbacks to add to the run (pruning old checkpoints)."""
        return [] if self.folder is None else [_PruneCheckpoints(self.folder / "checkpoints")]
