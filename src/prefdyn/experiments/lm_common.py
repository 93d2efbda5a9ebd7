"""What the LM experiments (Im & Li, ICML 2024, Sec. 5, App. B-D) share.

The last-layer experiments train on cached embeddings; these train the whole
model (or LoRA adapters) with :func:`prefdyn.training.lm_runner.fit_lm`, so
they need the model itself, the persona rows as LM batches, whole-split
evaluation and embedding snapshots. This module gives:

* :class:`LMParams` (= :class:`LMExperimentPreset`), the ``experiment:`` params every
  LM spec shares, and :func:`on_lm_workspace`, its ``run(ctx)`` adapter;
* :class:`LMTask`, behaviors of a :class:`Workspace` as one mixture with a
  per-row behavior group, its training batches, fixed evaluation batches and
  its probe (:func:`lm_task`);
* :func:`train_lm`, one call of ``fit_lm`` with the evaluation tracker and the
  snapshot callback attached, and :meth:`LoadedModel.copy` (``fit_lm`` trains the
  model it is given in place).

An LM experiment is ``fn(ws, train, *, sink, loaded, preset, **kwargs)``:
``train`` (a :class:`TrainConfig`) is authoritative for the optimisation
(steps, lr, beta, batch size, loss, eval_every, seed), the params for what
``TrainConfig`` has no field for (mode, eval rows, snapshot steps, how many
behaviors to pick).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

import torch
from torch import Tensor

from prefdyn.data.tasks import BehaviorData, mix_behaviors
from prefdyn.data.tasks import flip as flip_behavior
from prefdyn.errors import PrefdynError
from prefdyn.experiments._resume import ResumableRun, run_identity
from prefdyn.experiments.spec import PERSONA_ATTRIBUTION, ExperimentSpec, Option, RunContext, register
from prefdyn.experiments.workspace import Workspace
from prefdyn.losses import loss_for_run
from prefdyn.models import LoadedModel
from prefdyn.policies.lm import AnswerBatch
from prefdyn.tracking.history import History
from prefdyn.tracking.lm_metrics import LMEvalTracker
from prefdyn.tracking.snapshots import LAST, EmbeddingSnapshots, Probe
from prefdyn.training.config import TrainConfig
from prefdyn.training.lm_data import answer_batches
from prefdyn.training.lm_runner import LMRun, fit_lm

log = logging.getLogger(__name__)

__all__ = [
    "LAST",
    "LMExperimentPreset",
    "LMParams",
    "LMTask",
    "LMTraining",
    "lm_spec",
    "lm_task",
    "on_lm_workspace",
    "spread_by_D",
    "run_steps",
    "train_lm",
]


# ------------------------------------------------------------------- params ---

@dataclass(frozen=True)
class LMExperimentPreset:
    """The ``experiment:`` params of an LM experiment (the rest is in ``train``/``task``).

    ``mode`` (full | lora), ``n_behaviors`` (how many to pick by D when no behaviors are
    named), ``eval_rows`` (rows per behavior and split evaluated every ``eval_every``
    steps; None = all), ``probe_rows`` (rows per behavior in the snapshot probe, drawn
    from ``probe_split``: train, test or all rows) and ``snapshot_steps`` (0 = before
    training, :data:`LAST` = the end). Named presets are YAML files under
    ``experiments/presets/lm-*/``.
    """

    mode: Literal["full", "lora"] = "full"
    n_behaviors: int = 3
    eval_rows: int | None = 16
    probe_rows: int | None = 40
    probe_split: Literal["train", "test", "all"] = "all"
    snapshot_steps: tuple[int, ...] = (0, LAST)

    def __post_init__(self) -> None:
        if self.mode not in ("full", "lora"):
            raise PrefdynError(f"--mode (experiment.mode) must be full or lora, got {self.mode!r}")
        if self.n_behaviors < 1:
            raise PrefdynError(f"experiment.n_behaviors must be >= 1, got {self.n_behaviors}")
        for name in ("eval_rows", "probe_rows"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise PrefdynError(f"experiment.{name} must be >= 2 or None, got {value}")


LMParams = LMExperimentPreset
"""The name the specs use; ``LMExperimentPreset`` is kept for the experiment bodies."""

DEFAULT_BATCH = 8
"""Rows per step when ``train.batch_size`` is None."""

LM_OPTIONS = {
    "mode": Option("full (every weight) or lora (default: the preset's)."),
    "n_behaviors": Option("Behaviors picked, spread over D, when --behaviors is not given."),
    "eval_rows": Option("Rows per behavior and split evaluated every eval_every steps."),
}


def lm_spec(name: str, title: str, help: str, run: Callable[[RunContext], Any],
            folder: str | Callable[[Any], str], **kwargs: Any) -> ExperimentSpec:
    """Register an LM experiment's spec: :class:`LMParams` and its flags, ``runs/lm``, the
    ``quick`` preset and the persona attribution unless ``kwargs`` say otherwise."""
    fields = {"params": LMParams, "options": LM_OPTIONS, "default_out": "runs/lm", "default_preset": "quick",
              "attribution": PERSONA_ATTRIBUTION, **kwargs,
              "folder": folder if callable(folder) else lambda cfg: folder}
    return register(ExperimentSpec(name=name, title=title, help=help, run=run, **fields))


def on_lm_workspace(fn: Callable[..., Any], **kwargs: Any) -> Callable[[RunContext], Any]:
    """``run(ctx)`` for an LM experiment ``fn(ws, train, *, sink, loaded, preset, **kwargs)``:
    the model is loaded once and the workspace built from it."""

    def run(ctx: RunContext):
        return fn(ctx.workspace(), ctx.train, sink=ctx.sink, loaded=ctx.model(), preset=ctx.params,
                  **kwargs)

    run.__doc__ = fn.__doc__
    return run


# --------------------------------------------------------------------- task ---

def _balanced_head(rows: Tensor, prefers_yes: Tensor, limit: int | None) -> Tensor:
    """At most ``limit`` of ``rows``, alternating the classes so both stay represented."""
    if limit is None or len(rows) <= limit:
        return rows
    pos, neg = rows[prefers_yes[rows]], rows[~prefers_yes[rows]]
    n_pos = min(len(pos), max(limit - len(neg), limit // 2))
    return torch.cat([pos[:n_pos], neg[:limit - n_pos]]).sort().values


@dataclass
class LMTask:
    """Behaviors as one data set for LM training; ``data.groups`` names each row's behavior.

    Dataset row ids (``batch.rows``) index ``data``'s rows, unique across behaviors,
    so the reference cache and the per-behavior metrics can key on them.
    """

    data: BehaviorData
    yes_id: int
    no_id: int
    tokenizer: Any
    max_length: int | None = None

    @property
    def group_names(self) -> list[str]:
        return list(self.data.group_names)

    @property
    def row_groups(self) -> Tensor:
        """(N,) long: the behavior index of every row."""
        return self.data.groups

    def train_batches(self, batch_size: int, seed: int) -> Iterator[AnswerBatch]:
        """Endless shuffled minibatches of the train rows of every behavior, mixed."""
        return answer_batches(self.data, self.tokenizer, self.yes_id, self.no_id, batch_size,
                              seed, max_length=self.max_length)

    def split_rows(self, split: Literal["train", "test", "all"], limit: int | None = None
                   ) -> Tensor:
        """Rows of ``split``, at most ``limit`` per behavior (class-balanced), sorted."""
        rows = {"train": self.data.train_idx, "test": self.data.test_idx,
                "all": torch.arange(self.data.n)}[split]
        per = [_balanced_head(rows[self.data.groups[rows] == g], self.data.prefers_yes, limit)
               for g in range(len(self.group_names))]
        return torch.cat(per).sort().values if per else rows[:0]

    def eval_batches(self, split: Literal["train", "test"], *, limit: int | None = None,
                     batch_size: int = 32) -> list[AnswerBatch]:
        """Fixed batches covering ``split_rows(split, limit)`` once each (for evaluation)."""
        rows = self.split_rows(split, limit)
        if len(rows) == 0:
            return []
        sub = dataclasses.replace(self.data, train_idx=rows)
        n_batches = math.ceil(len(rows) / batch_size)
        return list(islice(answer_batches(sub, self.tokenizer, self.yes_id, self.no_id,
                                          batch_size, seed=0, max_length=self.max_length),
                           n_batches))

    def probe(self, split: Literal["train", "test", "all"] = "all", limit: int | None = None) -> Probe:
        """The prompts of ``split_rows(split, limit)`` as a snapshot probe."""
        rows = self.split_rows(split, limit)
        texts = [self.data.prompts[i] for i in rows.tolist()]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return Probe(ids, self.data.prefers_yes[rows], self.data.groups[rows], self.group_names)


def lm_task(ws: Workspace, loaded: LoadedModel, which: Sequence[int] | None = None, *,
            flip: bool = False, name: str = "lm") -> LMTask:
    """Behaviors ``which`` of ``ws`` (default all) mixed into one :class:`LMTask`;
    ``flip`` swaps every preferred and dispreferred answer (misalignment)."""
    which = list(range(len(ws.behaviors))) if which is None else list(which)
    if not which:
        raise PrefdynError("an LM task needs at least one behavior")
    behaviors = [ws.behaviors[i] for i in which]
    if flip:
        behaviors = [flip_behavior(b) for b in behaviors]
    max_len = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    return LMTask(mix_behaviors(behaviors, name=name), ws.answer_ids[0], ws.answer_ids[1],
                  loaded.tokenizer, max_len)


def spread_by_D(ws: Workspace, k: int) -> list[int]:
    """``k`` behaviors spread evenly over the range of D (train rows), lowest D first.

    Uses the base model's cached embeddings, so it costs no forward pass.
    """
    from prefdyn.diagnostics.distinguishability import behavior_stats

    D = [behavior_stats(ws.embeddings[i][b.train_idx], b.prefers_yes[b.train_idx]).D
         for i, b in enumerate(ws.behaviors)]
    order = sorted(range(len(D)), key=lambda i: D[i])
    if k >= len(order):
        return order
    picks = [order[round(j * (len(order) - 1) / max(k - 1, 1))] for j in range(k)]
    return list(dict.fromkeys(picks))


# ----------------------------------------------------------------- training ---

@dataclass
class LMTraining:
    """One LM run: ``run`` (fit_lm's result; ``run.history`` = minibatch records),
    ``history`` (whole-split evaluation and snapshot records) and ``snapshots``."""

    run: LMRun
    history: History
    snapshots: EmbeddingSnapshots | None
    task: LMTask
    seconds: float = 0.0
    steps: int = 0
    """Optimizer steps run: ``train.epochs`` epochs of the task's train rows when set, else
    ``train.steps`` (:func:`run_steps`)."""


def run_steps(train: TrainConfig, batches: Any) -> int:
    """Steps of one run: ``train.epochs * ceil(train rows / batch)`` when ``train.epochs`` is
    set (Im & Li Sec. 5: "We train for 1 epoch"), else ``train.steps``."""
    if train.epochs is None:
        return train.steps
    return train.epochs * batches.steps_per_epoch


def train_lm(loaded: LoadedModel, task: LMTask, train: TrainConfig, preset: LMExperimentPreset,
             *, sink=None, name: str = "lm", snapshots: bool = True, copy_model: bool = True,
             callbacks: Sequence[Any] = (), **fit_kwargs) -> LMTraining:
    """Train on ``task`` with ``fit_lm`` (mode from ``preset``), evaluating train and test
    rows (splits ``"train_eval"`` and ``"test"``) every ``train.eval_every`` steps and
    snapshotting the probe's embeddings at ``preset.snapshot_steps``.

    ``copy_model`` trains a deep copy (``loaded`` stays the base model). Records go to
    ``sink`` (a RunDir) with ``problem = name``; the run checkpoints into
    ``<sink's folder>/checkpoints/<name>`` and resumes from there
    (:class:`~prefdyn.experiments._resume.ResumableRun`). ``fit_kwargs`` pass through to
    ``fit_lm``.
    """
    model = loaded.copy() if copy_model else loaded
    batch_size = train.batch_size or DEFAULT_BATCH
    batches = task.train_batches(batch_size, train.seed)
    steps = run_steps(train, batches)
    resumable = ResumableRun(sink, name, run_identity(model, batches, train, preset.mode))
    history = resumable.history()
    splits = {"train_eval": task.eval_batches("train", limit=preset.eval_rows)}
    test = task.eval_batches("test", limit=preset.eval_rows)
    if test:
        splits["test"] = test
    evals = LMEvalTracker(loss_for_run(train.loss, beta=train.beta), splits, history=history,
                          every=train.eval_every, name=name, row_groups=task.row_groups,
                          group_names=task.group_names)
    cbs: list[Any] = [evals]
    snaps = None
    if snapshots and preset.snapshot_steps:
        pad = model.tokenizer.pad_token_id
        pad = model.tokenizer.eos_token_id if pad is None else pad
        snaps = EmbeddingSnapshots(task.probe(preset.probe_split, preset.probe_rows), preset.snapshot_steps,
                                   history=history, pad_id=pad, name=name, store=resumable.folder)
        cbs.append(snaps)
    log.info("LM %s run %r: %d steps, batch %d, %d behaviors", preset.mode, name, steps,
             batch_size, len(task.group_names))
    start = time.perf_counter()
    run = fit_lm(model, batches, train, mode=preset.mode,
                 steps=steps, callbacks=[*cbs, *callbacks, *resumable.callbacks()], sink=sink,
                 name=name, **{**resumable.fit_kwargs(steps, train.eval_every), **fit_kwargs})
    return LMTraining(run, history, snaps, task, time.perf_counter() - start, steps)
