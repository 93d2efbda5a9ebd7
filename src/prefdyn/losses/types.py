"""Typed containers between a policy's forward pass and a loss function."""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor


@dataclass
class PreferenceLogps:
    """Sequence log-probabilities of a batch of preference pairs.

    Every tensor has the same shape ``(..., n)``: ``(n,)`` for a plain batch,
    ``(B, n)`` when ``B`` independent problems (behaviors) are trained at once.
    ``*_len`` are response lengths in tokens (1 for single-token answers); they
    are needed only by length-normalized losses such as SimPO.
    """

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    chosen_len: Tensor | None = None
    rejected_len: Tensor | None = None

    @property
    def chosen_logratio(self) -> Tensor:
        """log pi(y+|x) - log pi_ref(y+|x)."""
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratio(self) -> Tensor:
        """log pi(y-|x) - log pi_ref(y-|x)."""
        return self.rejected - self.ref_rejected

    def detach(self) -> "PreferenceLogps":
        return PreferenceLogps(**{
            f.name: (v.detach() if isinstance(v := getattr(self, f.name), Tensor) else v)
            for f in fields(self)})


@dataclass
class LossOutput:
    """Per-example losses and the implicit rewards ``beta * log pi/pi_ref``."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def margins(self) -> Tensor:
        """Reward margin r(x, y+) - r(x, y-)."""
        return self.chosen_rewards - self.rejected_rewards

    def detach(self) -> "LossOutput":
        return LossOutput(self.losses.detach(), self.chosen_rewards.detach(),
                          self.rejected_rewards.detach())


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the last dim, counting only ``mask`` entries: ``(..., n) -> (...)``."""
    if mask is None:
        return values.mean(-1)
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def reduce_loss(losses: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scalar training loss: the per-problem mean, summed over independent problems.

    Summing (not averaging) over the leading dims keeps each problem's gradient
    exactly what it would be if it were trained alone.
    """
    return masked_mean(losses, mask).sum()


__all__ = ["PreferenceLogps", "LossOutput", "masked_mean", "reduce_loss"]


def compute_loss(policy, objective, batch):
    """Forward pass and reduction, no update: (scalar loss, per-problem loss, out, logps).

    ``policy.logps(batch)`` gives the log-probabilities, ``objective`` the per-example
    losses; the batch's ``mask`` (if any) marks real rows.
    """
    logps = policy.logps(batch)
    out = objective(logps)
    problem_loss = masked_mean(out.losses, getattr(batch, "mask", None))
    return problem_loss.sum(), problem_loss, out, logps
