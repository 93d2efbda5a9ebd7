"""Loss registry: name -> pure per-example objective (preference, SFT, policy gradient)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from prefdyn.errors import PrefdynError
from prefdyn.losses.types import LossOutput

LossFn = Callable[..., LossOutput]
_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator adding a loss under ``name`` (a variant is a new function, not a new branch)."""

    def add(fn: LossFn) -> LossFn:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        _LOSSES[name] = fn
        return fn

    return add


def available_losses() -> list[str]:
    return sorted(_LOSSES)


def get_loss(name: str, **params) -> Callable[[Any], LossOutput]:
    """The loss ``name`` with its hyper-parameters (e.g. ``beta``) bound: a function of
    the container its policy produces (e.g. ``PreferenceLogps``, ``RolloutLogps``)."""
    if name not in _LOSSES:
        raise PrefdynError(f"unknown loss {name!r}; available: {', '.join(available_losses())}")
    fn = _LOSSES[name]
    accepted = inspect.signature(fn).parameters
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise PrefdynError(f"loss {name!r} takes no parameter(s) {unknown}")
    return functools.partial(fn, **params)
