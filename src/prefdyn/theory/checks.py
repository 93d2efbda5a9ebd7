"""Theorem 4.1, prefdyn's lemmas 4.2-4.3 and Appendix A.3 of Im & Li (ICML 2024), checked on data.

:func:`check_theorem42` and :func:`accuracy_bound` check prefdyn's own lemmas (the update
direction; reward accuracy on test rows), not the paper's Theorems 4.2-4.3, which are in
:mod:`prefdyn.theory.theorem42` and :mod:`prefdyn.theory.theorem43`; :func:`tail_ratio` feeds
prefdyn's heuristic ``TAIL_RATIO`` check, not a hypothesis the paper tests.

Pure math on tensors: the tail estimates the bounds need (:func:`psi_norm`,
:func:`estimate_alpha`, :func:`tail_ratio`), the comparison of measured training
curves with the bounds (:func:`check_theorem41`, :func:`check_theorem42`,
:func:`accuracy_bound`), and the exact first-step identity of Appendix A.3
(:func:`first_step_identity`). The checks of one behavior's hidden states against
the theorems' assumptions, which read its class statistics, are diagnostics
(:mod:`prefdyn.diagnostics.theorems`); recording the boundary during training is
tracking (:class:`prefdyn.tracking.boundary.BoundaryRecorder`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, special
from torch import Tensor

from prefdyn.theory.bounds import THEOREM41_CONSTANT, dpo_last_layer_grad, theorem41_bound, theorem43_bound

__all__ = ["A3Result", "accuracy_bound", "cosines", "check_theorem41", "check_theorem42",
           "estimate_alpha", "first_step_identity", "gn_moment_ratio", "psi_norm", "tail_ratio"]


def gn_moment_ratio(alpha: float | np.ndarray) -> float | np.ndarray:
    """``E|X| / sqrt(E X^2)`` of a generalized normal of shape ``alpha`` (increasing in alpha):
    ``Gamma(2/a) / sqrt(Gamma(1/a) Gamma(3/a))``; Laplace 0.707, Gaussian 0.798."""
    a = np.asarray(alpha, dtype=float)
    return np.exp(special.gammaln(2 / a) - 0.5 * (special.gammaln(1 / a) + special.gammaln(3 / a)))


def _standardize(residuals: Tensor) -> Tensor:
    x = residuals.double()
    std = x.std(0)
    keep = std > 1e-12 * std.max().clamp_min(1e-300)
    return (x[:, keep] - x[:, keep].mean(0)) / std[keep]


def estimate_alpha(residuals: Tensor) -> float:
    """Tail shape ``alpha`` of class-centered residuals ``(n, d)`` by the moment ratio.

    Each coordinate is standardized, the ratio ``mean|z| / sqrt(mean z^2)`` is pooled,
    and :func:`gn_moment_ratio` is inverted (clipped to ``[0.05, 20]``; above 2 the tails
    are lighter than Gaussian, still alpha-subexponential for every ``alpha <= 2``).
    """
    z = _standardize(residuals)
    ratio = float(z.abs().mean() / z.square().mean().sqrt())
    lo, hi = 0.05, 20.0
    if ratio <= gn_moment_ratio(lo):
        return lo
    if ratio >= gn_moment_ratio(hi):
        return hi
    return float(optimize.brentq(lambda a: gn_moment_ratio(a) - ratio, lo, hi))


def tail_ratio(residuals: Tensor, alpha: float) -> float:
    """Empirical over fitted-generalized-normal quantile of the standardized ``|residuals|``
    far in the tail (above 1: heavier tails than the fitted law)."""
    z = _standardize(residuals).abs().flatten().numpy()
    q = 0.999 if z.size >= 10_000 else 0.99
    s = math.exp(0.5 * (math.lgamma(1 / alpha) - math.lgamma(3 / alpha)))
    fitted = s * special.gammaincinv(1 / alpha, q) ** (1 / alpha)
    return float(np.quantile(z, q)) / fitted


def psi_norm(x: Tensor, alpha: float, iters: int = 50) -> Tensor:
    """Empirical Orlicz norm ``inf{K : mean exp(|x / K|^alpha) <= 2}`` over the last dim.

    By Markov's inequality the share of the sample with ``|x| >= r`` is at most
    ``2 exp(-(r / K)^alpha)``, for any ``alpha``; as an estimate of the law's norm it is
    low for heavy tails. Bisection in ``log K`` (``mean exp`` decreases in ``K``).
    """
    a = x.double().abs()
    n = a.shape[-1]
    hi = a.amax(-1).clamp_min(1e-300) / math.log(2) ** (1 / alpha)  # there every term <= 2
    lo = hi * 1e-8
    for _ in range(iters):
        mid = (lo * hi).sqrt()
        log_mean = torch.logsumexp((a / mid[..., None]) ** alpha, -1) - math.log(n)
        too_small = log_mean > math.log(2)
        lo, hi = torch.where(too_small, mid, lo), torch.where(too_small, hi, mid)
    return hi


def check_theorem41(steps: np.ndarray, dW: np.ndarray, *, beta: float, lr: float, d: int,
                    D: float) -> dict[str, float | bool]:
    """Measured ``||W(t) - W(0)||`` against ``6 beta eta t D`` (Theorem 4.1).

    ``rate = max_t ||W(t) - W(0)|| / t`` is the smallest constant with ``||dW(t)|| <= rate t``
    (the quantity the linear bound controls); ``C_emp = rate / (beta eta D)`` is what the
    theorem's 6 bounds; ``slack`` is bound over measured at the last step.
    """
    steps, dW = np.asarray(steps, dtype=float), np.asarray(dW, dtype=float)
    bound = theorem41_bound(beta, lr, torch.as_tensor(steps), d, D).numpy()
    pos = steps > 0
    rate = float(np.max(dW[pos] / steps[pos]))
    return {"holds": bool(np.all(dW <= bound * (1 + 1e-6) + 1e-12)), "rate": rate,
            "C_emp": rate / (beta * lr * D), "theorem_constant": THEOREM41_CONSTANT,
            "slack": float(bound[-1] / max(dW[-1], 1e-300))}


def cosines(directions: Tensor, b: Tensor) -> np.ndarray:
    """``cos(u(t), b)`` of recorded boundary normals ``(T, d)``; 0 where ``u = 0``."""
    u = directions.double()
    cos = torch.nn.functional.cosine_similarity(u, b.double()[None], dim=-1)
    return torch.where(u.norm(dim=-1) > 0, cos, torch.zeros_like(cos)).numpy()


def check_theorem42(steps: np.ndarray, cos: np.ndarray, bound: np.ndarray) -> dict[str, float | bool]:
    """Measured ``cos(u(t), b)`` against the lower bound (steps ``t >= 1``); ``horizon`` is the
    last step at which the bound still says something (> 0)."""
    steps, cos, bound = (np.asarray(a, dtype=float) for a in (steps, cos, bound))
    pos = steps >= 1
    informative = steps[pos & (bound > 0)]
    return {"holds": bool(np.all(cos[pos] >= bound[pos] - 1e-6)),
            "horizon": float(informative.max()) if informative.size else 0.0,
            "min_gap": float(np.min(cos[pos] - bound[pos])) if pos.any() else float("nan")}


def accuracy_bound(directions: Tensor, mu_pos: Tensor, mu_neg: Tensor, res_pos: Tensor,
                   res_neg: Tensor, alpha: float, pos_share: float = 0.5) -> Tensor:
    """Theorem 4.3's accuracy guarantee for learned boundary normals ``directions`` ``(T, d)``.

    Per class, ``margin_c = s_c <u_hat, mu_c>`` and ``K_c`` = :func:`psi_norm` of the
    residuals ``res_c`` ``(n_c, d)`` projected on ``u_hat``; the bound is the share-weighted
    mean of :func:`prefdyn.theory.bounds.theorem43_bound` over the classes. Pass residuals
    independent of the evaluation sample (the law's, or the training rows' for a test set).
    Returns ``(T,)`` float64; 0 where ``u = 0``.
    """
    u = directions.double()
    norm = u.norm(dim=-1, keepdim=True)
    u_hat = torch.where(norm > 0, u / norm.clamp_min(1e-300), torch.zeros_like(u))
    out = torch.zeros(u.shape[0], dtype=torch.float64)
    for sign, mu, res, share in ((1, mu_pos, res_pos, pos_share), (-1, mu_neg, res_neg, 1 - pos_share)):
        margin = sign * (u_hat @ mu.double())
        K = psi_norm(u_hat @ res.double().T, alpha).clamp_min(1e-300)
        out += share * theorem43_bound(margin, K, alpha)
    return torch.where(norm.squeeze(-1) > 0, out, torch.zeros_like(out))


@dataclass(frozen=True, eq=False)
class A3Result:
    """Appendix A.3 on a mixture of ``K`` behaviors, all float64 ``(K,)`` unless said.

    ``logit_measured[j]``: change, after one gradient step from ``W0``, of behavior ``j``'s
    mean logit margin ``mean_(j+) l(g) - mean_(j-) l(g)``, ``l(g) = (W[yes] - W[no]) . g``;
    ``logit_predicted[j] = (eta beta / 2) <b_bar, b_j>``. ``reward_measured[j]``: behavior
    ``j``'s mean DPO reward margin ``beta s_i <u, g_i>`` after the step;
    ``reward_predicted[j] = eta beta^2 <m, m_j>``. ``b_bar = 2m`` ``(d,)``, ``bs`` ``(K, d)``.
    """

    logit_measured: Tensor
    logit_predicted: Tensor
    reward_measured: Tensor
    reward_predicted: Tensor
    b_bar: Tensor
    bs: Tensor
    weights: Tensor

    @property
    def max_abs_error(self) -> float:
        return float(torch.maximum((self.logit_measured - self.logit_predicted).abs().max(),
                                   (self.reward_measured - self.reward_predicted).abs().max()))

    @property
    def priority(self) -> Tensor:
        """``cos(b_bar, b_j)``: Eq. 5's priority level (with ``b_bar = 2m``)."""
        return torch.nn.functional.cosine_similarity(self.b_bar[None], self.bs, dim=-1)


