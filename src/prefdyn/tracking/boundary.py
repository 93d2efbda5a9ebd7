"""The learned boundary's normal over training, for the theorems' checks.

Theorems 4.2-4.3 of Im & Li (ICML 2024) speak about the direction of the learned
boundary ``u(t) = (W - W0)[yes] - (W - W0)[no]``, not only a cosine with it, so
:class:`BoundaryRecorder` keeps the whole vector at the steps it is asked for
(:func:`prefdyn.theory.checks.cosines` and :func:`~prefdyn.theory.checks.accuracy_bound`
read it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from prefdyn.tracking.callbacks import Callback

__all__ = ["BoundaryRecorder"]


class BoundaryRecorder(Callback):
    """Keeps the boundary normal ``u(t) = dW[yes] - dW[no]`` ``(B, d)`` at step 0, every
    ``every`` steps and the last (Theorems 4.2-4.3 need the direction, not only a cosine)."""

    def __init__(self, every: int):
        self.every = every
        self.steps: list[int] = []
        self.directions: list[Tensor] = []

    def _keep(self, step: int, policy) -> None:
        self.steps.append(step)
        self.directions.append(policy.boundary_delta().double().clone())

    def on_train_start(self, state, policy) -> None:
        self._keep(state.step, policy)

    def on_step_end(self, state, policy, out) -> None:
        if state.step % self.every == 0 or state.step == state.max_steps:
            self._keep(state.step, policy)

    def stacked(self) -> tuple[np.ndarray, Tensor]:
        """(steps (T,), directions (B, T, d))."""
        return np.array(self.steps), torch.stack(self.directions, dim=1)
