"""Entropy regularization on top of any objective (exact on the one-step bandit).

Razin et al. (ICLR 2024) test "Common Heuristics: Increasing learning rate, temperature,
entropy regularization" against vanishing gradients. The bonus subtracts
``coef * H(pi(.|x))`` from each input's loss, ``H = -sum_v pi(v|x) log pi(v|x)``. With
the bandit's full answer distribution (:class:`BanditLogps`) H and its gradient are exact;
a sampled response gives no unbiased entropy gradient from its own log-prob (the
gradient of ``-log pi(y)`` averages to 0), so other containers are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefdyn.errors import PrefdynError
from prefdyn.losses.bandit import BanditLogps
from prefdyn.losses.types import LossOutput


def with_entropy_bonus(objective: Callable[[Any], LossOutput], coef: float
                       ) -> Callable[[Any], LossOutput]:
    """``objective`` minus ``coef * H(pi(.|x))`` per input; metric ``entropy``."""
    if coef < 0:
        raise PrefdynError(f"the entropy coefficient must be >= 0, got {coef}")

    def regularized(logps: Any) -> LossOutput:
        out = objective(logps)
        if not isinstance(logps, BanditLogps):
            raise PrefdynError(f"an exact entropy bonus needs the full answer distribution "
                               f"(BanditLogps: the bandit's expected_reward objective), got "
                               f"{type(logps).__name__}")
        entropy = -(logps.logps.exp() * logps.logps).sum(-1)
        return LossOutput(out.losses - coef * entropy,
                          {**out.metrics, "entropy": entropy.detach()})

    return regularized
