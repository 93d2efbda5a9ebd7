"""The theorems' assumptions and constants, measured on one behavior's hidden states.

Im & Li (ICML 2024), Theorems 4.1-4.3, assume two balanced classes ("|D_+| = |D_-|") with means
``mu+-`` (``||mu+ - mu-|| = d^Delta``) and alpha-subexponential noise; their hypotheses as stated
(c_v, c_n, ``beta'^2 eta c_n^2 <= 1/4``, ``Delta <= 1/2``) are in :mod:`prefdyn.theory.hypotheses`.
:func:`check_assumptions` here runs prefdyn's own heuristic checks: of them only ``balanced`` is a
hypothesis of the paper (and its tolerance ``BALANCE_TOL`` is prefdyn's; the paper asks for equal
classes). ``centered``, ``enough_samples``, ``concentrated`` and ``subexponential_tails`` and their
thresholds (``CENTER_RATIO``, ``NOISE_SHARE``, ``SPREAD_RATIO``, ``TAIL_RATIO``) are prefdyn's
heuristics for when its own lemmas (:func:`prefdyn.theory.bounds.theorem42_bound`,
:func:`prefdyn.theory.bounds.theorem43_bound`) are informative; no theorem of the paper depends on
them. :func:`check_assumptions` tests them on data,
:func:`estimate_theorem41_constants` measures how tight Theorem 4.1's constant is,
:func:`theorem42_constants` gives what :func:`prefdyn.theory.bounds.theorem42_bound`
needs. They read the class statistics of :mod:`.distinguishability`; the bounds and
tail estimates themselves are pure math in :mod:`prefdyn.theory`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.diagnostics.distinguishability import (BehaviorStats, behavior_stats,
                                                    check_embeddings, class_means)
from prefdyn.errors import PrefdynError
from prefdyn.theory.bounds import THEOREM41_CONSTANT
from prefdyn.theory.checks import estimate_alpha, tail_ratio

__all__ = ["Assumption", "AssumptionReport", "check_assumptions", "estimate_theorem41_constants",
           "theorem42_constants"]

BALANCE_TOL = 0.1
"""prefdyn's tolerance on the paper's one hypothesis here, "|D_+| = |D_-|". Balanced classes: the share preferring Yes within 0.5 +- this. With unbalanced classes the
first step ``m`` picks up ``(n+ - n-)/n`` times the common mean, which ``D`` does not see."""

CENTER_RATIO = 1.0
"""prefdyn's heuristic, not a hypothesis of the paper. Centered: the common mean ``||(mu+ + mu-)/2||`` at most this many ``D``. A larger one moves
the class means off the boundary through the origin (Theorem 4.3's margin)."""

NOISE_SHARE = 0.5
"""prefdyn's heuristic, not a hypothesis of the paper. Enough samples: ``tr(Sigma) (1/n+ + 1/n-) <= NOISE_SHARE * D^2``, i.e. sampling noise adds at
most half of ``D^2`` to ``||mu_hat+ - mu_hat-||^2`` (and to the first step ``m``)."""

SPREAD_RATIO = 0.25
"""prefdyn's heuristic, not a hypothesis of the paper. Concentrated classes: variance along ``b`` at most ``SPREAD_RATIO * D^2`` (a standard deviation
of at most ``D/2``, the class means' distance to the boundary); beyond, prefdyn's lemma 4.3 says little."""

TAIL_RATIO = 1.5
"""prefdyn's heuristic (the paper assumes alpha-subexponential noise but sets no test). Tails: the empirical tail quantile of the standardized residuals at most
this many times the one of the fitted generalized normal (a few wild outliers break it)."""


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
    """prefdyn's heuristic checks on one behavior's hidden states ``(n, d)``.

    Only ``balanced`` is a hypothesis of the paper (Sec. 4.1, "|D_+| = |D_-|", here within
    ``BALANCE_TOL``); the others are prefdyn's conditions for its own lemmas to be informative.
    Theorem 4.1's hypotheses as stated: :func:`prefdyn.theory.check_theorem41_hypotheses`. Checks:
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
    tail = tail_ratio(residuals, min(alpha_hat, 2.0))

    def check(name, value, threshold, ok, meaning, used_by):
        return Assumption(name, float(value), float(threshold), bool(ok), meaning, used_by)

    checks = [
        check("balanced", abs(share - 0.5), BALANCE_TOL, abs(share - 0.5) <= BALANCE_TOL,
              "|share preferring Yes - 1/2|", "the paper's setup (Sec. 4.1), 4.1-4.3, A.3"),
        check("centered", center, CENTER_RATIO, center <= CENTER_RATIO, "||(mu+ + mu-)/2|| / D",
              "prefdyn's lemma 4.3 (heuristic)"),
        check("enough_samples", noise, NOISE_SHARE, noise <= NOISE_SHARE,
              "tr(Sigma)(1/n+ + 1/n-) / D^2", "prefdyn's lemma 4.2 (heuristic)"),
        check("concentrated", stats.along_ratio, SPREAD_RATIO, stats.along_ratio <= SPREAD_RATIO,
              "variance along b / D^2", "prefdyn's lemma 4.3 (heuristic)"),
        check("subexponential_tails", tail, TAIL_RATIO, tail <= TAIL_RATIO,
              f"tail quantile / fitted GN(alpha_hat={alpha_hat:.2f})", "prefdyn's lemma 4.3 (heuristic)"),
    ]
    return AssumptionReport(checks, alpha_hat, stats)


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


def estimate_theorem41_constants(
    embeddings: Tensor, prefers_yes: Tensor, beta: float
) -> dict[str, float]:
    """How tight Theorem 4.1's constant 6 is on these hidden states (prefdyn's diagnostic).

    At ``W = W0`` every margin is 0 and ``sigmoid(0) = 1/2``, so the gradient of
    the mean DPO loss on a (Yes, No) unembedding is
    ``-(beta / 2) (e_yes - e_no) m^T`` with ``m = (n+ mu+ - n- mu-) / n`` and

        ||grad L(W0)||_F = (beta / sqrt 2) ||m||.

    One gradient step moves ``W_U`` by ``eta ||grad||``, so
    ``C_hat = ||grad||_F / (beta D)`` is the observed per-step rate in the
    theorem's units: the theorem's 6 is an upper bound on it. With balanced
    classes ``m = b / 2`` and ``C_hat = sqrt(2) / 4 ~ 0.35``.

    Caveat: real last hidden states share a large common mean direction (see
    ``BehaviorStats.mean_norm``). With unbalanced classes ``m`` contains
    ``(n+ - n-) / n`` times that mean, which ``D`` does not see, so ``C_hat``
    can exceed 6; the paper's setup assumes balanced classes ("|D_+| = |D_-|",
    Sec. 4.1), so the theorem does not cover that case. A common mean with
    balanced classes does not break the theorem: it enters only through ``c_n``
    (the step-size condition, :mod:`prefdyn.theory.hypotheses`).

    Args:
        embeddings: ``(n, d)`` last hidden states.
        prefers_yes: ``(n,)`` bool, True where Yes is preferred.
        beta: DPO's ``beta``.

    Returns:
        ``grad_norm``, ``C_hat``, ``theorem_constant`` (6), ``d``, ``D``,
        ``Delta`` and ``beta_prime = beta sqrt(d)``, all floats.

    Raises:
        DataError: as :func:`prefdyn.diagnostics.behavior_stats`.
        PrefdynError: ``beta <= 0``.
    """
    if not beta > 0:
        raise PrefdynError(f"beta must be positive, got {beta}")
    check_embeddings(embeddings, prefers_yes)
    n, d = embeddings.shape
    mu_pos, mu_neg = class_means(embeddings, prefers_yes)
    D = float((mu_pos - mu_neg).norm())
    n_pos = int(prefers_yes.sum())
    signed_mean = (n_pos * mu_pos - (n - n_pos) * mu_neg) / n
    grad_norm = beta / math.sqrt(2) * float(signed_mean.norm())
    return {
        "grad_norm": grad_norm,
        "C_hat": grad_norm / (beta * D) if D > 0 else math.inf,
        "theorem_constant": THEOREM41_CONSTANT,
        "d": float(d),
        "D": D,
        "Delta": math.log(D) / math.log(d) if D > 0 else -math.inf,
        "beta_prime": beta * math.sqrt(d),
    }
