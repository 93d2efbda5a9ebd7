"""Batch streams for the loop: the full data set every step, or seeded minibatches."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch


def full_batches(data) -> Iterator:
    """The whole (training) data set at every step: gradient descent."""
    return itertools.repeat(data)


class ResumableMinibatches(Iterator):
    """``batch_size`` rows per problem per step, drawn without replacement within a
    step from each problem's real rows, with an explicit generator whose position can
    be saved (:meth:`state`) and restored (:meth:`load_state`) for exact resumption."""

    def __init__(self, data, batch_size: int, seed: int):
        n_real = data.mask.sum(1)
        if int(n_real.min()) < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the smallest problem ({int(n_real.min())} rows)")
        self.data, self.batch_size = data, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.count = 0

    def __next__(self):
        # Random keys with padded rows pushed last, so the first k of the sort are real.
        keys = torch.rand(self.data.mask.shape, generator=self.gen) + (~self.data.mask).float() * 2.0
        idx = keys.argsort(dim=1)[:, :self.batch_size]
        self.count += 1
        return self.data.take(idx)

    def state(self) -> dict:
        return {"generator": self.gen.get_state().tolist(), "count": self.count}

    def load_state(self, state: dict) -> None:
        self.gen.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self.count = int(state["count"])


def random_minibatches(data, batch_size: int, *, seed: int) -> ResumableMinibatches:
    """Seeded minibatches (same seed, same stream); see :class:`ResumableMinibatches`."""
    return ResumableMinibatches(data, batch_size, seed)
