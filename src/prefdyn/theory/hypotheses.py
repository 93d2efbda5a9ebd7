"""Theorem 4.1's hypotheses as the paper states them (Im & Li, ICML 2024, Sec. 4.1-4.2).

Theorem 4.1 (quoted): "When max_{i in {+,-}} ||Sigma_i|| <= c_v sqrt(d) and that
max_{i in {+,-}} (||mu_i|| + Tr(Sigma_i)^{1/2}) <= c_n sqrt(d), let beta = beta' d^{-1/2} and
eta be a constant such that beta'^2 eta c_n^2 <= 1/4. Then, with probability at least
1 - 2n exp(-c' d^{alpha/4}) - 4 exp(-gamma d^{alpha Delta} / (4 c_v)), after t DPO steps with
gradient descent, ||W_U(t) - W_U(0)|| <= 6 beta' eta t d^{Delta - 1/2}, where c_v, c_n, beta',
gamma > 0 are some constants, gamma = n / sqrt(d), and Delta <= 1/2."

The setup (Sec. 4.1) adds "|D_+| = |D_-|" (balanced classes) and "||mu_+ - mu_-|| = d^Delta".

``c_v`` and ``c_n`` are "some constants": on data, the smallest constants that meet the first two
hypotheses are ``c_v = max_i ||Sigma_i|| / sqrt(d)`` and
``c_n = max_i (||mu_i|| + Tr(Sigma_i)^{1/2}) / sqrt(d)``, so those two always hold with the
estimated constants; what can fail is the step-size condition ``beta'^2 eta c_n^2 <= 1/4``
(``c_n`` carries the hidden states' common mean, which real models have in plenty), ``Delta <= 1/2``
and the balance of the setup. :func:`paper_step_size` gives the ``eta`` at which
``beta'^2 eta c_n^2 = 1/4``, the edge of the paper's regime.

``||.||`` of a matrix is the operator norm (Sec. 4.1: "We will use the notation ||.|| to denote the
operator norm."). Covariances are the per-class sample covariances (``n_c - 1`` denominator).

Reading chosen for ``Tr``: Theorem 4.1 prints ``Tr(Sigma_i)^{1/2}``, Theorem 4.2
``Tr(Sigma_i^{1/2})`` (listed in ../shared/papers/README.md). The proofs use this term only to
bound a sample's norm, "||g(x_i)|| <= 2 c_n sqrt(d)" (Eq. 15-16), and
``E||g - mu|| <= (E||g - mu||^2)^{1/2} = Tr(Sigma)^{1/2}``, so ``"sqrt_of_trace"`` is the default;
``"trace_of_sqrt"`` (``sum_k sqrt(lambda_k) >= Tr(Sigma)^{1/2}``, a larger ``c_n``) is Theorem
4.2's print.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from prefdyn.errors import DataError, PrefdynError

__all__ = ["STEP_LIMIT", "BoundVerdict", "ClassMoments", "Theorem41Check", "Theorem41Hypotheses", "TraceReading",
           "bound_verdict", "check_theorem41_hypotheses", "class_moments", "paper_step_size",
           "theorem41_verdict"]

TraceReading = Literal["sqrt_of_trace", "trace_of_sqrt"]

STEP_LIMIT = 0.25
"""Theorem 4.1-4.2: "eta is a constant such that beta'^2 eta c_n^2 <= 1/4"."""


@dataclass(frozen=True, eq=False)
class ClassMoments:
    """Per-class moments of one behavior's hidden states, float64; index 0 is ``+`` (Yes
    preferred), 1 is ``-``.

    Attributes:
        n_pos, n_neg, d: class sizes and width.
        mu: ``(2, d)`` class means ``mu_+, mu_-``.
        sigma_op: ``(2,)`` operator norms ``||Sigma_i||``.
        trace: ``(2,)`` ``Tr(Sigma_i)``.
        trace_sqrt: ``(2,)`` ``Tr(Sigma_i^{1/2}) = sum_k sqrt(lambda_k)``.
    """

    n_pos: int
    n_neg: int
    d: int
    mu: Tensor
    sigma_op: Tensor
    trace: Tensor
    trace_sqrt: Tensor

    @property
    def b(self) -> Tensor:
        """``mu_+ - mu_-`` ``(d,)``."""
        return self.mu[0] - self.mu[1]

    @property
    def D(self) -> float:
        """``||mu_+ - mu_-|| = d^Delta`` (Sec. 4.1)."""
        return float(self.b.norm())

    @property
    def Delta(self) -> float:
        """``log D / log d``; ``-inf`` when ``D = 0``."""
        return math.log(self.D) / math.log(self.d) if self.D > 0 else -math.inf

    def norm_term(self, trace_reading: TraceReading = "sqrt_of_trace") -> Tensor:
        """``(2,)`` ``||mu_i|| + Tr(Sigma_i)^{1/2}`` (or ``+ Tr(Sigma_i^{1/2})``)."""
        spread = self.trace.sqrt() if trace_reading == "sqrt_of_trace" else self.trace_sqrt
        return self.mu.norm(dim=1) + spread

    def c_v(self) -> float:
        """Smallest ``c_v`` with ``max_i ||Sigma_i|| <= c_v sqrt(d)``."""
        return float(self.sigma_op.max()) / math.sqrt(self.d)

    def c_n(self, trace_reading: TraceReading = "sqrt_of_trace") -> float:
        """Smallest ``c_n`` with ``max_i (||mu_i|| + Tr(Sigma_i)^{1/2}) <= c_n sqrt(d)``."""
        return float(self.norm_term(trace_reading).max()) / math.sqrt(self.d)


def _eigenvalues(centered: Tensor) -> Tensor:
    """Eigenvalues of ``X^T X / (n - 1)`` from the smaller of the two Gram matrices."""
    n, d = centered.shape
    gram = centered @ centered.T if n <= d else centered.T @ centered
    return torch.linalg.eigvalsh(gram / (n - 1)).clamp_min(0.0)


def class_moments(embeddings: Tensor, prefers_yes: Tensor) -> ClassMoments:
    """Class means and covariance spectra of ``embeddings (n, d)`` split by ``prefers_yes (n,)``.

    Raises:
        DataError: bad shapes, non-finite values, or a class with fewer than two samples.
    """
    if embeddings.ndim != 2 or prefers_yes.shape != embeddings.shape[:1] or prefers_yes.dtype != torch.bool:
        raise DataError(f"need embeddings (n, d) and bool prefers_yes (n,), got {tuple(embeddings.shape)} "
                        f"and {tuple(prefers_yes.shape)} {prefers_yes.dtype}")
    if embeddings.shape[1] < 2 or not torch.isfinite(embeddings).all():
        raise DataError("embeddings need width d >= 2 and finite values")
    g = embeddings.to(torch.float64)
    mus, ops, traces, trace_sqrts = [], [], [], []
    for rows in (prefers_yes, ~prefers_yes):
        x = g[rows]
        if x.shape[0] < 2:
            raise DataError(f"each class needs at least 2 samples, got {x.shape[0]}")
        mu = x.mean(0)
        lam = _eigenvalues(x - mu)
        mus.append(mu)
        ops.append(lam.max())
        traces.append(lam.sum())
        trace_sqrts.append(lam.sqrt().sum())
    n_pos = int(prefers_yes.sum())
    return ClassMoments(n_pos=n_pos, n_neg=g.shape[0] - n_pos, d=g.shape[1], mu=torch.stack(mus),
                        sigma_op=torch.stack(ops), trace=torch.stack(traces), trace_sqrt=torch.stack(trace_sqrts))


def paper_step_size(beta: float, d: int, c_n: float, product: float = STEP_LIMIT) -> float:
    """The ``eta`` with ``beta'^2 eta c_n^2 = product`` (default 1/4, the edge of Theorem 4.1's
    "beta'^2 eta c_n^2 <= 1/4"), where ``beta' = beta sqrt(d)``: ``eta = product / (beta^2 d c_n^2)``.
    """
    if not (beta > 0 and c_n > 0 and product > 0 and d >= 1):
        raise PrefdynError(f"need beta, c_n, product > 0 and d >= 1; got {beta}, {c_n}, {product}, {d}")
    return product / (beta**2 * d * c_n**2)


@dataclass(frozen=True)
class Theorem41Hypotheses:
    """Theorem 4.1's hypotheses measured on one behavior, for DPO's ``beta`` and step ``lr``.

    ``c_v`` and ``c_n`` are the smallest constants meeting the moment hypotheses (so those hold
    by construction); :attr:`met` is what remains: the step-size condition, ``Delta <= 1/2`` and
    the setup's balanced classes.
    """

    d: int
    n_pos: int
    n_neg: int
    D: float
    Delta: float
    c_v: float
    c_n: float
    trace_reading: str
    beta: float
    lr: float

    @property
    def beta_prime(self) -> float:
        """``beta' = beta sqrt(d)`` (the theorem's "beta = beta' d^{-1/2}")."""
        return self.beta * math.sqrt(self.d)

    @property
    def step_product(self) -> float:
        """``beta'^2 eta c_n^2``, held to ``<= 1/4``."""
        return self.beta_prime**2 * self.lr * self.c_n**2

    @property
    def step_ok(self) -> bool:
        return self.step_product <= STEP_LIMIT

    @property
    def delta_ok(self) -> bool:
        """``Delta <= 1/2`` (with a relative tolerance for ``D = sqrt(d)`` in floating point)."""
        return self.Delta <= 0.5 + 1e-12

    @property
    def balanced(self) -> bool:
        """Sec. 4.1's "|D_+| = |D_-|"."""
        return self.n_pos == self.n_neg

    @property
    def met(self) -> bool:
        return self.step_ok and self.delta_ok and self.balanced

    @property
    def paper_lr(self) -> float:
        """:func:`paper_step_size` for this ``beta``, ``d`` and ``c_n``."""
        return paper_step_size(self.beta, self.d, self.c_n)

    def failed(self) -> list[str]:
        """Names of the hypotheses that fail, in the theorem's order."""
        checks = {"step_size": self.step_ok, "Delta": self.delta_ok, "balanced": self.balanced}
        return [name for name, ok in checks.items() if not ok]

    def failure_term(self, alpha: float) -> float:
        """``4 exp(-gamma d^{alpha Delta} / (4 c_v))`` with ``gamma = n / sqrt(d)``: the part of the
        theorem's failure probability that the data fixes, for a tail shape ``alpha``. The other
        part, ``2n exp(-c' d^{alpha/4})``, has an unstated constant ``c'``."""
        if not 0 < alpha <= 2:
            raise PrefdynError(f"alpha must be in (0, 2], got {alpha}")
        gamma = (self.n_pos + self.n_neg) / math.sqrt(self.d)
        return 4 * math.exp(-gamma * self.d ** (alpha * self.Delta) / (4 * self.c_v))

    def to_dict(self) -> dict[str, float | int | bool | str | list[str]]:
        return {"d": self.d, "n_pos": self.n_pos, "n_neg": self.n_neg, "D": self.D, "Delta": self.Delta,
                "c_v": self.c_v, "c_n": self.c_n, "trace_reading": self.trace_reading, "beta": self.beta,
                "beta_prime": self.beta_prime, "lr": self.lr, "step_product": self.step_product,
                "step_ok": self.step_ok, "delta_ok": self.delta_ok, "balanced": self.balanced,
                "met": self.met, "paper_lr": self.paper_lr, "failed": self.failed()}


