"""Small synthetic last-layer problems with a shared dominant mean, like real embeddings."""

import torch

from prefdyn.policies import stack_problems


def synthetic_problem(n: int, d: int, sep: float, *, seed: int, mean_norm: float = 5.0):
    g = torch.Generator().manual_seed(seed)
    common = torch.ones(d) / d**0.5 * mean_norm
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    y = torch.arange(n) % 2 == 0
    x = torch.randn(n, d, generator=g) + common + torch.where(y, 0.5, -0.5)[:, None] * sep * direction
    return x, y


def synthetic_data(seps=(0.5, 2.0, 4.0), n=40, d=8, seed=0, **kw):
    xs, ys = zip(*[synthetic_problem(n, d, s, seed=seed + i, **kw) for i, s in enumerate(seps)])
    return stack_problems(list(xs), list(ys))
