"""DPO variants: label-noise robust DPO (cDPO, rDPO), SimPO, and an SFT term.

All are pure per-example functions on :class:`PreferenceLogps`, registered by
name. Rewards stay DPO's implicit rewards ``beta * log pi/pi_ref`` (when the
reference is known) so every variant is tracked on the same scale as
:func:`prefdyn.losses.preference.dpo_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.losses.preference import dpo_loss
from prefdyn.losses.registry import register_loss
from prefdyn.losses.types import LossOutput, PreferenceLogps, preference_output


def _check_smoothing(eps: float, *, upper: float) -> None:
    if not 0.0 <= eps < upper:
        raise PrefdynError(f"label_smoothing must be in [0, {upper}), got {eps}")


def _dpo_terms(logps: PreferenceLogps, beta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(L(h), L(-h), chosen reward, rejected reward) with ``L(h) = -log sigmoid(beta h)``."""
    chosen_r = beta * logps.chosen_logratio
    rejected_r = beta * logps.rejected_logratio
    z = chosen_r - rejected_r
    return -F.logsigmoid(z), -F.logsigmoid(-z), chosen_r, rejected_r


@register_loss("cdpo")
def cdpo_loss(logps: PreferenceLogps, *, beta: float = 0.1,
              label_smoothing: float = 0.0) -> LossOutput:
    """Conservative DPO (Mitchell 2023; the label-smoothed baseline of Chowdhury et al.
    2024, "Provably Robust DPO", Sec. 3): the DPO loss of a label that is flipped with
    probability ``eps``: ``(1 - eps) L(h) + eps L(-h)``, ``L(h) = -log sigmoid(beta h)``,
    ``h = h_chosen - h_rejected``. ``eps = 0`` is DPO."""
    _check_smoothing(label_smoothing, upper=1.0)
    pos, neg, chosen_r, rejected_r = _dpo_terms(logps, beta)
    eps = label_smoothing
    return preference_output((1.0 - eps) * pos + eps * neg, chosen_r, rejected_r)


@register_loss("robust")
def robust_dpo_loss(logps: PreferenceLogps, *, beta: float = 0.1,
                    label_smoothing: float = 0.0) -> LossOutput:
    """Robust DPO, rDPO (Chowdhury et al. 2024, Eq. 8): the unbiased de-noised loss
    ``((1 - eps) L(h) - eps L(-h)) / (1 - 2 eps)`` for labels flipped with known rate
    ``eps < 1/2``. Its expectation over the noise equals the clean DPO loss; it is not
    bounded below per example (it can be negative)."""
    _check_smoothing(label_smoothing, upper=0.5)
    pos, neg, chosen_r, rejected_r = _dpo_terms(logps, beta)
    eps = label_smoothing
    return preference_output(((1.0 - eps) * pos - eps * neg) / (1.0 - 2.0 * eps), chosen_r, rejected_r)


def _lengths(length: Tensor | None, like: Tensor) -> Tensor:
    # A missing length means single-token answers (the persona task): |y| = 1.
    return torch.ones_like(like) if length is None else length.to(like.dtype)


@register_loss("simpo")
def simpo_loss(logps: PreferenceLogps, *, beta: float = 2.0, gamma: float = 0.5) -> LossOutput:
    """SimPO (Meng, Xia & Chen 2024, Eq. 6): reference-free and length-normalized,
    ``-log sigmoid(beta (log pi(y+)/|y+| - log pi(y-)/|y-|) - gamma)``.

    Lengths default to 1 (single-token answers). Rewards are DPO's implicit rewards
    when the reference is present (same tracking scale as DPO), else SimPO's own
    ``beta * log pi(y)/|y|``.
    """
    chosen_avg = logps.chosen / _lengths(logps.chosen_len, logps.chosen)
    rejected_avg = logps.rejected / _lengths(logps.rejected_len, logps.rejected)
    losses = -F.logsigmoid(beta * (chosen_avg - rejected_avg) - gamma)
    if logps.ref_chosen is not None and logps.ref_rejected is not None:
        return preference_output(losses, beta * logps.chosen_logratio, beta * logps.rejected_logratio)
    return preference_output(losses, beta * chosen_avg, beta * rejected_avg)


def with_sft(loss_fn: Callable[[PreferenceLogps], LossOutput],
             weight: float) -> Callable[[PreferenceLogps], LossOutput]:
    """``loss_fn`` plus an SFT (negative log-likelihood) term on the chosen response,
    ``- weight * log pi(y+|x) / |y+|`` per example (the length-normalized NLL of RPO,
    Pang et al. 2024, and of CPO, Xu et al. 2024). Metrics are ``loss_fn``'s."""
    if weight < 0:
        raise PrefdynError(f"SFT weight must be >= 0, got {weight}")

    def objective(logps: PreferenceLogps) -> LossOutput:
        out = loss_fn(logps)
        nll = -logps.chosen / _lengths(logps.chosen_len, logps.chosen)
        return LossOutput(out.losses + weight * nll, out.metrics)

    return objective


@register_loss("dpo_sft")
def dpo_sft_loss(logps: PreferenceLogps, *, beta: float = 0.1, sft_weight: float = 1.0) -> LossOutput:
    """DPO (Rafailov et al. 2023, Eq. 7) plus ``sft_weight * (-log pi(y+|x) / |y+|)``: the
    SFT-regularized baseline Razin et al. (2024, Sec. 6) compare CHES filtering against
    (weight 1 as in RPO, Pang et al. 2024). :func:`with_sft` for any other base loss."""
    return with_sft(lambda lp: dpo_loss(lp, beta=beta), sft_weight)(logps)
