"""Embedding snapshots of a fixed probe set while the whole model trains.

In last-layer training g(x) never moves. When every weight trains (Im & Li,
ICML 2024, Sec. 5, Fig. 8) it does: DPO makes the two classes of a behavior
more distinguishable and more concentrated. :class:`EmbeddingSnapshots`
extracts g(x) (the ``lm_head`` input at the last prompt token, see
:mod:`prefdyn.embeddings.extract`) of fixed probe prompts from the *current*
policy at chosen steps, keeps the snapshots for 2-D projections, and records
per behavior:

* ``D = ||mu+ - mu-||`` and ``scale_free_D = D / sqrt(trace Sigma)`` from
  :func:`prefdyn.diagnostics.distinguishability.behavior_stats`;
* ``spread``: the mean distance of an embedding to its own class mean,
  ``mean_i ||g(x_i) - mu_{c(i)}||`` (:func:`class_spread`). Im & Li describe
  the classes as concentrated around their means (their sub-exponential
  assumption); a smaller spread is a more concentrated class. ``spread / D``
  (``spread_ratio``) is the same without the overall scale, which full
  fine-tuning can change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from prefdyn.diagnostics.distinguishability import behavior_stats
from prefdyn.policies.lm import left_padded
from prefdyn._runtime import is_main_process
from prefdyn.errors import PrefdynError
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History

__all__ = ["LAST", "EmbeddingSnapshots", "Probe", "class_spread", "probe_embeddings", "snapshot_stats"]

LAST = -1
"""Put in ``steps`` to snapshot the last step, whatever it is."""


@dataclass
class Probe:
    """Fixed probe prompts: token ids (no special tokens added), labels and groups.

    prefers_yes / groups: (n,) bool / long; ``group_names[groups[i]]`` is row i's behavior.
    """

    token_ids: list[list[int]]
    prefers_yes: Tensor
    groups: Tensor
    group_names: list[str]

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if not (len(self.prefers_yes) == len(self.groups) == n):
            raise ValueError("probe rows have different lengths")
        if any(not ids for ids in self.token_ids):
            raise ValueError("probe has an empty prompt")

    def __len__(self) -> int:
        return len(self.token_ids)


def class_spread(embeddings: Tensor, prefers_yes: Tensor) -> float:
    """Mean distance of each embedding to its own class mean (lower = more concentrated)."""
    g = embeddings.double()
    mu_pos, mu_neg = g[prefers_yes].mean(0), g[~prefers_yes].mean(0)
    centered = torch.where(prefers_yes[:, None], g - mu_pos, g - mu_neg)
    return float(centered.norm(dim=1).mean())


def snapshot_stats(embeddings: Tensor, prefers_yes: Tensor) -> dict[str, float]:
    """D, scale-free D, spread and spread / D of one behavior's embeddings; NaN when
    a class has fewer than 2 rows (no spread to measure)."""
    n_pos = int(prefers_yes.sum())
    if min(n_pos, len(prefers_yes) - n_pos) < 2:
        nan = float("nan")
        return {"D": nan, "scale_free_D": nan, "spread": nan, "spread_ratio": nan}
    s = behavior_stats(embeddings, prefers_yes)
    spread = class_spread(embeddings, prefers_yes)
    return {"D": s.D, "scale_free_D": s.scale_free_D, "spread": spread,
            "spread_ratio": spread / s.D if s.D > 0 else math.inf}


@torch.no_grad()
def probe_embeddings(policy, probe: Probe, *, pad_id: int, batch_size: int = 16) -> Tensor:
    """g(x) of every probe prompt under ``policy.model`` now: (n, d) float32 on CPU.

    Eval mode (no dropout), left padding with position ids from the mask, the plain
    padded forward (as :func:`prefdyn.embeddings.extract_embeddings` without prefix
    reuse); train mode restored.
    """
    device = next(policy.model.parameters()).device
    was_training = policy.model.training
    policy.model.eval()
    try:
        out = [policy.last_hidden(*left_padded(probe.token_ids[i:i + batch_size], pad_id, device),
                                  share_prefix=False).float().cpu()
               for i in range(0, len(probe), batch_size)]
    finally:
        policy.model.train(was_training)
    return torch.cat(out)


class EmbeddingSnapshots(Callback):
    """g(x) of ``probe`` at the given steps (0 = before training, :data:`LAST` = the end).

    ``snapshots[step]`` holds the (n, d) embeddings; each snapshot adds one
    record per behavior to ``history`` with split ``"snapshot"`` and the
    :func:`snapshot_stats` metrics.

    ``store``: a folder where every snapshot is also saved
    (``<name>_step_<step>.safetensors``), so a resumed run (its history restored
    up to the checkpoint) gets back the snapshots it had already taken instead
    of missing them (the weights of step 0 are gone after the resume).
    """

    def __init__(self, probe: Probe, steps: Iterable[int], *, history: History, pad_id: int,
                 batch_size: int = 16, name: str = "lm", store: str | Path | None = None):
        self.probe, self.steps = probe, set(steps)
        self.history, self.pad_id, self.batch_size, self.name = history, pad_id, batch_size, name
        self.store = Path(store) if store is not None else None
        self.snapshots: dict[int, Tensor] = {}

    def _file(self, step: int) -> Path | None:
        return self.store / f"{self.name}_step_{step}.safetensors" if self.store is not None else None

    def _restore(self) -> None:
        """Snapshots the history already records (a resumed run), read back from the store."""
        if self.store is None:
            return
        recorded = {r["step"] for r in self.history.records
                    if r.get("split") == "snapshot" and r.get("problem") == self.name}
        for step in recorded:
            path = self._file(step)
            if not path.is_file():
                raise PrefdynError(f"snapshot of step {step} is recorded but {path} is missing: "
                                    "delete the run's checkpoints to start it again")
            self.snapshots[step] = load_file(path)["embeddings"]

    def on_train_start(self, state, policy) -> None:
        self._restore()
        if state.step in self.steps and state.step not in self.snapshots:
            self.take(state.step, policy)

    def on_step_end(self, state, policy, out) -> None:
        if state.step in self.steps:
            self.take(state.step, policy)

    def on_train_end(self, state, policy) -> None:
        if LAST in self.steps and state.step not in self.snapshots and state.error is None:
            self.take(state.step, policy)

    def take(self, step: int, policy) -> Tensor:
        emb = probe_embeddings(policy, self.probe, pad_id=self.pad_id, batch_size=self.batch_size)
        self.snapshots[step] = emb
        if self.store is not None and is_main_process():  # a launched run: rank 0 writes
            self.store.mkdir(parents=True, exist_ok=True)
            save_file({"embeddings": emb.contiguous()}, self._file(step))
        for g, gname in enumerate(self.probe.group_names):
            sel = self.probe.groups == g
            self.history.add({"step": step, "split": "snapshot", "problem": self.name,
                              "group": gname, "n": int(sel.sum()),
                              **snapshot_stats(emb[sel], self.probe.prefers_yes[sel])})
        return emb

    def stats(self, step: int) -> dict[str, dict[str, float]]:
        """{behavior: metrics} of the snapshot at ``step``."""
        return {r["group"]: {k: v for k, v in r.items()
                             if k not in ("step", "split", "problem", "group")}
                for r in self.history.records
                if r.get("split") == "snapshot" and r["step"] == step and r["problem"] == self.name}

    def group_rows(self, group: str | int) -> Tensor:
        """Probe row indices of one behavior."""
        g = self.probe.group_names.index(group) if isinstance(group, str) else group
        return (self.probe.groups == g).nonzero(as_tuple=True)[0]
