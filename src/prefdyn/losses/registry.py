"""Loss registry: name -> pure per-example objective (preference, SFT, policy gradient)."""

from __future__ import annotations

import functools
import inspect
import types
import typing
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


def loss_input_types(name: str) -> tuple[type, ...]:
    """The container types the loss ``name`` takes (from its first parameter's hint)."""
    fn = _LOSSES[name]
    first = next(iter(inspect.signature(fn).parameters))
    hint = typing.get_type_hints(fn)[first]
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def available_losses(takes: type | None = None) -> list[str]:
    """Registered loss names; with ``takes``, only those whose input is that container
    (e.g. ``PreferenceLogps`` for the pair runners, ``RolloutLogps`` for sampled RL)."""
    return sorted(n for n in _LOSSES if takes is None or takes in loss_input_types(n))


def loss_parameters(name: str) -> list[str]:
    """The hyper-parameters the loss ``name`` takes (e.g. ``["beta"]``)."""
    if name not in _LOSSES:
        raise PrefdynError(f"unknown loss {name!r}; available: {', '.join(available_losses())}")
    return list(inspect.signature(_LOSSES[name]).parameters)[1:]


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


def loss_for_run(name: str, *, beta: float) -> Callable[[Any], LossOutput]:
    """The loss ``name`` with a run's ``TrainConfig.beta`` bound when the loss takes a
    ``beta`` (``sft`` takes none: its runs ignore beta instead of failing)."""
    if name in _LOSSES and "beta" not in inspect.signature(_LOSSES[name]).parameters:
        return get_loss(name)
    return get_loss(name, beta=beta)
