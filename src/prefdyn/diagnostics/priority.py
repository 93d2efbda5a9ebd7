"""Priority levels of behaviors trained jointly (Im & Li, ICML 2024, Section 4.2, Eq. 5).

When DPO trains several behaviors ``i = 1..m`` at once, the shared last-layer
update follows the mean discriminating direction ``b_bar``, the weighted mean
of ``b_i = mu_i+ - mu_i-``. The paper (Sec. 4.2): "we refer to
P_i = (b_bar . b_i) / (||b_bar|| ||b_i||) (5) as the priority level for behavior B_i
where b_* = argmax_{i in [m]} ||b_i||."

The printed formula never uses the ``b_*`` it defines. Two readings, chosen by
``reading``:

* ``"cosine"`` (default): the formula as printed, ``P_i = cos(b_bar, b_i)``. It is
  the default because it is what Eq. 5 prints and what prefdyn has always
  reported as ``P``.
* ``"max_norm"``: ``P_i = b_bar . b_i / (||b_bar|| ||b_*||)``, the reading that
  uses ``b_*``. It is the projection ``D_i cos(b_bar, b_i) = b_bar . b_i / ||b_bar||``
  divided by one constant, so it orders behaviors as App. A.3's first-step
  improvement ``(beta^2 eta / 4) b_bar . b_i`` does ("it is sufficient to consider
  b_bar . b_i as it is proportional to the average improvement in the logits").

Both are always available on :class:`PriorityResult` (``cosine``,
``max_norm_level``); ``P`` follows ``reading``. prefdyn predicts the order of a
joint run by the projection (equivalently the ``"max_norm"`` reading), so the
behavior with the largest projection is learned first and a negative one at
first moves the wrong way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from prefdyn.errors import DataError

__all__ = ["PriorityGaps", "PriorityReading", "PriorityResult", "priority_gap_matrix", "priority_levels"]

PriorityReading = Literal["cosine", "max_norm"]


@dataclass(frozen=True, eq=False)
class PriorityResult:
    """Priority levels of ``m`` jointly trained behaviors (Eq. 5), float64.

    Attributes:
        weights: ``(m,)`` weights of the mean, summing to 1.
        b_bar: ``(d,)`` weighted mean of the ``b_i``.
        D: ``(m,)`` distinguishabilities ``||b_i||``.
        P: ``(m,)`` priority levels of Eq. 5 in the chosen ``reading``; with
            ``"cosine"`` NaN where ``D_i == 0``.
        projection: ``(m,)`` ``<b_i, b_bar> / ||b_bar|| = D_i cos(b_bar, b_i)``.
        reading: ``"cosine"`` or ``"max_norm"`` (module docstring).
    """

    weights: Tensor
    b_bar: Tensor
    D: Tensor
    P: Tensor
    projection: Tensor
    reading: str = "cosine"

    @property
    def cosine(self) -> Tensor:
        """``(m,)`` ``cos(b_bar, b_i)``: Eq. 5 as printed."""
        return self.projection / self.D

    @property
    def max_norm_level(self) -> Tensor:
        """``(m,)`` ``b_bar . b_i / (||b_bar|| ||b_*||)``: Eq. 5 with its ``b_*``."""
        return self.projection / self.D.max()


@dataclass(frozen=True, eq=False)
class PriorityGaps:
    """Pairwise priority gaps, each ``(m, m)``, antisymmetric with a zero diagonal.

    ``gap[i, j] = P_i - P_j`` (``P`` in the chosen ``reading``; for ``"max_norm"``
    ``b_*`` is the longer of ``b_i, b_j``) and ``proj_gap[i, j]`` the difference of
    the projections ``<b_i, b_bar> / ||b_bar||``, both for the pair ``{i, j}`` alone
    trained jointly. ``gap[i, j] > 0`` predicts that ``i`` is learned before ``j``.
    """

    gap: Tensor
    proj_gap: Tensor


def _check(bs: Tensor, weights: Tensor | None, reading: str = "cosine") -> tuple[Tensor, Tensor]:
    if reading not in ("cosine", "max_norm"):
        raise DataError(f"reading must be 'cosine' or 'max_norm', got {reading!r}")
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


def priority_levels(bs: Tensor, weights: Tensor | None = None,
                    reading: PriorityReading = "cosine") -> PriorityResult:
    """Priority levels ``P_i`` of Eq. 5 and projections ``<b_i, b_bar> / ||b_bar||``.

    Args:
        bs: ``(m, d)`` stacked ``b_i = mu_i+ - mu_i-``.
        weights: ``(m,)`` non-negative weights of the mean ``b_bar``, e.g. the
            behaviors' sample shares; uniform when None. Normalized to sum 1.
        reading: ``"cosine"`` (Eq. 5 as printed, default) or ``"max_norm"``
            (divided by ``||b_*||``, ``b_* = argmax ||b_i||``); module docstring.

    Raises:
        DataError: bad shapes, weights or reading, or ``b_bar == 0`` (no mean direction).
    """
    bs, weights = _check(bs, weights, reading)
    b_bar = weights @ bs
    b_bar_norm = b_bar.norm()
    if b_bar_norm == 0:
        raise DataError("the weighted mean b_bar is zero: priority levels (Eq. 5) are undefined")
    D = bs.norm(dim=1)
    projection = bs @ b_bar / b_bar_norm
    P = projection / D if reading == "cosine" else projection / D.max()
    return PriorityResult(weights=weights, b_bar=b_bar, D=D, P=P, projection=projection, reading=reading)


def priority_gap_matrix(bs: Tensor, weights: Tensor | None = None,
                        reading: PriorityReading = "cosine") -> PriorityGaps:
    """Priority gaps of every pair of behaviors trained as a pair (Eq. 5 per pair).

    For the pair ``{i, j}``, ``b_bar_ij = (w_i b_i + w_j b_j) / (w_i + w_j)``.
    Everything follows from the Gram matrix ``K = bs bs^T``: the projection of
    ``b_i`` on ``b_bar_ij`` is
    ``(w_i K_ii + w_j K_ij) / sqrt(w_i^2 K_ii + 2 w_i w_j K_ij + w_j^2 K_jj)``
    (the ``w_i + w_j`` cancels), and ``P_i^(ij)`` divides it by ``sqrt(K_ii)``
    (``"cosine"``) or by ``sqrt(max(K_ii, K_jj))`` (``"max_norm"``).

    Args:
        bs: ``(m, d)`` stacked ``b_i``.
        weights: ``(m,)`` as in :func:`priority_levels`; uniform when None.
        reading: as in :func:`priority_levels`.

    Returns:
        :class:`PriorityGaps` with ``(m, m)`` matrices; a pair whose mean
        direction vanishes (``w_i b_i = -w_j b_j``) gets NaN.
    """
    bs, w = _check(bs, weights, reading)
    K = bs @ bs.T
    k = K.diagonal()
    wi, wj = w[:, None], w[None, :]
    b_bar_norm = (wi**2 * k[:, None] + 2 * wi * wj * K + wj**2 * k[None, :]).clamp_min(0).sqrt()
    # proj[i, j]: projection of b_i on the mean direction of the pair {i, j}.
    proj = (wi * k[:, None] + wj * K) / b_bar_norm
    norm = k[:, None] if reading == "cosine" else torch.maximum(k[:, None], k[None, :])
    P = proj / norm.sqrt()
    proj_gap, gap = proj - proj.T, P - P.T
    # i == j is no pair; the formula gives 0 there anyway, up to rounding and NaN.
    proj_gap.fill_diagonal_(0.0)
    gap.fill_diagonal_(0.0)
    return PriorityGaps(gap=gap, proj_gap=proj_gap)
