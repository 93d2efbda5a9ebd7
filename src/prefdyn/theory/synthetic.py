"""Synthetic preference data whose law satisfies the theorems' assumptions.

Two settings:

* :func:`two_class_law` (Im & Li, ICML 2024, Section 4.1): hidden states of
  prompts that prefer Yes (+) and No (-) drawn as ``g = mu_c + A_c z`` with
  ``z`` of i.i.d. unit-variance *generalized normal* coordinates of shape
  ``alpha`` (``alpha = 2`` Gaussian, ``alpha = 1`` Laplace, ``alpha < 1``
  heavier). A generalized normal of shape ``alpha`` is alpha-subexponential:
  ``P(|X| > r) <= 2 exp(-(r / K)^alpha)`` with ``K`` its Orlicz norm
  (:func:`gn_psi_norm`). The means satisfy ``||mu+ - mu-|| = d^Delta``.
* :func:`concept_law` (Im & Li 2024b, "Can DPO Learn Diverse Human Values? A
  Theoretical Scaling Law"): ``K`` concepts, each a pair of clusters
  (preferred / non-preferred) around a concept center, ``Q`` samples per cluster,
  with a controllable correlation between the concepts' preference directions.

Every sampler takes an explicit ``torch.Generator``; nothing touches the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError

__all__ = ["ConceptLaw", "Scale", "TwoClassLaw", "concept_law", "generalized_normal",
           "gn_psi_norm", "gn_scale", "two_class_law"]

Scale = float | Tensor
"""Noise scale of a class: a float ``sigma`` (``Sigma = sigma^2 I``), a ``(d,)`` tensor of
per-coordinate standard deviations, or a ``(d, d)`` factor ``A`` with ``Sigma = A A^T``."""


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha <= 2:
        raise PrefdynError(f"alpha must be in (0, 2] (alpha-subexponential laws), got {alpha}")


def gn_scale(alpha: float) -> float:
    """Scale ``s`` of the generalized normal ``density ~ exp(-|x / s|^alpha)`` with unit variance.

    Its variance is ``s^2 Gamma(3/alpha) / Gamma(1/alpha)``; ``alpha = 2`` gives ``s = sqrt 2``.
    """
    _check_alpha(alpha)
    return math.exp(0.5 * (math.lgamma(1 / alpha) - math.lgamma(3 / alpha)))


def gn_psi_norm(alpha: float, scale: float | None = None) -> float:
    """Orlicz norm ``||X||_psi_alpha = inf{K : E exp(|X / K|^alpha) <= 2}`` of a generalized normal.

    For ``density ~ exp(-|x / s|^alpha)``, ``E exp(|X / K|^alpha) = (1 - (s / K)^alpha)^(-1/alpha)``,
    so ``K = s (1 - 2^-alpha)^(-1/alpha)``; ``scale=None`` is the unit-variance law
    (``alpha = 2``: ``K = sqrt(8/3)``, the Gaussian's psi_2 norm).
    """
    s = gn_scale(alpha) if scale is None else scale
    return s * (1 - 2.0 ** (-alpha)) ** (-1 / alpha)


def generalized_normal(shape: tuple[int, ...], alpha: float, *, generator: torch.Generator,
                       dtype: torch.dtype = torch.float64) -> Tensor:
    """I.i.d. unit-variance generalized normal draws of shape ``alpha``.

    ``|X / s|^alpha ~ Gamma(1/alpha, 1)`` with a random sign; one sampler for every
    ``alpha`` keeps the laws comparable (``alpha = 2`` is exactly ``N(0, 1)``).
    """
    _check_alpha(alpha)
    # torch._standard_gamma is what torch.distributions.Gamma samples with; it is the
    # only gamma sampler in torch that accepts an explicit generator.
    gamma = torch._standard_gamma(torch.full(shape, 1 / alpha, dtype=torch.float64),
                                  generator=generator)
    sign = torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
    return (sign * gn_scale(alpha) * gamma ** (1 / alpha)).to(dtype)


def _apply_scale(z: Tensor, scale: Scale) -> Tensor:
    if isinstance(scale, Tensor) and scale.dim() == 2:
        return z @ scale.to(z.dtype).T
    return z * (scale.to(z.dtype) if isinstance(scale, Tensor) else scale)


def _variance_along(scale: Scale, v: Tensor) -> float:
    """``v^T Sigma v`` for a unit vector ``v``."""
    if isinstance(scale, Tensor) and scale.dim() == 2:
        return float((scale.double().T @ v).square().sum())
    if isinstance(scale, Tensor):
        return float((v * scale.double()).square().sum())
    return float(scale) ** 2


def _orthonormal(d: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` random orthonormal vectors in ``R^d``: ``(k, d)`` float64."""
    if k > d:
        raise PrefdynError(f"need {k} orthogonal directions but d = {d}")
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=torch.float64))
    return q.T.contiguous()