def check_theorem41_hypotheses(embeddings: Tensor, prefers_yes: Tensor, *, beta: float, lr: float,
                               trace_reading: TraceReading = "sqrt_of_trace") -> Theorem41Hypotheses:
    """Measure Theorem 4.1's hypotheses on ``embeddings (n, d)`` for DPO's ``beta`` and step ``lr``."""
    if not (beta > 0 and lr > 0):
        raise PrefdynError(f"need beta > 0 and lr > 0, got {beta}, {lr}")
    if trace_reading not in ("sqrt_of_trace", "trace_of_sqrt"):
        raise PrefdynError(f"trace_reading must be 'sqrt_of_trace' or 'trace_of_sqrt', got {trace_reading!r}")
    mom = class_moments(embeddings, prefers_yes)
    return Theorem41Hypotheses(d=mom.d, n_pos=mom.n_pos, n_neg=mom.n_neg, D=mom.D, Delta=mom.Delta,
                               c_v=mom.c_v(), c_n=mom.c_n(trace_reading), trace_reading=trace_reading,
                               beta=beta, lr=lr)


class BoundVerdict(str, enum.Enum):
    """How a measured curve relates to a theorem's bound and to its hypotheses.

    Only ``HOLDS_HYPOTHESES_MET`` and ``FAILS_HYPOTHESES_MET`` test the theorem; a bound that holds
    outside the hypotheses says nothing about the theorem. A failure with the hypotheses met is
    either the theorem's low-probability event or a counterexample.
    """

    HOLDS_HYPOTHESES_MET = "holds, hypotheses met"
    HOLDS_OUTSIDE_HYPOTHESES = "holds outside the hypotheses"
    FAILS_HYPOTHESES_MET = "fails, hypotheses met"
    FAILS_OUTSIDE_HYPOTHESES = "fails outside the hypotheses"

    @property
    def tests_the_theorem(self) -> bool:
        return self in (BoundVerdict.HOLDS_HYPOTHESES_MET, BoundVerdict.FAILS_HYPOTHESES_MET)


