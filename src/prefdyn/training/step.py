"""The one training step every mode goes through.

A *policy* turns a batch into whatever its objective needs (``policy.logps(batch)``:
any container with ``detach()``, e.g. :class:`~prefdyn.losses.PreferenceLogps` of
pairs or ``RolloutLogps`` of sampled responses), an *objective* turns that into a
:class:`~prefdyn.losses.LossOutput` (per-example losses and named per-example
metrics; a registry loss with its hyper-parameters bound), and the step reduces,
checks, back-propagates and updates. Last-layer, LoRA, full fine-tuning, DPO, SFT
and policy-gradient RL differ only in the policy and the objective, never in this
code, so their dynamics are comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from prefdyn.errors import TrainingError
from prefdyn.losses.types import LossOutput, cat_examples, compute_loss
from prefdyn.training._checks import NONFINITE_GRAD, NONFINITE_LOSS, DeferredChecks, failure_message
from prefdyn.training.divergence import DivergenceGuard, likely_cause, peak_abs_margin


class Policy(Protocol):
    """``logps(batch)``: the objective's input container (a dataclass of per-example
    tensors with ``detach()``). A policy used in distributed runs also has
    ``empty_logps(device)``, that container with no examples, for a process whose
    shard of a batch is empty (its trackers still report the same metric names)."""

    def logps(self, batch: Any) -> Any: ...
    def parameters(self): ...


Objective = Callable[[Any], LossOutput]


@dataclass
class StepOutput:
    """What one step produced, detached: scalar loss, per-problem loss (B,) or (),
    per-example loss output and log-probs, and the gradient norm."""

    loss: Tensor
    problem_loss: Tensor
    out: LossOutput
    logps: Any
    grad_norm: Tensor


GradSync = Callable[[list[Tensor], bool, int], bool]
"""Distributed hook ``(grads, finite, n_examples) -> all_finite``. The step back-propagates
the *sum* of this process's ``n_examples`` example losses; the hook replaces the gradients
in place by the gradient of the global batch's mean loss (sum over processes, divided by
the global number of examples) and says whether every process had a finite (and not
diverged) loss: an all-reduce (:mod:`prefdyn.training.distributed`), or under sharded
weights a rescaling of what FSDP's reduce-scatter averaged (:mod:`prefdyn.training.fsdp`)."""


def _size(batch: Any) -> int:
    mask = getattr(batch, "mask", None)
    if mask is not None:
        return int(mask.sum())
    return len(batch)


def training_step(policy: Policy, objective: Objective, batch: Any,
                  optimizer: torch.optim.Optimizer, *, step: int,
                  max_grad_norm: float | None = None,
                  grad_sync: GradSync | None = None,
                  guard: DivergenceGuard | None = None,
                  checks: DeferredChecks | None = None) -> StepOutput:
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
    Under ``grad_sync`` every micro-batch is back-propagated, even after a NaN/inf loss
    (the backward may be a collective, as under FSDP); the hook then tells every process
    to drop the step.

    With ``checks`` (:mod:`prefdyn.training._checks`; not with ``grad_sync``) nothing is
    read back to the host: the checks become a device flag that skips the update, and
    the error is raised when ``checks`` is read, naming the first bad step.
    """
    if checks is not None and grad_sync is not None:
        raise TrainingError("deferred checks cannot be combined with grad_sync", step=step)
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
        if checks is None and not torch.isfinite(loss):
            finite, loss_sum = False, loss.detach()
            if grad_sync is None:
                break
        # Under grad_sync: the summed example losses (the hook divides by the global count).
        (loss * (size if grad_sync is not None else weight)).backward()
        if not finite:
            continue
        loss_sum = loss.detach() * weight + (0 if loss_sum is None else loss_sum)
        problem_sum = problem_loss.detach() * weight + (0 if problem_sum is None else problem_sum)
        outs.append(out.detach())
        logps_parts.append(logps.detach())
        if guard is not None:
            peaks.append(peak_abs_margin(out, getattr(b, "mask", None)))
    diverged = None
    if checks is None and finite and guard is not None and outs:
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
        raise TrainingError(failure_message(NONFINITE_LOSS, step, value, 0.0, guard, optimizer), step=step)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(grad_norm, "full_tensor"):  # sharded gradients: the norm over every shard
        grad_norm = grad_norm.full_tensor()
    if checks is not None:
        margin = torch.stack(peaks).max() if peaks else loss_sum.new_zeros(())
        checks.record(step, loss_sum, margin, grad_norm)
    elif not torch.isfinite(grad_norm):
        raise TrainingError(failure_message(NONFINITE_GRAD, step, 0.0, 0.0, guard, optimizer), step=step)
    optimizer.step()
    # As transformers' Trainer: the gradients are freed once applied, so that what runs
    # between steps (an RL stream sampling the next batch) does not hold them too.
    optimizer.zero_grad(set_to_none=True)
    if not outs:  # this process's shard was empty: nothing of its own to report
        return _empty_output(policy, objective, params[0].device, grad_norm.detach(), step)
    return StepOutput(loss_sum, problem_sum, cat_examples(outs), cat_examples(logps_parts),
                      grad_norm.detach())


def _empty_output(policy: Policy, objective: Objective, device: torch.device,
                  grad_norm: Tensor, step: int) -> StepOutput:
    """The output of an empty shard: the objective on the policy's empty container, so
    the metrics have the same names (and shapes ``(..., 0)``) as on the other processes."""
    if not hasattr(policy, "empty_logps"):
        raise TrainingError(f"this process got an empty shard but {type(policy).__name__} has "
                            "no empty_logps(device) to report it with", step=step)
    with torch.no_grad():
        logps = policy.empty_logps(device)
        out = objective(logps)
    empty = out.losses.sum()
    return StepOutput(empty, empty, out.detach(), logps, grad_norm)