@dataclass(frozen=True, eq=False)
class TwoClassLaw:
    """``g = mu_c + A_c z`` for class ``c`` in {+ (prefers Yes), - (prefers No)}.

    Attributes:
        mu_pos, mu_neg: ``(d,)`` class means, float64.
        scale_pos, scale_neg: the classes' noise scales (:data:`Scale`).
        alpha: shape of the coordinates of ``z`` (alpha-subexponential).
    """

    mu_pos: Tensor
    mu_neg: Tensor
    scale_pos: Scale
    scale_neg: Scale
    alpha: float

    @property
    def d(self) -> int:
        return self.mu_pos.shape[0]

    @property
    def b(self) -> Tensor:
        """``mu+ - mu-``: the direction Theorem 4.2 says DPO learns."""
        return self.mu_pos - self.mu_neg

    @property
    def D(self) -> float:
        return float(self.b.norm())

    @property
    def Delta(self) -> float:
        return math.log(self.D) / math.log(self.d)

    @property
    def common_mean(self) -> Tensor:
        """``(mu+ + mu-) / 2``; zero for the theorems' centered setting."""
        return (self.mu_pos + self.mu_neg) / 2

    def noise(self, n: int, positive: bool, *, generator: torch.Generator) -> Tensor:
        """``n`` draws of ``A_c z`` (the class-centered residuals): ``(n, d)`` float64."""
        z = generalized_normal((n, self.d), self.alpha, generator=generator)
        return _apply_scale(z, self.scale_pos if positive else self.scale_neg)

    def variance_along(self, v: Tensor, positive: bool) -> float:
        """Noise variance of class ``c`` along the unit vector ``v``."""
        return _variance_along(self.scale_pos if positive else self.scale_neg, v.double())

    def sample(self, n: int, *, generator: torch.Generator,
               pos_share: float = 0.5) -> tuple[Tensor, Tensor]:
        """``n`` hidden states ``(n, d)`` float64 and ``prefers_yes`` ``(n,)`` bool.

        ``round(n * pos_share)`` rows prefer Yes; positives come first (the trainer
        is full-batch or draws its own minibatches, so order does not matter).
        """
        if not 0 < pos_share < 1:
            raise PrefdynError(f"pos_share must be in (0, 1), got {pos_share}")
        n_pos = round(n * pos_share)
        if n_pos < 2 or n - n_pos < 2:
            raise PrefdynError(f"each class needs at least 2 samples, got {n_pos} and {n - n_pos}")
        g = torch.cat([self.mu_pos + self.noise(n_pos, True, generator=generator),
                       self.mu_neg + self.noise(n - n_pos, False, generator=generator)])
        return g, torch.arange(n) < n_pos


def two_class_law(d: int, Delta: float, *, generator: torch.Generator, alpha: float = 2.0,
                  sigma: Scale = 1.0, sigma_neg: Scale | None = None,
                  common_mean: float = 0.0) -> TwoClassLaw:
    """The law of Theorem 4.1's setting: ``||mu+ - mu-|| = d^Delta``.

    ``mu+- = mu0 +- (d^Delta / 2) v`` with ``v`` a random unit vector and ``mu0`` a
    common mean of norm ``common_mean`` orthogonal to ``v`` (0: the centered case the
    theorems assume; real hidden states have a large one). ``sigma`` / ``sigma_neg``
    set the noise scale of each class (``sigma_neg=None``: same as ``sigma``).
    """
    _check_alpha(alpha)
    if d < 2:
        raise PrefdynError(f"d must be >= 2, got {d}")
    if common_mean < 0:
        raise PrefdynError(f"common_mean must be >= 0, got {common_mean}")
    v, w = _orthonormal(d, 2, generator)
    half = 0.5 * d**Delta * v
    mu0 = common_mean * w
    return TwoClassLaw(mu0 + half, mu0 - half, sigma, sigma if sigma_neg is None else sigma_neg,
                       float(alpha))


