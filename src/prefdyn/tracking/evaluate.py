"""The one evaluation layer: fixed pairs scored under the policy and its reference.

Every consumer that measures a trained LM on a fixed set of pairs goes through
:func:`score_pairs` (and, for the quantities of the metric vocabulary,
:func:`pair_metrics`): the whole-split tracker
(:class:`~prefdyn.tracking.lm_metrics.LMEvalTracker`), the likelihood-displacement
experiments (per-pair log-prob changes) and the HH-RLHF probe. Batches are the
policy's own kinds, so single-token answers (:class:`AnswerBatch`) and multi-token
responses (:class:`PairBatch`) are scored the same way. :func:`answer_logprobs`
gives the full next-token distribution at the answer position, for the
measurements that look beyond y+ and y- (which tokens gained mass).

Measurements run without grad and in eval mode (LoRA dropout would add noise);
the model's train/eval mode is restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.losses.types import LossOutput, PreferenceLogps
from prefdyn.tracking import metrics as M
from prefdyn.tracking.preference import logp_metrics, per_example_metrics
from prefdyn.policies.lm import AnswerBatch, LMBatch, LMPolicy, PairBatch, to_device

__all__ = ["PairScores", "answer_logprobs", "eval_mode", "pair_metrics", "score_pairs"]

Objective = Callable[[PreferenceLogps], LossOutput]


@contextlib.contextmanager
def eval_mode(policy: LMPolicy) -> Iterator[None]:
    """The policy's model in eval mode for the block, its previous mode restored after."""
    was_training = policy.model.training
    policy.model.eval()
    try:
        yield
    finally:
        policy.model.train(was_training)


@dataclass
class PairScores:
    """n fixed pairs scored: ``logps`` holds their log-probs under the policy and its
    reference, each (n,) float32 on CPU (response lengths for multi-token pairs, None
    for answers); ``rows`` the dataset row of every pair (``batch.rows``)."""

    logps: PreferenceLogps
    rows: Tensor

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, dtype: torch.dtype) -> PairScores:
        """The log-probs as ``dtype`` (e.g. float64 for exact differences of float32 values)."""
        lp = self.logps
        return PairScores(PreferenceLogps(*(t.to(dtype) for t in (lp.chosen, lp.rejected, lp.ref_chosen,
                                                                   lp.ref_rejected)),
                                          lp.chosen_len, lp.rejected_len), self.rows)


def _cat(parts: list[Tensor | None]) -> Tensor | None:
    return None if not parts or any(p is None for p in parts) else torch.cat(parts)


@torch.no_grad()
def score_pairs(policy: LMPolicy, batches: Sequence[LMBatch]) -> PairScores:
    """Chosen/rejected log-probs of every batch under the policy and its reference.

    A batch that carries reference log-probs (``ref_chosen``, e.g. computed once
    while the model still was pi_ref) keeps them; otherwise they are computed under
    :meth:`LMPolicy.reference`. Batches follow the model's device.
    """
    if not batches:
        raise ValueError("score_pairs needs at least one batch")
    device = next(policy.model.parameters()).device
    cols: dict[str, list] = {k: [] for k in ("chosen", "rejected", "ref_chosen", "ref_rejected",
                                             "rows", "chosen_len", "rejected_len")}
    with eval_mode(policy):
        for batch in batches:
            batch = to_device(batch, device)
            chosen, rejected = policy.pair(batch)
            if batch.ref_chosen is not None and batch.ref_rejected is not None:
                ref_chosen, ref_rejected = batch.ref_chosen, batch.ref_rejected
            else:
                with policy.reference() as ref_model:
                    ref_chosen, ref_rejected = policy.pair(batch, ref_model)
            lengths = ((batch.chosen_len, batch.rejected_len) if isinstance(batch, PairBatch)
                       else (None, None))
            for key, value in zip(cols, (chosen, rejected, ref_chosen, ref_rejected, batch.rows,
                                         *lengths)):
                cols[key].append(None if value is None else value.detach().cpu())
    logps = PreferenceLogps(*(torch.cat(cols[k]).float() for k in ("chosen", "rejected", "ref_chosen",
                                                                   "ref_rejected")),
                            _cat(cols["chosen_len"]), _cat(cols["rejected_len"]))
    return PairScores(logps, torch.cat(cols["rows"]))


def pair_metrics(scores: PairScores, objective: Objective | None = None) -> dict[str, Tensor]:
    """Per-pair quantities of the metric vocabulary (:mod:`prefdyn.tracking.metrics`), each (n,).

    Always :func:`~prefdyn.tracking.preference.logp_metrics`, ``logp_diff`` and
    ``reward_acc``. With the run's ``objective`` also ``loss``, ``margin`` and
    ``dpo_weight`` (:func:`~prefdyn.tracking.preference.per_example_metrics`, so
    ``reward_acc`` is the objective's margin > 0); without it ``reward_acc`` is the
    sign of the log-ratio margin, the same for every beta > 0.
    """
    logps = scores.logps
    if objective is None:
        values = {**logp_metrics(logps),
                  M.REWARD_ACC: (logps.chosen_logratio > logps.rejected_logratio).float()}
    else:
        out = objective(logps)
        values = per_example_metrics(out, logps)
        if M.MARGIN in values:
            values[M.DPO_WEIGHT] = torch.sigmoid(-values[M.MARGIN])
    values[M.LOGP_DIFF] = logps.chosen - logps.rejected
    return {k: v.detach() for k, v in values.items()}


@torch.no_grad()
def answer_logprobs(policy: LMPolicy, batch: AnswerBatch) -> Tensor:
    """Full-vocabulary log-probs at the answer position, (n, V) float32.

    One decoder pass of the prompts (their shared prefix once, if the policy's
    ``share_prefix``), ``lm_head`` on the last hidden state only (as
    :meth:`LMPolicy.answer_logps`), in eval mode.
    """
    with eval_mode(policy):
        return policy.answer_vocab_logps(batch)
