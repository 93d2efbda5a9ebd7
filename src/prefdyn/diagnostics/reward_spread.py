"""Reward spread per input and the vanishing expected gradient (Razin et al., ICLR 2024).

The theorem (talk slides): "$\\|\\nabla V_{\\mathbf{x}}(\\theta)\\| = O\\left(\\mathrm{STD}_{
\\mathbf{y} \\sim \\pi_{\\theta}(\\cdot | \\mathbf{x})}[r(\\mathbf{x}, \\mathbf{y})]^{2/3}\\right)$"
-- "Expected gradient for an input vanishes when reward std is small, even if reward
mean is suboptimal"; "Bound applies to expected gradients of individual inputs (as
opposed to of batch/population)". The slides give the order, not the constant;
prefdyn states no constant for the parameter gradient.

The one-step bandit (a single answer token) makes everything exact. With logits
``z`` over the vocabulary, ``p = softmax(z)`` and ``V = sum_v p_v r_v``:

    dV/dz_u = sum_v r_v p_v (delta_uv - p_u) = p_u (r_u - V),   i.e.  grad_z V = p * (r - V).

*Bound (derived here).* Write ``p_u |r_u - V| = sqrt(p_u) * sqrt(p_u) |r_u - V|``;
Cauchy-Schwarz gives

    ||grad_z V||_1 <= (sum_u p_u)^(1/2) (sum_u p_u (r_u - V)^2)^(1/2) = STD_{y~pi}[r],

and since ``sum_u p_u^2 (r_u - V)^2 <= max_u p_u * sum_u p_u (r_u - V)^2``,

    ||grad_z V||_2 <= sqrt(max_u p_u) * STD <= STD.

So on the bandit the gradient w.r.t. the logits is at most the reward std (constant
1, no hidden factor); w.r.t. parameters ``grad_theta V = J^T grad_z V`` with ``J`` the
Jacobian of the logits, so ``||grad_theta V|| <= ||J||_op * sqrt(p_max) * STD``.

With several tokens nothing is exact: :func:`monte_carlo_spread` estimates the mean
and std from k samples per input, and :func:`frac_reward_zero_std` is the share of
inputs whose k samples all got the same reward (TRL's GRPO log ``frac_reward_zero_std``;
those inputs give RLOO and GRPO a zero update), predicted for a 0/1 reward with
per-input success rate p by ``p^k + (1-p)^k`` (:func:`predicted_frac_zero_std`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.losses.bandit import reward_moments


@dataclass
class BanditSpread:
    """Exact per-input quantities of the bandit, each ``(..., n)``."""

    mean: Tensor             # V_x = E_{y~pi}[r(x, y)]
    std: Tensor              # STD_{y~pi}[r(x, y)]
    logit_grad_norm: Tensor  # ||grad_z V_x||_2
    bound: Tensor            # sqrt(max_v pi(v|x)) * std >= logit_grad_norm


def expected_reward_logit_grad(logits: Tensor, rewards: Tensor) -> Tensor:
    """``grad_z V_x = p * (r - V_x)``, exact: ``(..., n, V) -> (..., n, V)``."""
    p = torch.softmax(logits.double(), -1)
    value = (p * rewards).sum(-1, keepdim=True)
    return (p * (rewards - value)).to(logits.dtype)


def bandit_reward_spread(logits: Tensor, rewards: Tensor) -> BanditSpread:
    """Mean, std, logit-gradient norm and its derived bound, from the softmax over the
    vocabulary (no sampling). ``logits`` and ``rewards`` are ``(..., n, V)``."""
    if logits.shape != rewards.shape:
        raise PrefdynError(f"logits {tuple(logits.shape)} and rewards {tuple(rewards.shape)} "
                           "must have the same shape (..., n, V)")
    logps = torch.log_softmax(logits.detach().double(), -1)
    mean, std = reward_moments(logps, rewards.double())
    grad = expected_reward_logit_grad(logits.detach().double(), rewards.double())
    p_max = logps.exp().amax(-1)
    return BanditSpread(mean.float(), std.float(), grad.norm(dim=-1).float(),
                        (p_max.sqrt() * std).float())


def expected_gradient_norms(values: Tensor, params: Iterable[torch.nn.Parameter]) -> Tensor:
    """``||grad_theta V_x||`` for every input: ``values`` (n,) are the exact V_x (with
    graph, e.g. ``-expected_reward_loss(...).losses``); one backward pass per input,
    since the theorem is about each input's gradient, not the batch's."""
    params = [p for p in params if p.requires_grad]
    norms = []
    for i in range(values.shape[-1]):
        grads = torch.autograd.grad(values[..., i].sum(), params, retain_graph=True,
                                    allow_unused=True)
        sq = sum((g.double() ** 2).sum() for g in grads if g is not None)
        norms.append(torch.as_tensor(sq).sqrt())
    return torch.stack(norms).float() if norms else torch.empty(0)


@dataclass
class MonteCarloSpread:
    """Per-input estimates from k samples, each ``(n,)``: the sample mean, the sample std
    (Bessel-corrected), and a normal-approximation (CLT) confidence interval for the mean,
    ``mean -+ z * std / sqrt(k)``."""

    mean: Tensor
    std: Tensor
    ci_low: Tensor
    ci_high: Tensor
    k: int


def monte_carlo_spread(rewards: Tensor, *, confidence: float = 0.95) -> MonteCarloSpread:
    """Reward mean and std of each input from its k sampled rewards ``(n, k)``."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise PrefdynError(f"need (n inputs, k >= 2 samples) rewards, got shape {tuple(rewards.shape)}")
    if not 0 < confidence < 1:
        raise PrefdynError(f"confidence must be in (0, 1), got {confidence}")
    k = rewards.shape[1]
    r = rewards.double()
    mean, std = r.mean(1), r.std(1)
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(confidence, dtype=torch.float64))
    half = z * std / math.sqrt(k)
    return MonteCarloSpread(mean.float(), std.float(), (mean - half).float(),
                            (mean + half).float(), k)


def frac_reward_zero_std(rewards: Tensor, *, atol: float = 1e-8) -> float:
    """Share of inputs whose k sampled rewards ``(n, k)`` are all equal."""
    if rewards.dim() != 2 or rewards.shape[0] == 0:
        raise PrefdynError(f"need (n >= 1 inputs, k samples) rewards, got shape {tuple(rewards.shape)}")
    spread = rewards.amax(1) - rewards.amin(1)
    return float((spread <= atol).double().mean())


def predicted_frac_zero_std(success: Tensor, k: int) -> float:
    """Expected share of inputs whose k samples of a 0/1 reward agree: the mean over inputs
    of ``p^k + (1-p)^k`` (all succeed or all fail), ``p`` the per-input success rate."""
    if k < 1:
        raise PrefdynError(f"k must be >= 1, got {k}")
    p = success.double()
    if ((p < 0) | (p > 1)).any():
        raise PrefdynError("success rates must be in [0, 1]")
    return float((p ** k + (1 - p) ** k).mean())