@dataclass(frozen=True, eq=False)
class ConceptLaw:
    """``K`` concepts; concept ``k``'s preferred cluster sits at ``c_k + (D/2) v_k`` and its
    non-preferred cluster at ``c_k - (D/2) v_k``, each with i.i.d. generalized-normal
    noise of scale ``sigma`` (Im & Li 2024b's K pairs of clusters).

    Attributes:
        centers: ``(K, d)`` concept centers ``c_k``.
        directions: ``(K, d)`` unit preference directions ``v_k`` (``b_k = D v_k``).
        D: per-concept distinguishability ``||b_k||``.
        alpha, sigma: noise shape and scale.
    """

    centers: Tensor
    directions: Tensor
    D: float
    alpha: float
    sigma: float

    @property
    def K(self) -> int:
        return self.centers.shape[0]

    @property
    def d(self) -> int:
        return self.centers.shape[1]

    def subset(self, k: int) -> "ConceptLaw":
        """The first ``k`` concepts (nested subsets keep runs with different K comparable)."""
        if not 1 <= k <= self.K:
            raise PrefdynError(f"k must be in [1, {self.K}], got {k}")
        return replace(self, centers=self.centers[:k], directions=self.directions[:k])

    def sample(self, Q: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``Q`` samples per cluster: hidden states ``(2 K Q, d)``, ``prefers_yes`` and the
        concept index ``groups`` (both ``(2 K Q,)``), concept by concept, positives first."""
        if Q < 1:
            raise PrefdynError(f"Q must be >= 1, got {Q}")
        sign = torch.cat([torch.ones(Q), -torch.ones(Q)]).double()
        means = (self.centers[:, None] + 0.5 * self.D * sign[None, :, None] * self.directions[:, None])
        z = generalized_normal((self.K, 2 * Q, self.d), self.alpha, generator=generator)
        g = (means + self.sigma * z).reshape(-1, self.d)
        prefers_yes = (sign > 0).repeat(self.K)
        groups = torch.arange(self.K).repeat_interleave(2 * Q)
        return g, prefers_yes, groups


def concept_law(K: int, d: int, *, generator: torch.Generator, D: float = 4.0, rho: float = 0.0,
                center_norm: float = 4.0, global_mean: float = 0.0, alpha: float = 2.0,
                sigma: float = 1.0) -> ConceptLaw:
    """``K`` concepts with ``cos(b_k, b_l) = rho`` exactly for ``k != l``.

    With orthonormal ``c, z_1..z_K``, ``v_k = sqrt(rho) c + sqrt(1 - rho) z_k``: ``rho = 0``
    gives orthogonal (independent) values, ``rho = 1`` one shared value. Centers are
    ``global_mean * e + center_norm * w_k`` with ``e, w_k`` orthonormal and orthogonal to
    every ``v``; a large ``global_mean`` mimics the common direction of real hidden
    states (every cosine is high until the global mean is subtracted). Needs ``d >= 2K + 2``.
    """
    _check_alpha(alpha)
    if K < 1 or not 0 <= rho <= 1 or D <= 0 or sigma < 0:
        raise PrefdynError(f"need K >= 1, rho in [0, 1], D > 0, sigma >= 0; got K={K}, rho={rho}, "
                           f"D={D}, sigma={sigma}")
    basis = _orthonormal(d, 2 * K + 2, generator)
    shared, mean_dir, z, w = basis[0], basis[1], basis[2:K + 2], basis[K + 2:]
    directions = math.sqrt(rho) * shared + math.sqrt(1 - rho) * z
    centers = global_mean * mean_dir + center_norm * w
    return ConceptLaw(centers, directions, float(D), float(alpha), float(sigma))
