"""Bounds on DPO's last-layer update (Im & Li, ICML 2024, Section 4.1).

Setting: only the unembedding ``W_U`` ``(V, d)`` is trained, from ``W0``, on
single-token answers. A sample with last hidden state ``g`` ``(d,)``, preferred
row ``y+`` and dispreferred row ``y-`` has the implicit-reward margin

    h = (W - W0)[y+] . g - (W - W0)[y-] . g

(the log-partition of the softmax cancels in the DPO log-ratio), DPO loss
``-log sigmoid(beta h)`` and gradient ``-beta sigmoid(-beta h) (e_y+ - e_y-) g^T``.

Theorem 4.1 bounds the update after ``t`` steps of learning rate ``eta`` by

    ||W_U(t) - W_U(0)|| <= 6 beta' eta t d^(Delta - 1/2),   beta = beta' d^(-1/2),

and since ``d^Delta = D`` this is ``6 beta eta t D``: the more distinguishable a
behavior, the faster its weights may move. Theorem 4.1's hypotheses are checked in
:mod:`prefdyn.theory.hypotheses`.

:func:`theorem42_bound` and :func:`theorem43_bound` are NOT the paper's Theorems 4.2
and 4.3: they are prefdyn's own lemmas (the update direction ``u(t)`` alone against
``mu+ - mu-``, and a held-out ranking accuracy). The paper's statements are in
:mod:`prefdyn.theory.theorem42` and :mod:`prefdyn.theory.theorem43`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError

__all__ = [
    "THEOREM41_CONSTANT",
    "dpo_last_layer_grad",
    "theorem41_bound",
    "theorem42_bound",
    "theorem43_bound",
]

THEOREM41_CONSTANT = 6.0
"""The constant of Theorem 4.1: the per-step rate bound in units of ``beta * D``."""


def theorem41_bound(beta: float, lr: float, steps: int | Tensor, d: int, D: float) -> Tensor:
    """Theorem 4.1's bound on ``||W_U(t) - W_U(0)||`` after ``t = steps`` steps.

    Written as the theorem states it, ``6 beta' eta t d^(Delta - 1/2)`` with
    ``beta' = beta sqrt(d)`` (the paper scales DPO's ``beta = beta' d^(-1/2)``)
    and ``Delta = log D / log d``. Because ``d^Delta = D`` and
    ``beta' d^(-1/2) = beta``, it equals ``6 beta eta t D``.

    Args:
        beta: DPO's ``beta`` (the one passed to the loss, not ``beta'``).
        lr: learning rate ``eta``.
        steps: step count ``t``, an int or a tensor of any shape.
        d: embedding width, at least 2.
        D: distinguishability ``||mu+ - mu-||`` (Section 3); ``D = 0`` gives 0.

    Returns:
        float64 tensor shaped like ``steps``.
    """
    if d < 2 or not D >= 0:
        raise PrefdynError(f"Theorem 4.1 needs d >= 2 and D >= 0, got d={d}, D={D}")
    t = torch.as_tensor(steps, dtype=torch.float64)
    if D == 0:  # Delta = -inf, d**Delta = 0
        return torch.zeros_like(t)
    beta_prime = beta * math.sqrt(d)
    Delta = math.log(D) / math.log(d)
    return THEOREM41_CONSTANT * beta_prime * lr * t * d ** (Delta - 0.5)


def dpo_last_layer_grad(
    W: Tensor,
    W0: Tensor,
    G: Tensor,
    prefers_yes: Tensor,
    beta: float,
    rows: tuple[int, int] = (0, 1),
) -> Tensor:
    """Closed-form gradient of the mean last-layer DPO loss with respect to ``W``.

    With ``s_i = +1`` where Yes is preferred and ``-1`` otherwise, the margin is
    ``h_i = s_i <r, g_i>`` with ``r = (W - W0)[yes] - (W - W0)[no]``, and

        grad[yes] = -grad[no] = -(beta / n) sum_i sigmoid(-beta h_i) s_i g_i,

    all other rows zero (Section 4.1; the softmax's log-partition cancels).

    Args:
        W: ``(V, d)`` current unembedding, ``V >= 2``.
        W0: ``(V, d)`` reference (initial) unembedding.
        G: ``(n, d)`` last hidden states.
        prefers_yes: ``(n,)`` bool, True where Yes is preferred.
        beta: DPO's ``beta``.
        rows: ``(yes_row, no_row)`` indices of the answer tokens in ``W``.

    Returns:
        ``(V, d)`` gradient in ``W``'s dtype.
    """
    yes, no = rows
    delta_W = (W - W0).to(torch.float64)
    g = G.to(torch.float64)
    sign = prefers_yes.to(torch.float64) * 2 - 1
    margin = sign * (g @ (delta_W[yes] - delta_W[no]))
    coef = -beta * torch.sigmoid(-beta * margin) * sign
    row_grad = coef @ g / g.shape[0]
    grad = torch.zeros_like(delta_W)
    grad[yes] = row_grad
    grad[no] = -row_grad
    return grad.to(W.dtype)


def theorem42_bound(steps: int | Tensor, cos_m_b: float, kappa: float) -> Tensor:
    """prefdyn's lemma (not the paper's Theorem 4.2): a lower bound on ``cos(u(t), b)``.

    ``u(t) = (W - W0)[yes] - (W - W0)[no]`` is the update direction alone, not the
    decision boundary ``W_B + u(t)`` that Theorem 4.2 bounds (that one is
    :func:`prefdyn.theory.theorem42.theorem42_lower_bound`); this bound falls over
    time where the paper's rises. Derived here for full-batch gradient descent on
    the mean last-layer DPO loss, from any ``W0``. With ``u = (W - W0)[yes] - (W - W0)[no]``, ``s_i = +-1``,
    ``sigma_i(t) = sigmoid(-beta s_i <u(t), g_i>)`` and ``m = (1/n) sum_i s_i g_i``:

        u(t+1) = u(t) + (2 eta beta / n) sum_i sigma_i(t) s_i g_i,
        u(t)   = eta beta t m + r(t)          (sigma_i = 1/2 would give r = 0).

    Since ``|sigma(x) - 1/2| <= |x| / 4`` and ``||sum_i c_i s_i g_i|| <= ||G||_op ||c||``,
    ``||r(t)|| <= kappa sum_(tau < t) ||u(tau)||`` with ``kappa = eta beta^2 ||G||_op^2 / (2n)
    = eta lambda_max(H)`` (the curvature of the loss at ``W0``, see
    :mod:`prefdyn.training.step_size`). The discrete Gronwall recursion gives
    ``||r(t)|| <= eta beta ||m|| t rho(t)`` with ``rho(t) = (((1 + kappa)^t - 1) / kappa - t) / t``,
    hence for ``t >= 1``

        cos(u(t), b) >= (cos(m, b) - rho(t)) / (1 + rho(t)).

    At ``t = 1`` it is exact (``u(1) = eta beta m``). It is informative while
    ``kappa t = eta t lambda_max(H) <~ 1`` (the early, near-linear phase) and
    falls to -1 (vacuous) after. ``cos(m, b)`` itself tends to 1 as ``n`` grows when
    the classes are balanced and centered: ``m = b / 2 + noise`` with
    ``E||noise||^2 = tr(Sigma) / n``.

    Args:
        steps: ``t``, an int or a tensor; ``t = 0`` (``u = 0``, no direction) gives -1.
        cos_m_b: ``cos(m, b)``, the direction of the first step.
        kappa: ``eta * lambda_max(H)`` at ``W0``, ``>= 0``.

    Returns:
        float64 tensor shaped like ``steps``, in ``[-1, 1]``.
    """
    if kappa < 0 or not -1 - 1e-9 <= cos_m_b <= 1 + 1e-9:
        raise PrefdynError(f"need kappa >= 0 and cos_m_b in [-1, 1], got {kappa}, {cos_m_b}")
    cos_m_b = min(1.0, max(-1.0, cos_m_b))  # a computed cosine may overshoot by rounding
    t = torch.as_tensor(steps, dtype=torch.float64)
    tt = t.clamp_min(1.0)
    if kappa == 0:
        rho = torch.zeros_like(tt)
    else:
        # expm1/log1p keep ((1 + kappa)^t - 1) / kappa accurate for small kappa.
        rho = (torch.expm1(tt * math.log1p(kappa)) / kappa - tt) / tt
    bound = (cos_m_b - rho) / (1 + rho)
    bound = torch.where(torch.isfinite(bound), bound, torch.full_like(bound, -1.0))
    return torch.where(t >= 1, bound.clamp(-1.0, 1.0), torch.full_like(bound, -1.0))


def theorem43_bound(margin: float | Tensor, K: float | Tensor, alpha: float) -> Tensor:
    """prefdyn's lemma (not the paper's Theorem 4.3): the chance a fresh sample is ranked right.

    The paper's Theorem 4.3 is a margin condition for the model's own Yes/No
    accuracy on the training samples (:mod:`prefdyn.theory.theorem43`); this is a
    held-out reward-ranking bound from a sub-exponential tail. A sample of class
    ``c`` (``s_c = +-1``) is ranked right by the learned reward iff
    ``s_c <u, g> > 0``. Write ``g = mu_c + eps`` and ``margin = s_c <u_hat, mu_c>``
    (the class mean's distance to the boundary; for centered means
    ``mu+- = +-b/2`` it is ``(D / 2) cos(u, b)``, and a common mean ``mu0`` lowers it
    by at most ``|<u_hat, mu0>|``). If ``<u_hat, eps>`` is alpha-subexponential
    with Orlicz norm ``K`` (``E exp(|X / K|^alpha) <= 2``), Markov's inequality gives

        P(wrong) <= P(|<u_hat, eps>| >= margin) <= 2 exp(-(margin / K)^alpha),

    so ``accuracy >= 1 - 2 exp(-(margin / K)^alpha)`` (clipped at 0; ``margin <= 0``
    gives 0). ``u`` must not depend on the sample (a held-out sample).

    Args:
        margin: ``s_c <u_hat, mu_c>``, any shape.
        K: psi_alpha norm of the noise along ``u_hat``, positive, broadcastable.
        alpha: the tail shape, in ``(0, 2]``.

    Returns:
        float64 tensor, broadcast of ``margin`` and ``K``.
    """
    if not 0 < alpha <= 2:
        raise PrefdynError(f"alpha must be in (0, 2], got {alpha}")
    r = torch.as_tensor(margin, dtype=torch.float64).clamp_min(0.0)
    K = torch.as_tensor(K, dtype=torch.float64)
    if (K <= 0).any():
        raise PrefdynError("K (the psi_alpha norm) must be positive")
    return (1 - 2 * torch.exp(-((r / K) ** alpha))).clamp_min(0.0)
