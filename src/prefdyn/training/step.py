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
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import Tensor

from prefdyn.errors import TrainingError
from prefdyn.losses.types import LossOutput, PreferenceLogps, compute_loss
from prefdyn.training.divergence import DivergenceGuard, likely_cause, peak_abs_margin


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


GradSync = Callable[[list[Tensor], bool, int], bool]
"""Distributed hook ``(grads, finite, n_examples) -> all_finite``: replace the gradients
in place by the example-weighted mean over processes and say whether every process had
a finite (and not diverged) loss (see :mod:`prefdyn.training.distributed`)."""


def _size(batch: Any) -> int:
    mask = getattr(batch, "mask", None)
    if mask is not None:
        return int(mask.sum())
    return len(batch)


def _cat(parts: list, kind):
    """Concatenate per-example tensors of micro-batches along the example (last) dim."""
    if len(parts) == 1:
        return parts[0]
    return kind(**{f.name: (torch.cat([getattr(p, f.name) for p in parts], dim=-1)
                            if getattr(parts[0], f.name) is not None else None)
                   for f in fields(kind)})


def training_step(policy: Policy, objective: Objective, batch: Any,
                  optimizer: torch.optim.Optimizer, *, step: int,
                  max_grad_norm: float | None = None,
                  grad_sync: GradSync | None = None,
                  guard: DivergenceGuard | None = None) -> StepOutput:
    """One update. Raises :class:`TrainingError` naming the step on a NaN/inf loss or
    gradient, or on a loss or margin that ``guard`` finds diverged
    (:mod:`prefdyn.training.divergence`), *before* the weights are touched, so the last
    good state is kept.

    ``batch`` may be a list of micro-batches (gradient accumulation): each one is
    back-propagated with its loss weighted by its share of the examples, so the
    accumulated gradient and the reported loss equal those of the concatenated
    batch; one optimizer update follows. ``grad_sync`` (distributed runs) averages
    the accumulated gradients across processes, weighted by each one's number of
    examples, before clipping and the update; the loss reported is this process's.
    """
    micro = batch if isinstance(batch, list) else [batch]
    if not micro and grad_sync is None:  # a process may get an empty shard; alone, no
        raise TrainingError("empty list of micro-batches", step=step)
    # Sizes matter only when they weigh something (a policy's batch need not have a len).
    sizes = [_size(b) for b in micro] if len(micro) > 1 or grad_sync is not None else [1]
    total = sum(sizes)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = problem_sum = None
    outs, logps_parts, peaks = [], [], []
    finite = True
    for b, size in zip(micro, sizes):
        loss, problem_loss, out, logps = compute_loss(policy, objective, b)
        weight = size / total if len(micro) > 1 else 1.0
        if not torch.isfinite(loss):
            finite, loss_sum = False, loss.detach()
            break
        (loss * weight).backward()
        loss_sum = loss.detach() * weight + (0 if loss_sum is None else loss_sum)
        problem_sum = problem_loss.detach() * weight + (0 if problem_sum is None else problem_sum)
        outs.append(out.detach())
        logps_parts.append(logps.detach())
        if guard is not None:
            peaks.append(peak_abs_margin(out, getattr(b, "mask", None)))
    diverged = None
    if finite and guard is not None and outs:
        diverged = guard.check(loss_sum.item(), torch.stack(peaks).max().item())
        finite = diverged is None
    if grad_sync is not None:
        # Collective: every process must reach it, even one whose loss is not finite.
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        finite = grad_sync(grads, finite, total)
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        if diverged is not None:
            raise TrainingError(f"{diverged}: {likely_cause(optimizer)}; weights left at step "
                                f"{step - 1}", step=step)
        value = loss_sum.item() if loss_sum is not None and not torch.isfinite(loss_sum) else "nan"
        raise TrainingError(f"loss is {value} (not finite); weights left at step {step - 1}",
                            step=step)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    if not torch.isfinite(grad_norm):
        raise TrainingError("gradient is not finite; weights left unchanged", step=step)
    optimizer.step()
    if not outs:  # this process's shard was empty: nothing of its own to report
        empty = torch.empty(0, device=params[0].device)
        return StepOutput(empty.sum(), empty.sum(), LossOutput(empty, empty, empty),
                          PreferenceLogps(empty, empty, empty, empty), grad_norm.detach())
    return StepOutput(loss_sum, problem_sum, _cat(outs, LossOutput), _cat(logps_parts, PreferenceLogps),
                      grad_norm.detach())
