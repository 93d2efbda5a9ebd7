"""Theorem 4.2 of Im & Li (ICML 2024), in the paper's exact form.

Statement (quoted from Sec. 4.3): "For i in {+, -}, suppose ||Sigma_i|| <= c_v d^{1/2 - 2v} for
4 log 2 / log d <= v <= 1/2 - Delta and max_{i in {+,-}} (||mu_i|| + Tr(Sigma_i^{1/2})) <= c_n sqrt(d)
with c_n = c'_n d^{Delta - 1/2}. Let beta = beta' d^{-1/2} and eta is a constant such that
beta'^2 eta c_n^2 <= 1/4. We use phi to indicate the cosine similarity between our initial boundary
and mu_+ - mu_-. Then, with probability at least 1 - 2n exp(-c' d^{alpha/4})
- 4 exp(-gamma d^{alpha Delta} / (4 c_v)) for t <= d^{1/2 - Delta - v} / (72 beta'^2 eta c_n^2), the
cosine similarity of the decision boundary after t steps of DPO to mu_+ - mu_- is at least

    phi + (1 - 13 d^{-v} - phi) beta' eta t d^{Delta - 1/2} / (8 ||W_B|| + 1 / (24 beta' c_n^2)),

where Delta <= 1/2 - 4 log 2 / log d, and W_B = W_U[y_+] - W_U[y_-] is the initial boundary of our
classification problem."

"The decision boundary after t steps" is ``W_B + 2 Delta W_U(t) = W_U(t)[y_+] - W_U(t)[y_-]``
(App. A.4: the rows of Yes and No move by ``+-Delta W_U(t)``), see :func:`boundary_cosine`.

Readings (the text is inconsistent; ../shared/papers/README.md):

* ``c_n^2`` or ``c'_n``. Theorem 4.2 prints ``c_n^2`` in the horizon and in ``1/(24 beta' c_n^2)``;
  the last line of App. A.4, App. A.5 and Theorem 4.3 use ``c'_n`` in both places ("1/(24 beta'
  c'_n)", "t = d^{1/2-Delta-v} / (72 beta'^2 eta c'_n)"). Each is self-consistent: the
  denominator's ``1/(24 beta' C)`` bounds ``||2 Delta W_U(t)||`` at the horizon ``d^{1/2-Delta-v} /
  (72 beta'^2 eta C)`` (``d^{-v} / (576 beta' C) <= 1/(24 beta' C)``), and Theorem 4.3's margin is
  derived from ``C = c'_n``. ``reading="theorem"`` (default: the statement the paper headlines)
  uses ``C = c_n^2``; ``reading="appendix"`` uses ``C = c'_n = c_n d^{1/2 - Delta}``. They give very
  different horizons, so both are exposed.
* ``Tr(Sigma^{1/2})`` here vs ``Tr(Sigma)^{1/2}`` in Theorem 4.1: see
  :mod:`prefdyn.theory.hypotheses` (default ``Tr(Sigma)^{1/2}``, what the proof uses).
* ``c_v`` is "some constant"; the variance condition ties it to ``v``. On data it is a choice
  (default 1, the paper's "small constant factors"); :meth:`GuaranteeSetting.v_max_variance` gives
  the largest ``v`` the measured ``||Sigma_i||`` allow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.theory.hypotheses import STEP_LIMIT, TraceReading, class_moments

__all__ = ["GuaranteeSetting", "Reading", "boundary_cosine", "guarantee_setting", "theorem42_conditions",
           "theorem42_horizon", "theorem42_lower_bound", "v_range"]

Reading = Literal["theorem", "appendix"]


def v_range(d: int, Delta: float) -> tuple[float, float]:
    """``(4 log 2 / log d, 1/2 - Delta)``: Theorem 4.2's range of ``v``; empty when
    ``lo > hi``, i.e. unless "Delta <= 1/2 - 4 log 2 / log d"."""
    if d < 2:
        raise PrefdynError(f"need d >= 2, got {d}")
    return 4 * math.log(2) / math.log(d), 0.5 - Delta


@dataclass(frozen=True)
class GuaranteeSetting:
    """The quantities Theorems 4.2 and 4.3 are stated in.

    Attributes:
        d: width; Delta: ``log ||mu_+ - mu_-|| / log d``; v: the theorem's free exponent.
        beta_prime: ``beta sqrt(d)``; eta: the step size.
        c_n: ``max_i (||mu_i|| + spread_i) / sqrt(d)`` (smallest such constant).
        phi: cosine of ``W_B`` with ``mu_+ - mu_-``; W_B_norm: ``||W_B||``.
        sigma_op: ``max_i ||Sigma_i||``; c_v: the constant it is held to.
    """

    d: int
    Delta: float
    v: float
    beta_prime: float
    eta: float
    c_n: float
    phi: float
    W_B_norm: float
    sigma_op: float = 0.0
    c_v: float = 1.0

    @property
    def c_prime_n(self) -> float:
        """``c'_n`` from "c_n = c'_n d^{Delta - 1/2}"."""
        return self.c_n * self.d ** (0.5 - self.Delta)

    @property
    def step_product(self) -> float:
        return self.beta_prime**2 * self.eta * self.c_n**2

    @property
    def d_minus_v(self) -> float:
        return self.d ** (-self.v)

    @property
    def epsilon(self) -> float:
        """``1 - 13 d^{-v} - phi`` (App. A.5's epsilon)."""
        return 1 - 13 * self.d_minus_v - self.phi

    def v_max_variance(self) -> float:
        """Largest ``v`` with ``sigma_op <= c_v d^{1/2 - 2v}`` (``inf`` when ``sigma_op = 0``)."""
        if self.sigma_op <= 0:
            return math.inf
        return (0.5 - math.log(self.sigma_op / self.c_v) / math.log(self.d)) / 2

    def constant(self, reading: Reading) -> float:
        """``C = c_n^2`` (``"theorem"``) or ``c'_n`` (``"appendix"``), see the module docstring."""
        if reading == "theorem":
            return self.c_n**2
        if reading == "appendix":
            return self.c_prime_n
        raise PrefdynError(f"reading must be 'theorem' or 'appendix', got {reading!r}")