def first_step_identity(embeddings: Tensor, prefers_yes: Tensor, groups: Tensor, *, beta: float,
                        lr: float, W0: Tensor | None = None) -> A3Result:
    """Appendix A.3: the first DPO step improves behavior ``j`` in proportion to ``<b_bar, b_j>``.

    At ``W = W0`` every margin is 0 and ``sigmoid(0) = 1/2``, so one gradient step of the mean
    DPO loss over the mixture's ``n`` rows is exactly ``dW[yes] = -dW[no] = (eta beta / 2) m``,
    ``m = (1/n) sum_i s_i g_i``, and ``u = dW[yes] - dW[no] = eta beta m``. Hence, exactly,

        change of behavior j's mean logit margin = <u, b_j>        = (eta beta / 2) <b_bar, b_j>,
        behavior j's mean reward margin           = beta <u, m_j>   = eta beta^2 <m, m_j>,

    with ``b_bar = 2m``, ``b_j = mu_hat_j+ - mu_hat_j-`` and ``m_j = (1/n_j) sum_(i in j) s_i g_i``.
    When every behavior is class-balanced, ``m_j = b_j / 2`` and ``b_bar = sum_k (n_k / n) b_k``
    (Eq. 5's mean direction with sample-share weights), so the reward margin is
    ``(eta beta^2 / 4) <b_bar, b_j>``. The step is taken with the closed-form gradient
    (:func:`prefdyn.theory.bounds.dpo_last_layer_grad`) in float64 and measured on the weights.

    Args:
        embeddings: ``(n, d)``; prefers_yes: ``(n,)`` bool; groups: ``(n,)`` long in ``[0, K)``.
        W0: ``(2, d)`` start (rows yes, no); default zeros (the result does not depend on it).
    """
    g = embeddings.double()
    K = int(groups.max()) + 1
    W0 = torch.zeros(2, g.shape[1], dtype=torch.float64) if W0 is None else W0.double()
    W1 = W0 - lr * dpo_last_layer_grad(W0, W0, g, prefers_yes, beta)
    sign = prefers_yes.double() * 2 - 1
    m = sign @ g / g.shape[0]
    logit0, logit1 = g @ (W0[0] - W0[1]), g @ (W1[0] - W1[1])
    u = (W1 - W0)[0] - (W1 - W0)[1]
    rows = [groups == k for k in range(K)]
    bs = torch.stack([g[r & prefers_yes].mean(0) - g[r & ~prefers_yes].mean(0) for r in rows])
    ms = torch.stack([sign[r] @ g[r] / r.sum() for r in rows])

    def class_gap(v: Tensor, r: Tensor) -> Tensor:
        return v[r & prefers_yes].mean() - v[r & ~prefers_yes].mean()

    return A3Result(
        logit_measured=torch.stack([class_gap(logit1, r) - class_gap(logit0, r) for r in rows]),
        logit_predicted=lr * beta / 2 * (bs @ (2 * m)),
        reward_measured=torch.stack([beta * (sign[r] * (g[r] @ u)).mean() for r in rows]),
        reward_predicted=lr * beta**2 * (ms @ m),
        b_bar=2 * m, bs=bs, weights=torch.stack([r.double().mean() for r in rows]))
