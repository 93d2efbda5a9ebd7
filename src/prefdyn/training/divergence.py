"""Stop a run whose loss or reward margin blows up, as a NaN loss stops it.

A step size too large for the loss's curvature does not always overflow: plain gradient
descent at ``--lr 1e12`` runs on at losses of ~1e12 and margins of ~1e13, every number
finite, and the run would end in a normal-looking report. The rule, checked by the one
training step before it touches the weights:

    at step t the run has diverged when   L_t > factor * max(L_1, 1)
                                      or  M_t > factor * max(M_1, 1)

``L_t`` is the batch loss the step reports, ``M_t`` the largest |reward margin|
``r(x, y+) - r(x, y-)`` over the batch's real rows, and ``L_1``, ``M_1`` their values at
the run's first step (the first one after a resume). ``factor`` is
``TrainConfig.divergence_factor`` (default 1000; ``None`` disables the check).

Why it cannot fire on a healthy run:
- A stable optimizer lowers the loss from where it starts; a mini-batch can be worse than
  the average, never by orders of magnitude. For the DPO family the loss is
  ``-log sigmoid(margin)``: it rises above its start only as fast as the margin turns
  negative, by as many nats as the margin has.
- A healthy margin saturates in the loss's own units: DPO, cDPO, robust DPO and SimPO see it
  through ``log sigmoid``, whose gradient weight ``sigmoid(-m)`` is ~2e-9 at m = 20, so
  nothing is gained past a few tens of nats; IPO aims at 1/2 and hinge at 1. A margin of a
  thousand nats comes only from a step that overshoots.
- The floor of 1 (a nat; DPO starts at log 2 with zero margins) keeps runs that start near
  zero (zero margins at step 1, SimPO on easy pairs, a resumed run) from alarming at small
  absolute changes.
- Too large a step makes the error grow geometrically, so it crosses any fixed factor within
  a few steps: a large factor costs only a few steps of delay, never a missed divergence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from prefdyn.losses.types import LossOutput

DEFAULT_DIVERGENCE_FACTOR = 1000.0


def peak_abs_margin(out: LossOutput, mask: Tensor | None = None) -> Tensor:
    """Largest |reward margin| over the real rows (``mask``) of a batch: a 0-dim tensor.

    The margin is ``chosen_reward - rejected_reward`` of a preference objective's
    metrics; an objective that reports no such pair (SFT, policy gradient) has none
    to explode, and gives 0, so only its loss is watched.
    """
    metrics = out.metrics
    if "chosen_reward" not in metrics or "rejected_reward" not in metrics:
        return out.losses.new_zeros(())
    margins = (metrics["chosen_reward"] - metrics["rejected_reward"]).detach().abs()
    if mask is not None:
        margins = torch.where(mask.to(torch.bool), margins, torch.zeros_like(margins))
    return margins.max() if margins.numel() else margins.sum()


@dataclass
class DivergenceGuard:
    """The rule of this module for one run; remembers the first step's loss and margin."""

    factor: float
    start_loss: float | None = None
    start_margin: float | None = None
    _start: Tensor | None = field(default=None, repr=False)  # (loss, margin) on the device

    def check(self, loss: float, margin: float) -> str | None:
        """What diverged (a sentence with the values), or None while the run is healthy."""
        if self.start_loss is None or self.start_margin is None:
            self.start_loss, self.start_margin = loss, margin
            return None
        return self.describe(loss, margin)

    def describe(self, loss: float, margin: float) -> str | None:
        """The sentence of :meth:`check` against the stored first-step values, or None."""
        if loss > self.factor * max(self.start_loss, 1.0):
            return (f"loss {loss:.4g} rose above {self.factor:g} x its first-step value "
                    f"{self.start_loss:.4g}")
        if margin > self.factor * max(self.start_margin, 1.0):
            return (f"reward margin |{margin:.4g}| grew above {self.factor:g} x its first-step "
                    f"value max({self.start_margin:.4g}, 1)")
        return None

    def diverged(self, loss: Tensor, margin: Tensor) -> Tensor:
        """:meth:`check` on the device, without reading a value back: a 0-dim bool tensor.

        The first call keeps its values on the device as the scales (and is never
        diverged); :meth:`settle` reads them back when a message is needed."""
        values = torch.stack([loss.detach(), margin.detach()]).float()
        if self._start is None:
            self._start = values
            return torch.zeros((), dtype=torch.bool, device=values.device)
        scale = self.factor * self._start.clamp(min=1.0)
        return (values > scale).any()

    def settle(self) -> None:
        """Read the first-step scales kept by :meth:`diverged` (one sync, for a message)."""
        if self._start is not None and self.start_loss is None:
            self.start_loss, self.start_margin = self._start.tolist()


def likely_cause(optimizer: torch.optim.Optimizer) -> str:
    """The sentence that follows a divergence: its usual cause and the two ways out."""
    lr = optimizer.param_groups[0]["lr"]
    return (f"the run diverged: the learning rate {lr:g} is likely too large for this beta and "
            f"{type(optimizer).__name__} (lower --lr; train.divergence_factor sets this check, "
            f"null disables it)")
