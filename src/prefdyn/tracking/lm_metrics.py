"""Evaluation metrics of an LM preference run on fixed train and test rows.

:class:`prefdyn.training.lm_runner.LMTracker` records the *minibatch* each step
(its loss, margin, gradient norm, per-block weight drift). The Im & Li (ICML
2024, Sec. 5) curves need the whole split instead: every ``every`` steps
:class:`LMEvalTracker` scores fixed lists of batches (no grad, eval mode, so
LoRA dropout adds no noise) and records, overall and per behavior (group):

* ``loss``, ``margin`` (reward margin ``beta (h+ - h-)``), ``reward_acc`` and
  ``policy_acc`` (names and meanings: :mod:`prefdyn.tracking.metrics`; scored by
  :func:`prefdyn.tracking.evaluate.score_pairs`);
* ``chosen_logp`` / ``rejected_logp`` and their change since step 0
  (``*_logp_change``: the reference is the model at step 0 in both modes);
  ``logp_diff``: the policy's own ``log pi(y+) - log pi(y-)`` (not relative to
  pi_ref, so runs from different starts compare: Im & Li Fig. 15-16);
* ``chosen_fell``: share of rows whose chosen log-prob fell (likelihood
  displacement, Razin et al. 2024);
* ``dpo_weight``: mean ``sigma(-beta h)``, DPO's per-example gradient weight
  (Rafailov et al. 2023, Sec. 4; Im & Li 2024, Eq. 8), which goes to 0 as a row is learned.

The weights' change (``delta_W_U``, per-block drift) is the runner's own record
(:class:`prefdyn.training.lm_runner.LMTracker`), read from W(0) on disk.

The splits' reference log-probs are computed in ``on_setup``, while the model
is still pi_ref (no second copy of the model), or at train start when no runner
called ``on_setup``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.evaluate import Objective, PairScores, pair_metrics, score_pairs
from prefdyn.tracking.history import History
from prefdyn.policies.lm import LMPolicy, reference_logps, to_device

__all__ = ["LMEvalTracker", "group_means"]


def group_means(values: Mapping[str, Tensor], groups: Tensor | None, n_groups: int
                ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(overall means, per-group means) of per-row ``values``; a group without rows
    gets NaN. ``groups`` (n,) long indexes the groups (None: no per-group means)."""
    whole = {k: v.mean().item() for k, v in values.items()}
    per: list[dict[str, float]] = []
    if groups is not None and n_groups > 1:
        for g in range(n_groups):
            sel = groups == g
            per.append({k: (v[sel].mean().item() if sel.any() else float("nan"))
                        for k, v in values.items()})
    return whole, per


class LMEvalTracker(Callback):
    """Whole-split preference metrics of an LM policy every ``every`` steps.

    Args:
        objective: the run's loss (``get_loss(cfg.loss, beta=cfg.beta)``).
        splits: split name -> fixed list of batches (e.g. ``{"train_eval": ...,
            "test": ...}``); their reference log-probs are computed at train start.
        row_groups: (N,) long, the group (behavior) of every dataset row, indexed
            by ``batch.rows``; None for no per-group records.
        group_names: names of the groups.
        every: evaluate at step 0, every ``every`` steps and at the last step.

    Records ``{"step", "split", "problem": name, "group": None | behavior, <metric>}``
    into ``history``; ``History.curves(m, split="test", by="group")`` reads them.
    """

    def __init__(self, objective: Objective, splits: Mapping[str, Sequence[Any]], *,
                 history: History, every: int, name: str = "lm",
                 row_groups: Tensor | None = None, group_names: Sequence[str] = ()):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        empty = [s for s, batches in splits.items() if not batches]
        if empty:
            raise ValueError(f"split(s) {empty} have no batches to evaluate")
        self.objective, self.splits = objective, dict(splits)
        self.history, self.every, self.name = history, every, name
        self.row_groups = row_groups
        self.group_names = list(group_names)
        self._referenced = False
        self._last_step: int | None = None

    def on_setup(self, policy: LMPolicy) -> None:
        device = next(policy.model.parameters()).device
        self.splits = {s: [reference_logps(policy, to_device(b, device)) for b in batches]
                       for s, batches in self.splits.items()}
        self._referenced = True

    def on_train_start(self, state, policy: LMPolicy) -> None:
        if not self._referenced:
            self.on_setup(policy)
        # A resumed run starts at its checkpoint's step: evaluate it only if an unbroken
        # run evaluates that step and its records were not restored into the history.
        if self._due(state.step, state.max_steps) and not self._recorded(state.step):
            self.record(state.step, policy)

    def _due(self, step: int, max_steps: int) -> bool:
        return step % self.every == 0 or step == max_steps

    def _recorded(self, step: int) -> bool:
        return any(r.get("step") == step and r.get("problem") == self.name
                   and r.get("split") in self.splits for r in self.history.records)

    def on_step_end(self, state, policy: LMPolicy, out) -> None:
        if self._due(state.step, state.max_steps):
            self.record(state.step, policy)

    def on_train_end(self, state, policy: LMPolicy) -> None:
        # A run stopped early (callback or error) still gets its last state measured.
        if self._last_step is not None and state.step != self._last_step and state.error is None:
            self.record(state.step, policy)

    def scored(self, step: int, split: str, scores: PairScores, values: dict[str, Tensor]) -> None:
        """Called with every split's scores and per-pair metrics as they are measured; a
        subclass records more of them here (e.g. :class:`~prefdyn.tracking.concepts.ConceptTracker`)
        without scoring the pairs a second time."""

    @torch.no_grad()
    def record(self, step: int, policy: LMPolicy) -> None:
        """Evaluate every split now and add the records to the history."""
        base = {"step": step, "problem": self.name}
        for split, batches in self.splits.items():
            scores = score_pairs(policy, batches)
            values, rows = pair_metrics(scores, self.objective), scores.rows
            self.scored(step, split, scores, values)
            groups = self.row_groups[rows] if self.row_groups is not None else None
            whole, per = group_means(values, groups, len(self.group_names))
            self.history.add({**base, "split": split, "group": None, "n": len(rows), **whole})
            for gname, means in zip(self.group_names, per):
                n_g = int((groups == self.group_names.index(gname)).sum())
                self.history.add({**base, "split": split, "group": gname, "n": n_g, **means})
        self._last_step = step
