"""Policies of a Bradley-Terry reward model: batches of pairs -> scores r(x, y+), r(x, y-).

What the ``bradley_terry`` objective (Im & Li 2024, Eq. 2) needs is a
:class:`~prefdyn.losses.PairScores`; two policies produce it, both training the
scalar head of a :class:`~prefdyn.rewards.RewardModel`:

- :class:`RewardModelPolicy` runs the whole model on a :class:`PairBatch` of token
  ids (the last decoder blocks may train with the head);
- :class:`HeadPolicy` applies the head alone to :class:`FeaturePairs`, the frozen
  backbone's last-token hidden states of prompt+response computed once (the
  embedding cache's g(x)): the same scores for a frozen backbone, without a forward
  pass of the backbone per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.losses.reward_model import PairScores
from prefdyn.policies.lm import PairBatch
from prefdyn.rewards.reward_model import RewardModel


@dataclass
class FeaturePairs:
    """Last-token hidden states of prompt+chosen and prompt+rejected, each (n, d)."""

    chosen: Tensor
    rejected: Tensor
    rows: Tensor

    def __len__(self) -> int:
        return len(self.rows)


class RewardModelPolicy:
    """``logps(PairBatch) -> PairScores``: the reward model's score of every sequence of
    the batch (rows 0..n-1 prompt+chosen, n..2n-1 prompt+rejected)."""

    def __init__(self, model: RewardModel):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def logps(self, batch: PairBatch) -> PairScores:
        device = self.model.head.weight.device
        scores = self.model(batch.input_ids.to(device), batch.attention_mask.to(device))
        n = len(batch)
        return PairScores(scores[:n], scores[n:])

    def empty_logps(self, device=None) -> PairScores:
        e = torch.empty(0, device=device)
        return PairScores(e, e)


class HeadPolicy(RewardModelPolicy):
    """``logps(FeaturePairs) -> PairScores``: the head alone on precomputed hidden states."""

    def parameters(self):
        return self.model.head.parameters()

    def logps(self, batch: FeaturePairs) -> PairScores:
        head = self.model.head
        score = lambda h: head(h.to(head.weight)).squeeze(-1)
        return PairScores(score(batch.chosen), score(batch.rejected))


def feature_batches(chosen: Tensor, rejected: Tensor, rows: Sequence[int], batch_size: int
                    ) -> list[FeaturePairs]:
    """``rows`` of the feature tables as consecutive :class:`FeaturePairs` of ``batch_size``."""
    rows = list(rows)
    return [FeaturePairs(chosen[rows[s:s + batch_size]], rejected[rows[s:s + batch_size]],
                         torch.tensor(rows[s:s + batch_size]))
            for s in range(0, len(rows), batch_size)]


@torch.no_grad()
def pairwise_accuracy(policy: RewardModelPolicy, batches) -> dict[str, float]:
    """Held-out pairwise accuracy (the share of pairs with r(x, y+) > r(x, y-); a tie counts
    as wrong) and the mean margin r(x, y+) - r(x, y-), over every pair of ``batches``."""
    margins = torch.cat([(s.chosen - s.rejected).float().cpu()
                         for s in (policy.logps(b) for b in batches)])
    if not len(margins):
        return {"accuracy": float("nan"), "margin": float("nan"), "pairs": 0}
    return {"accuracy": (margins > 0).float().mean().item(), "margin": margins.mean().item(),
            "pairs": len(margins)}
