"""Per-concept learning curves and per-pair log-prob changes, written to the run folder.

``prefdyn compare DIAGNOSIS RUN`` checks a diagnosis (``diagnosis.json``: the predicted
learning order of the data's concepts, the pairs predicted to lower the chosen
log-prob) against what a run did. It reads two files that every run writes the same
way, prefdyn's own loop (:class:`ConceptTracker`, a :func:`~prefdyn.training.lm_runner.fit_lm`
callback) and TRL's trainers (:mod:`prefdyn.integrations.trl`), so both give one
folder shape (the contract is ``notes/diagnosis_schema.md``):

* ``concepts.jsonl``: one line per evaluation,
  ``{"step": int, "concept": {name: {"loss": f, "margin": f, "accuracy": f}}}``: the
  objective's loss, the reward margin ``beta * h`` and the share of pairs with margin > 0
  (:data:`CONCEPT_METRICS`; names of :mod:`prefdyn.tracking.metrics`), averaged over the
  probe pairs of each concept;
* ``pair_logps.json``: ``{"indices", "chosen_start", "chosen_end", "rejected_start",
  "rejected_end"}``: the summed log-probs of every probe pair under pi_ref (start) and
  the model at the last evaluation (end), rewritten at each evaluation so a run that
  stops part-way keeps what it measured. ``indices`` are the pairs' positions in the
  data's load order (a batch's ``rows``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prefdyn._runtime import is_main_process
from prefdyn.errors import PrefdynError
from prefdyn.tracking import metrics as M
from prefdyn.tracking.evaluate import Objective, PairScores
from prefdyn.tracking.history import History
from prefdyn.tracking.lm_metrics import LMEvalTracker, group_means

__all__ = [
    "CONCEPTS_FILE",
    "CONCEPT_METRICS",
    "DIAGNOSIS_SCHEMA",
    "PAIR_LOGPS_FILE",
    "ConceptFiles",
    "ConceptTracker",
    "concept_means",
    "read_concepts",
    "read_diagnosis",
    "read_pair_logps",
]

CONCEPTS_FILE = "concepts.jsonl"
PAIR_LOGPS_FILE = "pair_logps.json"
DIAGNOSIS_SCHEMA = "prefdyn.diagnosis/1"
CONCEPT_METRICS: dict[str, str] = {"loss": M.LOSS, "margin": M.MARGIN, "accuracy": M.REWARD_ACC}
"""Name in ``concepts.jsonl`` -> name in the metric vocabulary."""


def concept_means(values: Mapping[str, Tensor], concepts: Tensor, names: Sequence[str]
                  ) -> dict[str, dict[str, float]]:
    """{concept name: {"loss", "margin", "accuracy"}} of per-pair ``values`` (from
    :func:`~prefdyn.tracking.evaluate.pair_metrics` with the run's objective);
    ``concepts`` (n,) long is each pair's concept. A concept without pairs gets NaN."""
    missing = [m for m in CONCEPT_METRICS.values() if m not in values]
    if missing:
        raise PrefdynError(f"per-pair values lack {missing}: score the pairs with the run's objective")
    picked = {k: values[m] for k, m in CONCEPT_METRICS.items()}
    if len(names) == 1:  # group_means gives no per-group means for one group
        keep = concepts == 0  # a pair of concept -1 (none) is in no concept's numbers
        return {names[0]: {k: (v[keep].mean().item() if keep.any() else float("nan"))
                           for k, v in picked.items()}}
    _, per = group_means(picked, concepts, len(names))
    return dict(zip(names, per))


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class ConceptFiles:
    """The writer of ``concepts.jsonl`` and ``pair_logps.json`` in ``folder``.

    ``concepts`` (N,) long: the concept index of every pair of the data (indexed by the
    pair's row); ``names``: concept names, list index == concept index. The first
    :meth:`write` starts ``concepts.jsonl`` afresh.
    """

    def __init__(self, folder: str | Path, concepts: Tensor, names: Sequence[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.concepts = torch.as_tensor(concepts, dtype=torch.long)
        self.names = list(names)
        if len(self.concepts) and int(self.concepts.max()) >= len(self.names):
            raise PrefdynError(f"concept index {int(self.concepts.max())} has no name "
                               f"({len(self.names)} names)")
        self._started = False

    def write(self, step: int, scores: PairScores, values: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
        """Append the per-concept means of this evaluation; rewrite the per-pair log-probs."""
        per = concept_means(values, self.concepts[scores.rows], self.names)
        if not is_main_process():  # a launched run: rank 0 writes
            return per
        line = {"step": step, "concept": {c: {k: _finite(v) for k, v in m.items()} for c, m in per.items()}}
        with open(self.folder / CONCEPTS_FILE, "a" if self._started else "w") as f:
            f.write(json.dumps(line) + "\n")
        self._started = True
        lp = scores.logps
        (self.folder / PAIR_LOGPS_FILE).write_text(json.dumps({
            "indices": scores.rows.tolist(), "step": step,
            "chosen_start": lp.ref_chosen.tolist(), "chosen_end": lp.chosen.tolist(),
            "rejected_start": lp.ref_rejected.tolist(), "rejected_end": lp.rejected.tolist()}))
        return per


class ConceptTracker(LMEvalTracker):
    """:class:`LMEvalTracker` on one probe split whose evaluations also go to the run
    folder's ``concepts.jsonl`` / ``pair_logps.json`` (:class:`ConceptFiles`).

    A callback of prefdyn's own loop (``fit_lm(..., callbacks=[tracker])``). The numbers
    are those of the tracker's per-group records (split ``"probe"``, ``group`` = concept
    name) in ``history``: both come from one scoring of the probe batches.

    Args:
        objective: the run's loss (``get_loss(cfg.loss, beta=cfg.beta)``).
        batches: the probe pairs as fixed batches whose ``rows`` are pair indices
            (e.g. :func:`~prefdyn.training.lm_data.fixed_pair_batches`).
        concepts: (N,) long, the concept of every pair (``diagnosis["concepts"]["assignment"]``).
        names: the concept names.
        folder: the run folder.
    """

    def __init__(self, objective: Objective, batches: Sequence[Any], *, concepts: Tensor,
                 names: Sequence[str], folder: str | Path, history: History | None = None,
                 every: int = 10, name: str = "concepts"):
        self.files = ConceptFiles(folder, concepts, names)
        self.last_scores: PairScores | None = None  # of the latest evaluation
        self.last_values: dict[str, Tensor] | None = None
        self.last_concepts: dict[str, dict[str, float]] | None = None
        super().__init__(objective, {"probe": batches}, history=history if history is not None else History(),
                         every=every, name=name, row_groups=self.files.concepts, group_names=names)

    def scored(self, step: int, split: str, scores: PairScores, values: dict[str, Tensor]) -> None:
        self.last_scores, self.last_values = scores, values
        self.last_concepts = self.files.write(step, scores, values)


def read_concepts(folder: str | Path) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """(steps, {concept: {metric: values}}) from ``folder/concepts.jsonl``; a value missing
    at a step (or non-finite) is NaN."""
    path = Path(folder) / CONCEPTS_FILE
    if not path.is_file():
        raise PrefdynError(f"{path} not found: the run was not recorded with prefdyn's concept "
                           "tracker (ConceptTracker or prefdyn.integrations.trl)")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise PrefdynError(f"{path} holds no evaluation")
    steps = np.array([line["step"] for line in lines])
    names = list(dict.fromkeys(c for line in lines for c in line["concept"]))

    def value(line: dict, c: str, m: str) -> float:
        v = line["concept"].get(c, {}).get(m)
        return float("nan") if v is None else float(v)

    return steps, {c: {m: np.array([value(line, c, m) for line in lines]) for m in CONCEPT_METRICS}
                   for c in names}


def read_pair_logps(folder: str | Path) -> dict[str, np.ndarray]:
    """``folder/pair_logps.json`` as arrays (``indices`` int, the rest float64)."""
    path = Path(folder) / PAIR_LOGPS_FILE
    if not path.is_file():
        raise PrefdynError(f"{path} not found: the run was not recorded with prefdyn's concept "
                           "tracker (ConceptTracker or prefdyn.integrations.trl)")
    raw = json.loads(path.read_text())
    keys = ("indices", "chosen_start", "chosen_end", "rejected_start", "rejected_end")
    if missing := [k for k in keys if k not in raw]:
        raise PrefdynError(f"{path}: missing {missing}")
    out = {k: np.asarray(raw[k], dtype=np.int64 if k == "indices" else np.float64) for k in keys}
    if len({len(v) for v in out.values()}) != 1:
        raise PrefdynError(f"{path}: the lists have different lengths")
    return out


def read_diagnosis(path: str | Path) -> dict[str, Any]:
    """A ``diagnosis.json`` of ``prefdyn diagnose``, checked for what a run and
    ``prefdyn compare`` read of it: the schema tag, the concepts (assignment and items)
    and the risky pairs. An assignment of -1 is a pair with no concept (``prefdyn diagnose``
    could not run it through the model); it is in no concept's numbers."""
    path = Path(path)
    try:
        diagnosis = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PrefdynError(f"{path}: not a readable diagnosis.json ({e})") from e
    if diagnosis.get("schema") != DIAGNOSIS_SCHEMA:
        raise PrefdynError(f"{path}: schema {diagnosis.get('schema')!r}, expected {DIAGNOSIS_SCHEMA!r}")
    try:
        concepts, pairs = diagnosis["concepts"], diagnosis["pairs"]
        assignment, items, risky = concepts["assignment"], concepts["items"], pairs["risky"]
        ranks = [item["predicted_rank"] for item in items]
        _ = [item["name"] for item in items]
    except (KeyError, TypeError) as e:
        raise PrefdynError(f"{path}: missing field {e} of the diagnosis schema") from e
    n = diagnosis.get("data", {}).get("n_pairs", len(assignment))
    if len(assignment) != n or any(not -1 <= a < len(items) for a in assignment):
        raise PrefdynError(f"{path}: concepts.assignment must give each of the {n} pairs one of "
                           f"the {len(items)} concepts or -1 (none)")
    if any(not isinstance(r, int) or not 1 <= r <= len(items) for r in ranks):
        raise PrefdynError(f"{path}: predicted_rank must rank the concepts 1..{len(items)}, got {ranks}")
    if any(not 0 <= i < n for i in risky):
        raise PrefdynError(f"{path}: pairs.risky holds indices outside 0..{n - 1}")
    return diagnosis
