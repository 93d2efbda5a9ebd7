"""Theorems 4.1-4.3 and Appendix A.3 of Im & Li (ICML 2024), checked on data.

For one behavior's hidden states this module checks the theorems' assumptions
(:func:`check_assumptions`), estimates the constants the bounds need
(:func:`theorem42_constants`, :func:`psi_norm`, :func:`estimate_alpha`), compares
measured training curves with the bounds (:func:`check_theorem41`,
:func:`check_theorem42`, :func:`accuracy_bound`), and verifies the exact
first-step identity of Appendix A.3 (:func:`first_step_identity`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, special
from torch import Tensor

from prefdyn.diagnostics.distinguishability import BehaviorStats, behavior_stats
from prefdyn.theory.bounds import THEOREM41_CONSTANT, dpo_last_layer_grad, theorem41_bound, theorem43_bound
# Through prefdyn.training: importing prefdyn.tracking first would enter the
# tracking <-> training import cycle from the side that fails.
from prefdyn.training.loop import Callback

__all__ = ["A3Result", "Assumption", "AssumptionReport", "BoundaryRecorder", "accuracy_bound",
           "check_assumptions", "cosines", "check_theorem41", "check_theorem42", "estimate_alpha",
           "first_step_identity", "gn_moment_ratio", "psi_norm", "theorem42_constants"]

BALANCE_TOL = 0.1
"""Balanced classes: the share preferring Yes within 0.5 +- this. With unbalanced classes the
first step ``m`` picks up ``(n+ - n-)/n`` times the common mean, which ``D`` does not see."""

CENTER_RATIO = 1.0
"""Centered: the common mean ``||(mu+ + mu-)/2||`` at most this many ``D``. A larger one moves
the class means off the boundary through the origin (Theorem 4.3's margin)."""

NOISE_SHARE = 0.5
"""Enough samples: ``tr(Sigma) (1/n+ + 1/n-) <= NOISE_SHARE * D^2``, i.e. sampling noise adds at
most half of ``D^2`` to ``||mu_hat+ - mu_hat-||^2`` (and to the first step ``m``)."""

SPREAD_RATIO = 0.25
"""Concentrated classes: variance along ``b`` at most ``SPREAD_RATIO * D^2`` (a standard deviation
of at most ``D/2``, the class means' distance to the boundary); beyond, Theorem 4.3 says little."""

TAIL_RATIO = 1.5
"""alpha-subexponential tails: the empirical tail quantile of the standardized residuals at most
this many times the one of the fitted generalized normal (a few wild outliers break it)."""


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


def _tail_ratio(residuals: Tensor, alpha: float) -> float:
    """Empirical over fitted-generalized-normal quantile of ``|z|`` far in the tail."""
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


@dataclass(frozen=True)
class Assumption:
    """One assumption: its measured ``value``, the ``threshold`` it is held to, whether it holds,
    what it means, and which results rely on it."""

    name: str
    value: float
    threshold: float
    holds: bool
    meaning: str
    used_by: str


@dataclass(frozen=True, eq=False)
class AssumptionReport:
    checks: list[Assumption]
    alpha_hat: float
    stats: BehaviorStats

    @property
    def all_hold(self) -> bool:
        return all(c.holds for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.holds]

    def to_dict(self) -> dict:
        return {"all_hold": self.all_hold, "alpha_hat": self.alpha_hat,
                "checks": {c.name: {"value": c.value, "threshold": c.threshold, "holds": c.holds}
                           for c in self.checks}}


def check_assumptions(embeddings: Tensor, prefers_yes: Tensor) -> AssumptionReport:
    """Do one behavior's hidden states ``(n, d)`` satisfy Theorems 4.1-4.3's assumptions?

    The theorems assume two classes with means ``mu+-`` (``||mu+ - mu-|| = d^Delta``) and
    alpha-subexponential, concentrated noise, in the centered, balanced setting. Checks:
    ``balanced`` (share preferring Yes), ``centered`` (``||mu0|| / D``), ``enough_samples``
    (``tr(Sigma)(1/n+ + 1/n-) / D^2``), ``concentrated`` (variance along ``b`` over ``D^2``)
    and ``subexponential_tails`` (fitted-tail quantile ratio, with ``alpha_hat`` from
    :func:`estimate_alpha`). Thresholds are the module constants.
    """
    stats = behavior_stats(embeddings, prefers_yes)
    g = embeddings.double()
    mu_pos, mu_neg = g[prefers_yes].mean(0), g[~prefers_yes].mean(0)
    residuals = torch.where(prefers_yes[:, None], g - mu_pos, g - mu_neg)
    alpha_hat = estimate_alpha(residuals)
    share = stats.n_pos / stats.n
    noise = stats.trace_ratio * (1 / stats.n_pos + 1 / stats.n_neg)
    center = float(((mu_pos + mu_neg) / 2).norm()) / stats.D if stats.D > 0 else math.inf
    tail = _tail_ratio(residuals, min(alpha_hat, 2.0))

    def check(name, value, threshold, ok, meaning, used_by):
        return Assumption(name, float(value), float(threshold), bool(ok), meaning, used_by)

    checks = [
        check("balanced", abs(share - 0.5), BALANCE_TOL, abs(share - 0.5) <= BALANCE_TOL,
              "|share preferring Yes - 1/2|", "4.1, A.3"),
        check("centered", center, CENTER_RATIO, center <= CENTER_RATIO, "||(mu+ + mu-)/2|| / D",
              "4.1 (unbalanced), 4.3"),
        check("enough_samples", noise, NOISE_SHARE, noise <= NOISE_SHARE,
              "tr(Sigma)(1/n+ + 1/n-) / D^2", "4.1, 4.2"),
        check("concentrated", stats.along_ratio, SPREAD_RATIO, stats.along_ratio <= SPREAD_RATIO,
              "variance along b / D^2", "4.3"),
        check("subexponential_tails", tail, TAIL_RATIO, tail <= TAIL_RATIO,
              f"tail quantile / fitted GN(alpha_hat={alpha_hat:.2f})", "4.3"),
    ]
    return AssumptionReport(checks, alpha_hat, stats)


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


def theorem42_constants(embeddings: Tensor, prefers_yes: Tensor, *, beta: float, lr: float,
                        b: Tensor | None = None, stats: BehaviorStats | None = None) -> dict[str, float]:
    """What :func:`prefdyn.theory.bounds.theorem42_bound` needs, from one behavior's data.

    ``m = (1/n) sum_i s_i g_i`` (the first step's direction), ``cos_m_b`` against ``b``
    (default ``mu_hat+ - mu_hat-``, the tracker's direction; with balanced classes
    ``m = (mu_hat+ - mu_hat-) / 2`` exactly, so pass the law's ``b`` where it is known),
    ``lambda = lambda_max(G^T G / n)`` and ``kappa = eta beta^2 lambda / 2``;
    ``predicted_cos = 1 / sqrt(1 + 4 tr(Sigma) / (n D^2))`` is the centered, balanced
    population value of ``cos(m, b)`` (``d^Delta`` enters through ``D``).
    """
    g = embeddings.double()
    n = g.shape[0]
    sign = prefers_yes.double() * 2 - 1
    m = sign @ g / n
    if b is None:
        b = g[prefers_yes].mean(0) - g[~prefers_yes].mean(0)
    b = b.double()
    gram = g @ g.T if n <= g.shape[1] else g.T @ g
    lam = float(torch.linalg.eigvalsh(gram)[-1]) / n
    stats = stats or behavior_stats(embeddings, prefers_yes)
    trace_sigma = stats.trace_ratio * stats.D**2
    return {"cos_m_b": float(torch.nn.functional.cosine_similarity(m, b, dim=0)),
            "m_norm": float(m.norm()), "lambda": lam, "kappa": lr * beta**2 * lam / 2,
            "predicted_cos": 1 / math.sqrt(1 + 4 * trace_sigma / (n * stats.D**2))}


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


class BoundaryRecorder(Callback):
    """Keeps the boundary normal ``u(t) = dW[yes] - dW[no]`` ``(B, d)`` at step 0, every
    ``every`` steps and the last (Theorems 4.2-4.3 need the direction, not only a cosine)."""

    def __init__(self, every: int):
        self.every = every
        self.steps: list[int] = []
        self.directions: list[Tensor] = []

    def _keep(self, step: int, policy) -> None:
        self.steps.append(step)
        self.directions.append(policy.boundary_delta().double().clone())

    def on_train_start(self, state, policy) -> None:
        self._keep(state.step, policy)

    def on_step_end(self, state, policy, out) -> None:
        if state.step % self.every == 0 or state.step == state.max_steps:
            self._keep(state.step, policy)

    def stacked(self) -> tuple[np.ndarray, Tensor]:
        """(steps (T,), directions (B, T, d))."""
        return np.array(self.steps), torch.stack(self.directions, dim=1)


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
