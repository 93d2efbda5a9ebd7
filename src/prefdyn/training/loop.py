"""The one training loop: batches in, steps out, callbacks for everything else."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prefdyn.tracking.callbacks import Callback, CallbackList
from prefdyn.training._checks import DeferredChecks
from prefdyn.training.divergence import DEFAULT_DIVERGENCE_FACTOR, DivergenceGuard
from prefdyn.training.step import GradSync, Objective, Policy, StepOutput, training_step

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where the loop is; callbacks read it (and may set ``stop``)."""

    step: int = 0
    max_steps: int = 0
    stop: bool = False
    error: BaseException | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Raises the error of a bad step not yet read (deferred checks); callbacks that
    # write state (checkpoints) call it first.
    verify: Callable[[], None] = field(default=lambda: None, repr=False)


def train(policy: Policy, objective: Objective, batches: Iterator[Any],
          optimizer: torch.optim.Optimizer, *, steps: int,
          callbacks: Sequence[Callback] = (), max_grad_norm: float | None = None,
          start_step: int = 0, grad_sync: GradSync | None = None,
          divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR,
          check_every: int = 1) -> TrainState:
    """Run updates ``start_step + 1 .. steps``. Callbacks see every step; on an error
    they are told (``on_train_end`` with ``state.error`` set) before it propagates, so
    whatever they recorded is kept. ``grad_sync`` is passed to the step (distributed
    runs). A loss or reward margin that grows ``divergence_factor`` times past its
    first-step value stops the run like a NaN does (:mod:`prefdyn.training.divergence`;
    ``None``: never). ``check_every`` > 1 reads these checks every that many steps
    instead of after each (no host sync per step; :mod:`prefdyn.training._checks`): a bad
    step's update and all later ones are skipped on the device, and the error, naming
    the bad step, comes at the next read; callbacks see the skipped steps. Distributed
    runs (``grad_sync``) check every step."""
    cbs = CallbackList(callbacks)
    state = TrainState(step=start_step, max_steps=steps)
    guard = DivergenceGuard(divergence_factor) if divergence_factor is not None else None
    checks = None
    if check_every > 1 and grad_sync is None:
        checks = DeferredChecks(check_every, guard, optimizer)
        state.verify = checks.raise_if_bad
    cbs.on_train_start(state, policy)
    try:
        for step in range(start_step + 1, steps + 1):
            batch = next(batches)
            out: StepOutput = training_step(policy, objective, batch, optimizer, step=step,
                                            max_grad_norm=max_grad_norm, grad_sync=grad_sync,
                                            guard=guard, checks=checks)
            state.step = step
            if checks is not None and checks.due(step):
                checks.raise_if_bad()
            cbs.on_step_end(state, policy, out)
            if state.stop:
                log.info("stopped by a callback at step %d", step)
                break
        state.verify()
    except BaseException as e:
        state.error = e
        raise
    finally:
        cbs.on_train_end(state, policy)
    return state
