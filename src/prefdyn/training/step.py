"""The one training step every mode goes through.

A *policy* turns a batch into log-probabilities (``policy.logps(batch)``), an
*objective* turns those into per-example losses (a registry loss with its
hyper-parameters bound), and the step reduces, checks, back-propagates and
updates. Last-layer, LoRA, full fine-tuning and (later) policy-gradient RL differ
only in the policy and the objective, never in this code, so their dynamics are
comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from prefdyn.errors import TrainingError
from prefdyn.losses.types import LossOutput, PreferenceLogps, compute_loss


class Policy(Protocol):
    def logps(self, batch: Any) -> PreferenceLogps: ...
    def parameters(self): ...


Objective = Callable[[PreferenceLogps], LossOutput]


@dataclass
class StepOutput:
    """What one step produced, detached: scalar loss, per-problem loss (B,) or (),
    per-example loss output and log-probs, and the gradient norm."""

    loss: Tensor
    problem_loss: Tensor
    out: LossOutput
    logps: PreferenceLogps
    grad_norm: Tensor


def training_step(policy: Policy, objective: Objective, batch: Any,
                  optimizer: torch.optim.Optimizer, *, step: int,
                  max_grad_norm: float | None = None) -> StepOutput:
    """One update. Raises :class:`TrainingError` naming the step on a NaN/inf loss or
    gradient, *before* the weights are touched, so the last good state is kept."""
    loss, problem_loss, out, logps = compute_loss(policy, objective, batch)
    if not torch.isfinite(loss):
        raise TrainingError(f"loss is {loss.item()} (not finite); weights left at step {step - 1}",
                            step=step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    if not torch.isfinite(grad_norm):
        raise TrainingError("gradient is not finite; weights left unchanged", step=step)
    optimizer.step()
    return StepOutput(loss.detach(), problem_loss.detach(), out.detach(), logps.detach(),
                      grad_norm.detach())
