"""Preference metrics of a batch, vectorized over problems and their groups."""

from __future__ import annotations

import torch
from torch import Tensor

from prefdyn.losses.types import LossOutput, PreferenceLogps, masked_mean
from prefdyn.tracking import metrics as M


def logp_metrics(logps: PreferenceLogps) -> dict[str, Tensor]:
    """Per-example quantities of the log-probs alone (no objective), each (..., n).

    policy_acc: the policy itself prefers y+ (log pi(y+) > log pi(y-));
    chosen_fell: log pi(y+|x) dropped below the reference (likelihood displacement).
    """
    chosen_change = logps.chosen_logratio
    return {
        M.POLICY_ACC: (logps.chosen > logps.rejected).float(),
        M.CHOSEN_LOGP: logps.chosen,
        M.REJECTED_LOGP: logps.rejected,
        M.CHOSEN_LOGP_CHANGE: chosen_change,
        M.REJECTED_LOGP_CHANGE: logps.rejected_logratio,
        M.CHOSEN_FELL: (chosen_change < 0).float(),
    }


def per_example_metrics(out: LossOutput, logps: PreferenceLogps) -> dict[str, Tensor]:
    """Per-example quantities whose means are tracked, each (..., n); names and
    meanings from :mod:`prefdyn.tracking.metrics`.

    margin: the implicit reward margin ``chosen_reward - rejected_reward`` (the
    objective's metrics; present when it reports both);
    reward_acc: the implicit reward prefers y+ (margin > 0; ties at the start count 0);
    the rest: :func:`logp_metrics`.
    """
    values = {M.LOSS: out.losses}
    if "chosen_reward" in out.metrics and "rejected_reward" in out.metrics:
        margin = out.metrics["chosen_reward"] - out.metrics["rejected_reward"]
        values |= {M.MARGIN: margin, M.REWARD_ACC: (margin > 0).float()}
    return values | logp_metrics(logps)


def reduce_metrics(values: dict[str, Tensor], mask: Tensor, groups: Tensor | None,
                   n_groups: int) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Masked means: per problem (B,) and, if ``n_groups > 1``, per (problem, group) (B, G)."""
    whole = {k: masked_mean(v, mask) for k, v in values.items()}
    if groups is None or n_groups <= 1:
        return whole, None
    onehot = torch.nn.functional.one_hot(groups, n_groups).to(mask.dtype) * mask[..., None]
    w = onehot.float()  # (B, N, G)
    counts = w.sum(1).clamp_min(1.0)
    by_group = {k: torch.einsum("bn,bng->bg", v.float(), w) / counts for k, v in values.items()}
    return whole, by_group
