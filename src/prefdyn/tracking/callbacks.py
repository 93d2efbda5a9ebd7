"""Callback protocol: dynamics tracking plugs into the one loop through these hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Callback:
    """Override what you need. ``state`` is the loop's :class:`TrainState`."""

    def on_setup(self, policy) -> None:
        """Called by a runner (``fit_lm``) once, before any weight can change (a checkpoint
        restored, the first update): the policy's model is still pi_ref, so reference
        log-probs computed here need no second copy of the model."""

    def on_train_start(self, state, policy) -> None: ...

    def on_step_end(self, state, policy, out) -> None: ...

    def on_train_end(self, state, policy) -> None: ...


class CallbackList(Callback):
    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def _all(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(*args)

    def on_setup(self, policy) -> None:
        self._all("on_setup", policy)

    def on_train_start(self, state, policy) -> None:
        self._all("on_train_start", state, policy)

    def on_step_end(self, state, policy, out) -> None:
        self._all("on_step_end", state, policy, out)

    def on_train_end(self, state, policy) -> None:
        self._all("on_train_end", state, policy)
