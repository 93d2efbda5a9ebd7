"""The Bradley-Terry reward-model loss (Im & Li 2024, Eq. 1-2).

Eq. 1: "$p^*(y_w \\succ y_l|x) = \\sigma(r^*(x, y_w) - r^*(x, y_l))$"; Eq. 2:
"$\\mathcal{L}_R = -\\mathbb{E}_{(x, y_w, y_l) \\sim \\mathcal{D}} [\\log \\sigma(r(x, y_w)
- r(x, y_l))]$". The scores come from a scalar head on the LM (see
:class:`prefdyn.rewards.reward_model.RewardModel`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from prefdyn.losses.registry import register_loss
from prefdyn.losses.types import LossOutput, detach_fields, preference_output


@dataclass
class PairScores:
    """Reward-model scores r(x, y+) and r(x, y-) of a batch of pairs, each (..., n)."""

    chosen: Tensor
    rejected: Tensor

    def detach(self) -> "PairScores":
        return detach_fields(self)


@register_loss("bradley_terry")
def bradley_terry_loss(scores: PairScores) -> LossOutput:
    """Eq. 2 per pair: ``-log sigmoid(r(x, y+) - r(x, y-))``; metrics are the two scores
    (named like the preference losses' rewards, so the same trackers read them)."""
    return preference_output(-F.logsigmoid(scores.chosen - scores.rejected),
                             scores.chosen, scores.rejected)