def bound_verdict(holds: bool, hypotheses_met: bool) -> BoundVerdict:
    """The :class:`BoundVerdict` of a bound that ``holds`` (or not) with its hypotheses met (or not)."""
    if hypotheses_met:
        return BoundVerdict.HOLDS_HYPOTHESES_MET if holds else BoundVerdict.FAILS_HYPOTHESES_MET
    return BoundVerdict.HOLDS_OUTSIDE_HYPOTHESES if holds else BoundVerdict.FAILS_OUTSIDE_HYPOTHESES


@dataclass(frozen=True, eq=False)
class Theorem41Check:
    """Measured ``||W_U(t) - W_U(0)||`` against ``6 beta' eta t d^{Delta - 1/2}``, float64 ``(T,)``."""

    hypotheses: Theorem41Hypotheses
    steps: Tensor
    measured: Tensor
    bound: Tensor
    holds: bool
    verdict: BoundVerdict


def theorem41_verdict(steps: Tensor, measured: Tensor, hypotheses: Theorem41Hypotheses) -> Theorem41Check:
    """Compare ``measured`` ``||W_U(t) - W_U(0)||`` (operator norm, the theorem's; for the two
    answer rows moving by ``+-dW`` it is ``sqrt(2) ||dW||``) at ``steps`` with Theorem 4.1's bound.
    """
    t = torch.as_tensor(steps, dtype=torch.float64)
    measured = torch.as_tensor(measured, dtype=torch.float64)
    if t.shape != measured.shape:
        raise PrefdynError(f"steps {tuple(t.shape)} and measured {tuple(measured.shape)} differ in shape")
    h = hypotheses
    bound = 6 * h.beta_prime * h.lr * t * h.d ** (h.Delta - 0.5) if h.D > 0 else torch.zeros_like(t)
    holds = bool((measured <= bound * (1 + 1e-9) + 1e-12).all())
    return Theorem41Check(hypotheses=h, steps=t, measured=measured, bound=bound, holds=holds,
                          verdict=bound_verdict(holds, h.met))
