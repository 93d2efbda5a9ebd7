"""Typed containers between a policy's forward pass and an objective, and the
generic operations the one training step applies to any of them.

The step's contract is objective-agnostic: a policy's ``logps(batch)`` returns
*any* container its objective needs (a dataclass of per-example tensors with a
``detach()``: :class:`PreferenceLogps` for pairs, ``RolloutLogps`` for sampled
responses, ``BanditLogps`` for a softmax over the vocabulary); the objective
returns a :class:`LossOutput`, per-example losses plus named per-example metrics.
:func:`cat_examples` concatenates micro-batches of any such container.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

T = TypeVar("T")

EXAMPLE_DIM = "example_dim"
"""Field metadata key: the dim of a container field that indexes examples (default -1).
Per-token fields are ``(..., n, T)`` and declare -2 (see :func:`per_token_field`)."""


def per_token_field(default: Any = None) -> Any:
    """A dataclass field shaped ``(..., n, T)``: examples on dim -2, tokens last."""
    return field(default=default, metadata={EXAMPLE_DIM: -2})


def detach_fields(obj: T) -> T:
    """A copy of a dataclass with every tensor field (and tensors in dict fields) detached."""
    def detach(v):
        if isinstance(v, Tensor):
            return v.detach()
        if isinstance(v, dict):
            return {k: detach(x) for k, x in v.items()}
        return v
    return type(obj)(**{f.name: detach(getattr(obj, f.name)) for f in fields(obj)})


@dataclass
class PreferenceLogps:
    """Sequence log-probabilities of a batch of preference pairs.

    Every tensor has the same shape ``(..., n)``: ``(n,)`` for a plain batch,
    ``(B, n)`` when ``B`` independent problems (behaviors) are trained at once.
    ``*_len`` are response lengths in tokens (1 for single-token answers); they
    are needed only by length-normalized losses such as SimPO.
    """

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    chosen_len: Tensor | None = None
    rejected_len: Tensor | None = None

    @property
    def chosen_logratio(self) -> Tensor:
        """log pi(y+|x) - log pi_ref(y+|x)."""
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratio(self) -> Tensor:
        """log pi(y-|x) - log pi_ref(y-|x)."""
        return self.rejected - self.ref_rejected

    def detach(self) -> "PreferenceLogps":
        return detach_fields(self)

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> "PreferenceLogps":
        """No examples (a process's empty shard in a distributed run)."""
        e = torch.empty(0, device=device)
        return cls(e, e, e, e)


@dataclass
class LossOutput:
    """What every objective returns: per-example ``losses`` ``(..., n)`` and named
    per-example ``metrics``, each ``(..., n)`` (what the trackers average).

    Preference losses report DPO's implicit rewards ``beta * log pi/pi_ref`` of the
    two responses as ``metrics["chosen_reward"]`` and ``metrics["rejected_reward"]``
    (see :func:`preference_output`); policy-gradient objectives report e.g. the
    sampled reward and its advantage.
    """

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def detach(self) -> "LossOutput":
        return detach_fields(self)


def preference_output(losses: Tensor, chosen_reward: Tensor, rejected_reward: Tensor
                      ) -> LossOutput:
    """A preference loss's output: its losses and the implicit rewards of y+ and y-."""
    return LossOutput(losses, {"chosen_reward": chosen_reward, "rejected_reward": rejected_reward})


def _cat_values(values: list, dim: int, name: str):
    first = values[0]
    if any((v is None) != (first is None) for v in values):
        raise ValueError(f"field {name!r} is None in some micro-batches only")
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: _cat_values([v[k] for v in values], dim, f"{name}.{k}") for k in first}
    if isinstance(first, Tensor):
        d = dim % first.dim()
        # Per-token fields of micro-batches padded to different lengths: right-pad
        # every dim after the example dim to the longest (pads are masked out).
        widths = [max(v.shape[i] for v in values) for i in range(d + 1, first.dim())]
        padded = []
        for v in values:
            pad: list[int] = []
            for i, w in reversed(list(enumerate(widths, start=d + 1))):
                pad += [0, w - v.shape[i]]
            padded.append(F.pad(v, pad) if any(pad) else v)
        return torch.cat(padded, dim=d)
    if any(v != first for v in values):
        raise ValueError(f"field {name!r} differs between micro-batches: {values}")
    return first


def cat_examples(parts: Sequence[T]) -> T:
    """Concatenate micro-batches of one container type along their example dim.

    Works for a tensor ``(..., n)``, a dict of them, or a dataclass whose fields are
    tensors (example dim from the field's ``EXAMPLE_DIM`` metadata, default -1; later
    dims right-padded with 0 to the longest), dicts of tensors, ``None`` (in every
    part) or equal plain values (e.g. a group size).
    """
    if not parts:
        raise ValueError("cat_examples needs at least one part")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if is_dataclass(first) and not isinstance(first, type):
        return type(first)(**{
            f.name: _cat_values([getattr(p, f.name) for p in parts],
                                f.metadata.get(EXAMPLE_DIM, -1), f.name)
            for f in fields(first)})
    return _cat_values(list(parts), -1, type(first).__name__)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the last dim, counting only ``mask`` entries: ``(..., n) -> (...)``."""
    if mask is None:
        return values.mean(-1)
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def reduce_loss(losses: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scalar training loss: the per-problem mean, summed over independent problems.

    Summing (not averaging) over the leading dims keeps each problem's gradient
    exactly what it would be if it were trained alone.
    """
    return masked_mean(losses, mask).sum()


__all__ = ["EXAMPLE_DIM", "LossOutput", "PreferenceLogps", "cat_examples", "detach_fields",
           "masked_mean", "per_token_field", "preference_output", "reduce_loss"]


def compute_loss(policy, objective, batch):
    """Forward pass and reduction, no update: (scalar loss, per-problem loss, out, logps).

    ``policy.logps(batch)`` gives whatever container the objective needs, ``objective``
    the per-example losses; the batch's ``mask`` (if any) marks real rows.
    """
    logps = policy.logps(batch)
    out = objective(logps)
    problem_loss = masked_mean(out.losses, getattr(batch, "mask", None))
    return problem_loss.sum(), problem_loss, out, logps
