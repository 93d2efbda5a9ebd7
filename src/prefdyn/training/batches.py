"""Batch streams for the loop: the full data set every step, or seeded minibatches."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch


def full_batches(data) -> Iterator:
    """The whole (training) data set at every step: gradient descent."""
    return itertools.repeat(data)


def random_minibatches(data, batch_size: int, *, seed: int) -> Iterator:
    """``batch_size`` rows per problem per step, drawn without replacement within a
    step from each problem's real rows (explicit generator; same seed, same stream)."""
    gen = torch.Generator().manual_seed(seed)
    n_real = data.mask.sum(1)
    if int(n_real.min()) < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the smallest problem ({int(n_real.min())} rows)")
    while True:
        # Random keys with padded rows pushed last, so the first k of the sort are real.
        keys = torch.rand(data.mask.shape, generator=gen) + (~data.mask).float() * 2.0
        idx = keys.argsort(dim=1)[:, :batch_size]
        yield data.take(idx)
