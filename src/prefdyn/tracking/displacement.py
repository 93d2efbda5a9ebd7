"""Likelihood displacement on a fixed probe set (Razin et al. 2024).

Razin et al. 2024, "Unintentional Unalignment: Likelihood Displacement in Direct
Preference Optimization" (Sec. 3-4), show that DPO can *lower* ``log pi(y+|x)``
of the preferred response while widening the margin, and that the lost
probability mass moves to other tokens, sometimes of opposite meaning.
:class:`DisplacementMonitor` measures both on a fixed probe: the share of rows
whose chosen log-prob fell below its start, the mean chosen/rejected changes,
and the tokens that gained the most log-probability on average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from prefdyn.tracking import metrics as M
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.evaluate import answer_logprobs
from prefdyn.tracking.history import History

AnswerLogprobs = Callable[[Any, Any], Tensor]  # (policy, probe) -> (n, V)


def answer_pair_ids(probe: Any) -> tuple[Tensor, Tensor]:
    """(chosen_ids, rejected_ids), each (n,) long, for anything with ``yes_id``,
    ``no_id`` and ``prefers_yes`` (an :class:`AnswerBatch`)."""
    yes = torch.full_like(probe.prefers_yes, probe.yes_id, dtype=torch.long)
    no = torch.full_like(yes, probe.no_id)
    return torch.where(probe.prefers_yes, yes, no), torch.where(probe.prefers_yes, no, yes)


class DisplacementMonitor(Callback):
    """Records likelihood displacement (Razin et al. 2024) on ``probe``.

    At train start it stores ``answer_logprobs(policy, probe)`` (n, V); every
    ``every`` steps, and at the end of the run, it adds to ``history`` a record
    with split ``"displacement"``:

    * ``chosen_fell``: share of rows with ``log pi_t(y+|x) < log pi_0(y+|x)``;
    * ``chosen_logp_change`` / ``rejected_logp_change``: mean of ``log pi_t - log pi_0``
      for the chosen / rejected answer token (names: :mod:`prefdyn.tracking.metrics`);
    * ``top_gain_ids`` / ``top_gain_tokens`` / ``top_gain``: the ``top_k`` tokens
      with the largest mean log-prob gain over the probe (no token excluded, so
      the answers themselves can appear), sorted by gain, descending.
    """

    def __init__(self, probe: Any, answer_logprobs: AnswerLogprobs = answer_logprobs, *,
                 history: History, every: int, top_k: int = 10, tokenizer: Any = None,
                 pair_ids: Callable[[Any], tuple[Tensor, Tensor]] = answer_pair_ids,
                 name: str = "displacement"):
        if every < 1 or top_k < 1:
            raise ValueError(f"every and top_k must be >= 1, got {every} and {top_k}")
        self.probe, self.answer_logprobs = probe, answer_logprobs
        self.history, self.every, self.top_k = history, every, top_k
        self.tokenizer, self.name = tokenizer, name
        self.chosen_ids, self.rejected_ids = pair_ids(probe)
        self._start: Tensor | None = None
        self._last_step: int | None = None
        self._last: dict[str, Any] | None = None

    def on_setup(self, policy) -> None:
        # Before fit_lm restores a checkpoint: the model is still pi_0 here.
        self._start = self.answer_logprobs(policy, self.probe).detach().float()

    def on_train_start(self, state, policy) -> None:
        if self._start is None:
            self.on_setup(policy)
        self._last_step = state.step

    def on_step_end(self, state, policy, out) -> None:
        if state.step % self.every == 0:
            self._record(state.step, policy)

    def on_train_end(self, state, policy) -> None:
        if self._start is not None and state.step != self._last_step:
            self._record(state.step, policy)

    @torch.no_grad()
    def measure(self, policy) -> dict[str, Any]:
        """The displacement metrics of ``policy`` now against the stored start."""
        if self._start is None:
            raise RuntimeError("DisplacementMonitor.measure before on_train_start")
        delta = self.answer_logprobs(policy, self.probe).detach().float() - self._start  # (n, V)
        rows = torch.arange(delta.shape[0], device=delta.device)
        chosen = delta[rows, self.chosen_ids.to(delta.device)]
        rejected = delta[rows, self.rejected_ids.to(delta.device)]
        gain, ids = delta.mean(0).topk(min(self.top_k, delta.shape[1]))  # sorted, descending
        id_list = ids.tolist()
        tokens = ([self.tokenizer.decode([i]) for i in id_list] if self.tokenizer is not None
                  else [str(i) for i in id_list])
        return {M.CHOSEN_FELL: (chosen < 0).float().mean().item(),
                M.CHOSEN_LOGP_CHANGE: chosen.mean().item(),
                M.REJECTED_LOGP_CHANGE: rejected.mean().item(),
                "top_gain_ids": id_list, "top_gain_tokens": tokens,
                "top_gain": gain.tolist()}

    def _record(self, step: int, policy) -> None:
        record = {"step": step, "split": "displacement", "problem": self.name, "group": None,
                  **self.measure(policy)}
        self.history.add(record)
        self._last_step, self._last = step, record

    def summary(self) -> dict[str, Any] | None:
        """The last record (None before the first)."""
        return self._last
