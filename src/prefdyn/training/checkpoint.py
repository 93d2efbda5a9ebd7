"""Checkpoints that let a killed run continue as if it had never stopped.

A checkpoint is a folder ``step_{step:08d}`` holding the weights and buffers
(``model.safetensors``; for LM runs only the trainable parameters, e.g. the LoRA
adapters, see ``trainable_only``), the optimizer's tensors (``optimizer.safetensors``) and
the rest of its state (``optimizer.json``), every RNG state (``rng.safetensors``,
``rng.json``) and ``state.json`` (step, batch-stream state, extra). Weights are
never pickled, so loading a checkpoint cannot execute code. Each checkpoint is
written into a temporary folder and renamed into place, and ``latest`` is
updated last, so a kill at any moment leaves the previous checkpoint usable.

A run that has finished and will not train further can be finalized (:func:`finalize`): its
last checkpoint keeps the weights, RNG and stream state but drops the optimizer's
state (for AdamW twice the weights' size) and every older checkpoint. A finalized
checkpoint restores the weights; it refuses to continue training.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from prefdyn._store import write_tensors
from prefdyn.tracking.callbacks import Callback
from prefdyn.training.batches import ResumableMinibatches  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json",
         "rng.safetensors", "rng.json", "state.json")
OPTIMIZER_FILES = ("optimizer.safetensors", "optimizer.json")


@dataclass
class Checkpoint:
    """One loaded checkpoint: plain tensors and JSON, nothing bound to live objects yet.
    ``optimizer`` is None for a finalized checkpoint (:func:`finalize`)."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    rng: dict[str, Any]
    batch_state: dict | None
    extra: dict | None


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj))


def _split_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors to ``{"{param_index}.{name}": tensor}``; everything else stays JSON."""
    tensors, scalars = {}, {}
    for idx, pstate in sd["state"].items():
        scalars[str(idx)] = {}
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value  # write_tensors copies to the CPU one at a time
            else:
                scalars[str(idx)][name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(s) for i, s in meta["scalars"].items()}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    # JSON turned tuples (AdamW's betas) into lists; only "params" is a real list.
    groups = [{k: v if k == "params" or not isinstance(v, list) else tuple(v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (for LoRA: the adapters only), by state-dict name."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def save_checkpoint(folder: str | Path, *, step: int, policy: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, batch_state: dict | None = None,
                    extra: dict | None = None, trainable_only: bool = False,
                    state: tuple[dict[str, torch.Tensor], dict] | None = None) -> Path:
    """Write ``folder/step_{step:08d}`` atomically and point ``folder/latest`` at it.

    ``trainable_only`` stores just the parameters that train (LM runs: the LoRA
    adapters, or every weight of the policy but not the frozen reference copy).
    ``state``: (weights, optimizer state dict) to write instead of reading ``policy`` and
    ``optimizer`` (a sharded run's, gathered whole: :mod:`prefdyn.training.fsdp`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    # Streamed tensor by tensor (no second copy of the model in host memory); tensors
    # sharing storage (W0 may be a view) are written as they are.
    if state is not None:
        weights, optimizer_state = state
    else:
        weights = trainable_state(policy) if trainable_only else policy.state_dict()
        optimizer_state = optimizer.state_dict()
    write_tensors(tmp / "model.safetensors", weights)
    opt_tensors, opt_meta = _split_optimizer(optimizer_state)
    write_tensors(tmp / "optimizer.safetensors", opt_tensors)
    _write_json(tmp / "optimizer.json", opt_meta)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on GPUs draws from these
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    write_tensors(tmp / "rng.safetensors", rng)
    np_state = np.random.get_state()
    _write_json(tmp / "rng.json", {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]})
    _write_json(tmp / "state.json", {"step": step, "batch_state": batch_state, "extra": extra})
    final = folder / name
    if final.exists():  # re-saving a step (rare): the old copy is replaced, not merged
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = folder / ".latest.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, folder / "latest")
    log.info("checkpoint %s", final)
    return final


def _read(path: Path) -> Checkpoint:
    state = json.loads((path / "state.json").read_text())
    final = bool(state.get("final"))
    missing = [f for f in FILES if not (path / f).is_file()
               and not (final and f in OPTIMIZER_FILES)]
    if missing:
        raise FileNotFoundError(f"{path} lacks {', '.join(missing)}")
    rng = json.loads((path / "rng.json").read_text())
    rng.update(load_file(path / "rng.safetensors"))
    optimizer = None if final else _join_optimizer(
        load_file(path / "optimizer.safetensors"),
        json.loads((path / "optimizer.json").read_text()))
    return Checkpoint(path, int(state["step"]), load_file(path / "model.safetensors"),
                      optimizer, rng, state.get("batch_state"), state.get("extra"))


def finalize(folder: str | Path) -> Path | None:
    """Keep only the newest checkpoint of a finished run, without its optimizer state.

    ``state.json`` is marked ``final`` before the optimizer files go, so a kill at any
    moment leaves a readable checkpoint. Returns the kept checkpoint (None if none)."""
    folder = Path(folder)
    latest = folder / "latest"
    if not latest.is_file():
        return None
    keep = folder / latest.read_text().strip()
    state_file = keep / "state.json"
    state = json.loads(state_file.read_text())
    if not state.get("final"):
        tmp = keep / ".state.json.tmp"
        _write_json(tmp, {**state, "final": True})
        os.replace(tmp, state_file)
    for name in OPTIMIZER_FILES:
        (keep / name).unlink(missing_ok=True)
    for old in folder.glob("step_*"):
        if old.is_dir() and old != keep:
            shutil.rmtree(old)
    return keep


