"""Priority levels of behaviors trained jointly (Im & Li, ICML 2024, Section 4.2, Eq. 5).

When DPO trains several behaviors ``i = 1..m`` at once, the shared last-layer
update follows the mean discriminating direction ``b_bar``, the weighted mean
of ``b_i = mu_i+ - mu_i-``. Eq. 5 defines the priority level of behavior ``i``
as ``P_i = cos(b_bar, b_i)``; its projection ``D_i * P_i = <b_i, b_bar> / ||b_bar||``
is how fast the joint update moves behavior ``i``'s margin, so the behavior
with the largest projection is learned first and a negative one at first
moves the wrong way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.errors import DataError

__all__ = ["PriorityGaps", "PriorityResult", "priority_gap_matrix", "priority_levels"]


@dataclass(frozen=True, eq=False)
class PriorityResult:
    """Priority levels of ``m`` jointly trained behaviors (Eq. 5), float64.

    Attributes:
        weights: ``(m,)`` weights of the mean, summing to 1.
        b_bar: ``(d,)`` weighted mean of the ``b_i``.
        D: ``(m,)`` distinguishabilities ``||b_i||``.
        P: ``(m,)`` priority levels ``cos(b_bar, b_i)``; NaN where ``D_i == 0``.
        projection: ``(m,)`` ``D_i * P_i = <b_i, b_bar> / ||b_bar||``.
    """

    weights: Tensor
    b_bar: Tensor
    D: Tensor
    P: Tensor
    projection: Tensor


@dataclass(frozen=True, eq=False)
class PriorityGaps:
    """Pairwise priority gaps, each ``(m, m)``, antisymmetric with a zero diagonal.

    ``gap[i, j] = P_i - P_j`` and ``proj_gap[i, j] = D_i P_i - D_j P_j``, both
    with the priority levels of Eq. 5 computed for the pair ``{i, j}`` alone
    trained jointly. ``gap[i, j] > 0`` predicts that ``i`` is learned before ``j``.
    """

    gap: Tensor
    proj_gap: Tensor


def _check(bs: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    if bs.ndim != 2 or bs.shape[0] == 0:
        raise DataError(f"expected stacked b_i of shape (m, d) with m >= 1, got {tuple(bs.shape)}")
    bs = bs.to(torch.float64)
    if weights is None:
        weights = torch.ones(bs.shape[0], dtype=torch.float64)
    weights = weights.to(torch.float64)
    if weights.shape != bs.shape[:1]:
        raise DataError(f"weights must have shape ({bs.shape[0]},), got {tuple(weights.shape)}")
    if (weights < 0).any() or not weights.sum() > 0:
        raise DataError("weights must be non-negative with a positive sum")
    if not torch.isfinite(bs).all():
        raise DataError("b_i contain NaN or inf")
    return bs, weights / weights.sum()


def priority_levels(bs: Tensor, weights: Tensor | None = None) -> PriorityResult:
    """Priority levels ``P_i = cos(b_bar, b_i)`` of Eq. 5 and projections ``D_i P_i``.

    Args:
        bs: ``(m, d)`` stacked ``b_i = mu_i+ - mu_i-``.
        weights: ``(m,)`` non-negative weights of the mean ``b_bar``, e.g. the
            behaviors' sample shares; uniform when None. Normalized to sum 1.

    Raises:
        DataError: bad shapes or weights, or ``b_bar == 0`` (no mean direction).
    """
    bs, weights = _check(bs, weights)
    b_bar = weights @ bs
    b_bar_norm = b_bar.norm()
    if b_bar_norm == 0:
        raise DataError("the weighted mean b_bar is zero: priority levels (Eq. 5) are undefined")
    D = bs.norm(dim=1)
    projection = bs @ b_bar / b_bar_norm
    return PriorityResult(weights=weights, b_bar=b_bar, D=D, P=projection / D, projection=projection)


def priority_gap_matrix(bs: Tensor, weights: Tensor | None = None) -> PriorityGaps:
    """Priority gaps of every pair of behaviors trained as a pair (Eq. 5 per pair).

    For the pair ``{i, j}``, ``b_bar_ij = (w_i b_i + w_j b_j) / (w_i + w_j)``.
    Everything follows from the Gram matrix ``K = bs bs^T``: the projection of
    ``b_i`` on ``b_bar_ij`` is
    ``(w_i K_ii + w_j K_ij) / sqrt(w_i^2 K_ii + 2 w_i w_j K_ij + w_j^2 K_jj)``
    (the ``w_i + w_j`` cancels), and ``P_i^(ij)`` divides it by ``sqrt(K_ii)``.

    Args:
        bs: ``(m, d)`` stacked ``b_i``.
        weights: ``(m,)`` as in :func:`priority_levels`; uniform when None.

    Returns:
        :class:`PriorityGaps` with ``(m, m)`` matrices; a pair whose mean
        direction vanishes (``w_i b_i = -w_j b_j``) gets NaN.
    """
    bs, w = _check(bs, weights)
    K = bs @ bs.T
    k = K.diagonal()
    wi, wj = w[:, None], w[None, :]
    b_bar_norm = (wi**2 * k[:, None] + 2 * wi * wj * K + wj**2 * k[None, :]).clamp_min(0).sqrt()
    # proj[i, j]: projection of b_i on the mean direction of the pair {i, j}.
    proj = (wi * k[:, None] + wj * K) / b_bar_norm
    P = proj / k[:, None].sqrt()
    proj_gap, gap = proj - proj.T, P - P.T
    # i == j is no pair; the formula gives 0 there anyway, up to rounding and NaN.
    proj_gap.fill_diagonal_(0.0)
    gap.fill_diagonal_(0.0)
    return PriorityGaps(gap=gap, proj_gap=proj_gap)
