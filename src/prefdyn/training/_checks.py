"""The step's checks (a NaN/inf loss or gradient, a diverged run) without a host sync each step.

Reading a value on the host (``.item()``, ``if tensor:``) makes the host wait for the
accelerator at every step, so it cannot queue the next step's kernels while this one
runs. With ``check_every`` N > 1 and a fused optimizer (prefdyn's AdamW is built with
``fused=True``), each step computes its checks as a flag on the device and hands it to
the optimizer as ``found_inf``, the flag torch's fused kernels take from ``GradScaler``
to skip an update on the device. Once a step is bad the flag stays set, so that update
and every later one are skipped: the weights stay those of the last good step, as with
per-step checks. The flag is read every N steps, before a checkpoint is written, and at
the end of the run; the error names the first bad step and its values, as per-step
checks would have at that step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError, TrainingError
from prefdyn.training.divergence import DivergenceGuard, likely_cause

OK, NONFINITE_LOSS, NONFINITE_GRAD, DIVERGED = 0, 1, 2, 3  # kinds of a bad step


def can_skip_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` honours ``found_inf`` (torch's fused Adam, AdamW, SGD)."""
    return (type(optimizer) in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
            and bool(optimizer.defaults.get("fused")))


def failure_message(kind: int, step: int, loss: float, margin: float, guard: DivergenceGuard | None,
                    optimizer: torch.optim.Optimizer) -> str:
    """The sentence a bad step raises with (per-step and deferred checks alike)."""
    if kind == NONFINITE_LOSS:
        return f"loss is {loss} (not finite); weights left at step {step - 1}"
    if kind == NONFINITE_GRAD:
        return "gradient is not finite; weights left unchanged"
    assert guard is not None
    return (f"{guard.describe(loss, margin)}: {likely_cause(optimizer)}; weights left at step "
            f"{step - 1}")


class DeferredChecks:
    """One run's checks, kept on the device and read every ``every`` steps (module docstring)."""

    def __init__(self, every: int, guard: DivergenceGuard | None, optimizer: torch.optim.Optimizer):
        if not can_skip_on_device(optimizer):
            raise PrefdynError(f"check_every {every} needs an optimizer that can skip a step on the "
                               f"device (torch's fused Adam, AdamW or SGD), not "
                               f"{type(optimizer).__name__} with fused={optimizer.defaults.get('fused')}")
        self.every, self.guard, self.optimizer = every, guard, optimizer
        self._halted: Tensor | None = None  # 0-dim bool: a step so far was bad
        self._first_bad: Tensor | None = None  # (step, kind, loss, margin) of the first bad step
        self.last_step = 0

    def record(self, step: int, loss: Tensor, margin: Tensor, grad_norm: Tensor) -> None:
        """Compute this step's flag and set it as the optimizer's ``found_inf`` (call
        between the gradient and ``optimizer.step()``)."""
        loss, margin = loss.detach().float(), margin.detach().float()
        diverged = (self.guard.diverged(loss, margin) if self.guard is not None
                    else torch.zeros((), dtype=torch.bool, device=loss.device))
        kind = torch.where(~torch.isfinite(loss), NONFINITE_LOSS,
                           torch.where(~torch.isfinite(grad_norm), NONFINITE_GRAD,
                                       torch.where(diverged, DIVERGED, OK)))
        bad = kind != OK
        values = torch.stack([torch.tensor(float(step), device=loss.device), kind.float(), loss, margin])
        if self._halted is None:
            self._halted, self._first_bad = bad, values
        else:
            self._first_bad = torch.where(bad & ~self._halted, values, self._first_bad)
            self._halted = self._halted | bad
        self.optimizer.found_inf = self._halted.float()
        self.last_step = step

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def raise_if_bad(self) -> None:
        """Read the flag (one sync); raise :class:`TrainingError` naming the first bad step."""
        if self._first_bad is None:
            return
        step, kind, loss, margin = self._first_bad.tolist()
        if not int(kind):
            return
        self.optimizer.found_inf = None
        self.optimizer.zero_grad(set_to_none=True)
        if self.guard is not None:
            self.guard.settle()
        step = int(step)
        message = failure_message(int(kind), step, loss, margin, self.guard, self.optimizer)
        raise TrainingError(f"{message} (checked every {self.every} steps: the updates of steps "
                            f"{step}..{self.last_step} were skipped)", step=step)