def load_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The newest readable checkpoint in ``folder`` (``latest`` first, then older ones,
    each skipped with a warning if partial or corrupt); None if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = sorted((p for p in folder.glob("step_*") if p.is_dir()), reverse=True)
    latest = folder / "latest"
    if latest.is_file():
        named = folder / latest.read_text().strip()
        candidates = [named] + [p for p in candidates if p != named]
    for path in candidates:
        try:
            return _read(path)
        except Exception as e:  # noqa: BLE001 -- any unreadable file means "use an older one"
            warnings.warn(f"skipping unusable checkpoint {path}: {e}", stacklevel=2)
    return None


LoadState = Callable[[torch.nn.Module, torch.optim.Optimizer | None, dict, dict | None], None]
"""``(policy, optimizer, weights, optimizer_state)``: put a checkpoint's whole weights and
optimizer state into a live run (for a sharded one: :func:`prefdyn.training.fsdp.load_full_state`)."""


def _load_plain(policy: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                weights: dict, optimizer_state: dict | None) -> None:
    policy.load_state_dict(weights, strict=False)  # the key sets are checked by restore
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state)


def restore(checkpoint: Checkpoint, policy: torch.nn.Module,
            optimizer: torch.optim.Optimizer | None = None, *, load: LoadState = _load_plain) -> None:
    """Put weights, optimizer state and every global RNG back as they were at the save.

    A checkpoint holding only the trainable parameters must hold all of them. A
    finalized checkpoint (:func:`finalize`) has no optimizer state to restore: passing an
    optimizer for it is an error (training on would restart the optimizer silently).
    ``load`` puts the weights and optimizer state in (default: ``load_state_dict``)."""
    trainable = set(trainable_state(policy))
    if set(checkpoint.model) not in (set(policy.state_dict()), trainable):
        missing = sorted(trainable - set(checkpoint.model))[:3]
        unexpected = sorted(set(checkpoint.model) - set(policy.state_dict()))[:3]
        raise ValueError(f"{checkpoint.path}: weights do not match the model "
                         f"(missing e.g. {missing}, unexpected e.g. {unexpected})")
    if optimizer is not None and checkpoint.optimizer is None:
        raise ValueError(f"{checkpoint.path} is a finished run's final checkpoint: it kept "
                         "the weights but not the optimizer state, so it cannot train on")
    load(policy, optimizer, checkpoint.model, checkpoint.optimizer)
    torch.set_rng_state(checkpoint.rng["torch_cpu"])
    cuda = [checkpoint.rng[f"torch_cuda_{i}"] for i in range(len(checkpoint.rng))
            if f"torch_cuda_{i}" in checkpoint.rng]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = checkpoint.rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = checkpoint.rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


class BeforeSave(Callback):
    """On every process, ``collect(policy)`` at the steps the checkpoint writer
    (:class:`CheckpointCallback`, rank 0, placed after this callback) saves: every
    ``every`` steps and at a normal end not just saved. For state that every process must
    help gather onto rank 0 first (a sharded optimizer's or model's)."""

    def __init__(self, every: int):
        self.every, self.last = every, 0

    def collect(self, policy) -> None:
        raise NotImplementedError

    def on_train_start(self, state, policy) -> None:
        self.last = state.step

    def on_step_end(self, state, policy, out) -> None:
        if state.step % self.every == 0:
            self.collect(policy)
            self.last = state.step

    def on_train_end(self, state, policy) -> None:
        if state.error is None and state.step != self.last:
            self.collect(policy)


class CheckpointCallback(Callback):
    """Save every ``every`` steps and when training ends normally.

    The loop's hooks see the policy but not the optimizer, so it is given here.

    ``batches_state_fn()`` returns the batch stream's state (e.g.
    :meth:`ResumableMinibatches.state`); ``extra`` is stored as is (e.g. the step
    size, so a resumed run need not re-derive it). ``state_source()`` gives the weights
    and optimizer state to write when the policy and optimizer cannot be read directly
    (a sharded run: :class:`prefdyn.training.fsdp.GatherBeforeSave`).
    """

    def __init__(self, folder: str | Path, every: int,
                 batches_state_fn: Callable[[], dict] | None = None, *,
                 optimizer: torch.optim.Optimizer, extra: dict | None = None,
                 trainable_only: bool = False,
                 state_source: Callable[[], tuple[dict, dict]] | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.folder, self.every, self.optimizer = Path(folder), every, optimizer
        self.batches_state_fn, self.extra = batches_state_fn, extra
        self.trainable_only = trainable_only
        self.state_source = state_source  # a sharded run's gathered state
        self.last_saved: int | None = None

    def _save(self, state, policy) -> None:
        verify = getattr(state, "verify", None)
        if verify is not None:  # deferred step checks: never save past a bad step
            verify()
        save_checkpoint(self.folder, step=state.step, policy=policy, optimizer=self.optimizer,
                        batch_state=self.batches_state_fn() if self.batches_state_fn else None,
                        extra=self.extra, trainable_only=self.trainable_only,
                        state=self.state_source() if self.state_source else None)
        self.last_saved = state.step

    def on_train_start(self, state, policy) -> None:
        self.last_saved = state.step  # the start (or the resumed-from step) is on disk already

    def on_step_end(self, state, policy, out) -> None:
        if state.step % self.every == 0:
            self._save(state, policy)

    def on_train_end(self, state, policy) -> None:
        # After an error the batch stream may be one batch ahead of the weights.
        if state.error is None and state.step != self.last_saved:
            self._save(state, policy)
