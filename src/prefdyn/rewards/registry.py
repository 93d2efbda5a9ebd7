"""Reward registry: name -> plain batched reward function, checked on every call.

A reward is ``fn(prompts, responses, references) -> Tensor (n,)`` of floats, one per
record (Razin et al., ICLR 2024: "For our purposes, $r(\\mathbf{x}, \\mathbf{y})$ can be
any arbitrary reward function"). :func:`get_reward` wraps it so that a missing
reference, a NaN, or an output of the wrong shape is a :class:`RewardError` naming
the record, raised before anything is trained on it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError

RewardFn = Callable[..., Tensor]


class RewardError(PrefdynError):
    """A reward that cannot be computed, or returned something unusable."""


@dataclass(frozen=True)
class _Entry:
    fn: RewardFn
    needs_reference: bool


_REWARDS: dict[str, _Entry] = {}


def register_reward(name: str, *, needs_reference: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward under ``name``; ``needs_reference``: every record must
    carry a reference response (lexical rewards)."""

    def add(fn: RewardFn) -> RewardFn:
        if name in _REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        _REWARDS[name] = _Entry(fn, needs_reference)
        return fn

    return add


def available_rewards() -> list[str]:
    return sorted(_REWARDS)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def check_rewards(values: Tensor, prompts: Sequence[str], name: str) -> Tensor:
    """``values`` as a float tensor (n,), or a :class:`RewardError` naming the first bad record."""
    n = len(prompts)
    values = torch.as_tensor(values)
    if values.shape != (n,):
        raise RewardError(f"reward {name!r} returned shape {tuple(values.shape)} for {n} "
                          f"record(s); expected ({n},)")
    values = values.float()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise RewardError(f"reward {name!r} is {values[i].item()} for record {i} "
                          f"(prompt {_short(prompts[i])!r}); rewards must be finite")
    return values


class Reward:
    """A registered reward with its parameters bound, checking its inputs and output."""

    def __init__(self, name: str, fn: RewardFn, needs_reference: bool):
        self.name, self.fn, self.needs_reference = name, fn, needs_reference

    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 references: Sequence[str | None] | None = None) -> Tensor:
        if len(responses) != len(prompts):
            raise RewardError(f"reward {self.name!r}: {len(prompts)} prompts but "
                              f"{len(responses)} responses")
        if self.needs_reference:
            if references is None:
                raise RewardError(f"reward {self.name!r} needs a reference response per record; "
                                  "none given")
            if len(references) != len(prompts):
                raise RewardError(f"reward {self.name!r}: {len(prompts)} prompts but "
                                  f"{len(references)} references")
            for i, ref in enumerate(references):
                if ref is None:
                    raise RewardError(f"reward {self.name!r} needs a reference but record {i} "
                                      f"(prompt {_short(prompts[i])!r}) has none")
        return check_rewards(self.fn(prompts, responses, references), prompts, self.name)

    def __repr__(self) -> str:
        return f"Reward({self.name!r})"


def get_reward(name: str, **params) -> Reward:
    """The reward ``name`` with its parameters bound, checked on every call."""
    if name not in _REWARDS:
        raise PrefdynError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}")
    entry = _REWARDS[name]
    accepted = inspect.signature(entry.fn).parameters
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise PrefdynError(f"reward {name!r} takes no parameter(s) {unknown}")
    return Reward(name, functools.partial(entry.fn, **params), entry.needs_reference)
