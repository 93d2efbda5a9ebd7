"""Preference losses as pure per-example functions.

Each takes a :class:`PreferenceLogps` and returns a :class:`LossOutput`; none
reduces over the batch. Their metrics are DPO's implicit rewards
``beta * (log pi - log pi_ref)`` of y+ and y- (``chosen_reward``, ``rejected_reward``)
so every variant is tracked on the same scale.
"""

from __future__ import annotations

import torch.nn.functional as F

from prefdyn.losses.registry import register_loss
from prefdyn.losses.types import LossOutput, PreferenceLogps, preference_output


def _rewards(logps: PreferenceLogps, beta: float):
    return beta * logps.chosen_logratio, beta * logps.rejected_logratio


@register_loss("dpo")
def dpo_loss(logps: PreferenceLogps, *, beta: float = 0.1) -> LossOutput:
    """DPO (Rafailov et al. 2023, Eq. 7; Im & Li 2024, Eq. 7-8):
    ``-log sigmoid(beta * (h_chosen - h_rejected))`` with ``h = log pi/pi_ref``."""
    chosen_r, rejected_r = _rewards(logps, beta)
    return preference_output(-F.logsigmoid(chosen_r - rejected_r), chosen_r, rejected_r)


@register_loss("ipo")
def ipo_loss(logps: PreferenceLogps, *, beta: float = 0.1) -> LossOutput:
    """IPO (Azar et al. 2023, Eq. 17): ``(h_chosen - h_rejected - 1/(2 beta))^2``."""
    h = logps.chosen_logratio - logps.rejected_logratio
    chosen_r, rejected_r = _rewards(logps, beta)
    return preference_output((h - 1.0 / (2.0 * beta)) ** 2, chosen_r, rejected_r)


@register_loss("hinge")
def hinge_loss(logps: PreferenceLogps, *, beta: float = 0.1) -> LossOutput:
    """SLiC-style hinge (Zhao et al. 2023): ``max(0, 1 - beta * (h_chosen - h_rejected))``."""
    chosen_r, rejected_r = _rewards(logps, beta)
    return preference_output(F.relu(1.0 - (chosen_r - rejected_r)), chosen_r, rejected_r)