def theorem42_conditions(s: GuaranteeSetting) -> dict[str, bool]:
    """Theorem 4.2's conditions, each by name (all must hold):

    ``v_range``: "4 log 2 / log d <= v <= 1/2 - Delta"; ``Delta``: "Delta <= 1/2 - 4 log 2 / log d";
    ``variance``: "||Sigma_i|| <= c_v d^{1/2-2v}"; ``step_size``: "beta'^2 eta c_n^2 <= 1/4".
    The ``c_n`` hypothesis holds by construction (``c_n`` is the smallest constant).
    """
    lo, hi = v_range(s.d, s.Delta)
    tol = 1e-12
    return {"v_range": lo - tol <= s.v <= hi + tol,
            "Delta": s.Delta <= 0.5 - 4 * math.log(2) / math.log(s.d) + tol,
            "variance": s.sigma_op <= s.c_v * s.d ** (0.5 - 2 * s.v) * (1 + tol),
            "step_size": s.step_product <= STEP_LIMIT * (1 + tol)}


def theorem42_horizon(s: GuaranteeSetting, reading: Reading = "theorem") -> float:
    """``d^{1/2 - Delta - v} / (72 beta'^2 eta C)``: the last step the bound covers (may be < 1)."""
    return s.d ** (0.5 - s.Delta - s.v) / (72 * s.beta_prime**2 * s.eta * s.constant(reading))


def theorem42_lower_bound(steps: int | Tensor, s: GuaranteeSetting, reading: Reading = "theorem") -> Tensor:
    """Theorem 4.2's lower bound on the decision boundary's cosine with ``mu_+ - mu_-`` at ``steps``:

        phi + (1 - 13 d^{-v} - phi) beta' eta t d^{Delta - 1/2} / (8 ||W_B|| + 1 / (24 beta' C)),

    ``C`` by ``reading``. NaN beyond :func:`theorem42_horizon` (the theorem says nothing there).
    Whether the conditions hold is :func:`theorem42_conditions`'s business, not this formula's.
    """
    t = torch.as_tensor(steps, dtype=torch.float64)
    rate = s.epsilon * s.beta_prime * s.eta * s.d ** (s.Delta - 0.5)
    bound = s.phi + rate * t / (8 * s.W_B_norm + 1 / (24 * s.beta_prime * s.constant(reading)))
    inside = (t >= 0) & (t <= theorem42_horizon(s, reading) * (1 + 1e-12))
    return torch.where(inside, bound, torch.full_like(bound, math.nan))


def boundary_cosine(W_yes: Tensor, W_no: Tensor, b: Tensor) -> Tensor:
    """Cosine of the decision boundary ``W_U[y_+] - W_U[y_-]`` with ``b = mu_+ - mu_-``.

    ``W_yes``, ``W_no``: ``(..., d)`` rows (``(T, d)`` for a recorded run); returns ``(...)`` float64.
    At ``t = 0`` this is the theorem's ``phi``.
    """
    boundary = (W_yes - W_no).detach().to(torch.float64)
    return torch.nn.functional.cosine_similarity(boundary, b.to(torch.float64).expand_as(boundary), dim=-1)


def guarantee_setting(embeddings: Tensor, prefers_yes: Tensor, W_yes: Tensor, W_no: Tensor, *, beta: float,
                      lr: float, v: float | None = None, c_v: float = 1.0,
                      trace_reading: TraceReading = "sqrt_of_trace") -> GuaranteeSetting:
    """:class:`GuaranteeSetting` measured on one behavior's hidden states ``(n, d)`` and the initial
    answer rows ``W_yes``, ``W_no`` ``(d,)`` (``W_B = W_yes - W_no``).

    ``v`` defaults to the largest admissible one, ``min(1/2 - Delta, v_max_variance)`` (the bound
    grows with ``v``; the horizon shrinks), or the range's lower end if that is empty.
    """
    if not (beta > 0 and lr > 0 and c_v > 0):
        raise PrefdynError(f"need beta, lr, c_v > 0; got {beta}, {lr}, {c_v}")
    mom = class_moments(embeddings, prefers_yes)
    W_B = (W_yes - W_no).detach().to(torch.float64)
    s = GuaranteeSetting(d=mom.d, Delta=mom.Delta, v=0.0, beta_prime=beta * math.sqrt(mom.d), eta=lr,
                         c_n=mom.c_n(trace_reading), phi=float(boundary_cosine(W_yes, W_no, mom.b)),
                         W_B_norm=float(W_B.norm()), sigma_op=float(mom.sigma_op.max()), c_v=c_v)
    if v is None:
        lo, hi = v_range(mom.d, mom.Delta)
        v = max(lo, min(hi, s.v_max_variance()))
    return GuaranteeSetting(**{**s.__dict__, "v": v})
