"""The one-step bandit's exact expected-reward objective (no sampling).

For a single-token answer the policy is a softmax over the vocabulary, so Razin et
al.'s (ICLR 2024) expected reward of an input, "$V_{\\mathbf{x}}(\\theta) =
\\mathbb{E}_{\\mathbf{y} \\sim \\pi_{\\theta}(\\cdot | \\mathbf{x})} [r(\\mathbf{x},
\\mathbf{y})]$", is a finite sum ``sum_v pi(v|x) r(x, v)``. Its gradient is the ground
truth that every sampled estimator (REINFORCE, RLOO, GRPO) must match on average.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.losses.registry import register_loss
from prefdyn.losses.types import EXAMPLE_DIM, LossOutput, detach_fields


@dataclass
class BanditLogps:
    """The full answer distribution of a batch of one-step bandit prompts.

    ``logps`` (..., n, V): log pi(v|x) over the vocabulary (a log-softmax);
    ``rewards`` (..., n, V): r(x, v) for every token v (e.g. +1 on the target, -1
    elsewhere); ``ref_logps`` (..., n, V): log pi_ref(v|x), needed when ``beta > 0``.
    """

    logps: Tensor = field(metadata={EXAMPLE_DIM: -2})
    rewards: Tensor = field(metadata={EXAMPLE_DIM: -2})
    ref_logps: Tensor | None = field(default=None, metadata={EXAMPLE_DIM: -2})

    def detach(self) -> "BanditLogps":
        return detach_fields(self)

    @classmethod
    def empty(cls, vocab_size: int, device: torch.device | str | None = None) -> "BanditLogps":
        e = torch.empty(0, vocab_size, device=device)
        return cls(e, e)


def reward_moments(logps: Tensor, rewards: Tensor) -> tuple[Tensor, Tensor]:
    """Exact (mean, std) of r(x, y) for y ~ pi(.|x): ``(..., n, V) -> (..., n)`` each."""
    p = logps.exp()
    mean = (p * rewards).sum(-1)
    var = (p * (rewards - mean[..., None]) ** 2).sum(-1)
    return mean, var.clamp_min(0).sqrt()


@register_loss("expected_reward")
def expected_reward_loss(bandit: BanditLogps, *, beta: float = 0.0) -> LossOutput:
    """``-V_x = -sum_v pi(v|x) r(x, v)``, plus ``beta KL(pi(.|x) || pi_ref(.|x))`` (Im & Li
    2024, Eq. 3's penalty, here exact: no estimator). Metrics: the exact reward mean
    and std under pi (Razin et al.'s "reward std of x under the model")."""
    if bandit.rewards.shape != bandit.logps.shape:
        raise PrefdynError(f"bandit rewards have shape {tuple(bandit.rewards.shape)}, expected "
                           f"the shape of the log-probs {tuple(bandit.logps.shape)}")
    p = bandit.logps.exp()
    value = (p * bandit.rewards).sum(-1)
    mean, std = reward_moments(bandit.logps.detach(), bandit.rewards)
    metrics = {"reward": mean, "reward_std": std}
    losses = -value
    if beta > 0:
        if bandit.ref_logps is None:
            raise PrefdynError("beta > 0 needs the reference log-probs (BanditLogps.ref_logps)")
        kl = (p * (bandit.logps - bandit.ref_logps)).sum(-1)
        losses = losses + beta * kl
        metrics["kl"] = kl.detach()
    elif beta < 0:
        raise PrefdynError(f"beta must be >= 0, got {beta}")
    return LossOutput(losses, metrics)
