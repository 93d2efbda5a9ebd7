"""SFT (negative log-likelihood) as an objective of the one training loop.

Razin et al. (ICLR 2024) find that an initial SFT phase mitigates vanishing gradients
in RL fine-tuning; their talk: "Minimize cross entropy loss over labeled inputs".
Here SFT is one more registry objective, run by the identical step and loop as DPO
and the policy-gradient objectives, so the warm start and the RL phase are comparable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.losses.policy_gradient import RolloutLogps
from prefdyn.losses.registry import register_loss
from prefdyn.losses.types import LossOutput, PreferenceLogps


def _target_logps(logps: PreferenceLogps | RolloutLogps) -> tuple[Tensor, Tensor]:
    """(log pi(y|x), |y|) of the labelled response: y+ of a pair, or teacher-forced tokens."""
    if isinstance(logps, PreferenceLogps):
        length = (torch.ones_like(logps.chosen) if logps.chosen_len is None
                  else logps.chosen_len.to(logps.chosen.dtype))
        return logps.chosen, length
    if isinstance(logps, RolloutLogps):
        return logps.sequence_logps, logps.mask.to(logps.logps.dtype).sum(-1)
    raise PrefdynError(f"sft takes PreferenceLogps or RolloutLogps, got {type(logps).__name__}")


@register_loss("sft")
def sft_loss(logps: PreferenceLogps | RolloutLogps, *, length_normalize: bool = True
             ) -> LossOutput:
    """``-log pi(y|x)``, divided by ``|y|`` when ``length_normalize`` (the per-token cross
    entropy). ``y`` is the chosen response of a pair, or the teacher-forced tokens of a
    :class:`RolloutLogps` (e.g. the references of a generation task)."""
    logp, length = _target_logps(logps)
    nll = -logp / length.clamp_min(1) if length_normalize else -logp
    return LossOutput(nll, {"target_logp": logp.detach(), "length": length})
