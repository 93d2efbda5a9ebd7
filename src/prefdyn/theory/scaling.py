"""The scaling law of DPO with K concepts (Im & Li 2024b, "Can DPO Learn Diverse Human
Values? A Theoretical Scaling Law").

``K`` concepts (values, behaviors) are mixed into one preference data set of ``Q``
samples per cluster (each concept a preferred and a non-preferred cluster) and
trained jointly with last-layer DPO. The steps needed to reach a target margin
(:func:`steps_to_margin`) and their growth with ``K`` (:func:`fit_exponent`) are
measured by :mod:`prefdyn.experiments._theory_runs`, which trains every ``(K, Q)``
cell on synthetic concepts or real persona behaviors in one vectorized run; this
module holds the math.

The linear-regime prediction (:func:`linear_margin_rates`, exact for the first
step, Appendix A.3 of Im & Li ICML 2024): the mean train reward margin grows by
``eta beta^2 ||m||^2`` per step and the test margin by ``eta beta^2 <m, m_test>``,
``m = (1/n) sum_i s_i g_i``. With ``K`` orthogonal concepts of equal ``D``,
``m ~ (1/K) sum_k b_k / 2 + noise``, so the test margin's rate falls like ``1/K``
(``(1 + (K-1) rho) / K`` with concept correlation ``rho``): the steps to a target
test margin grow about linearly in ``K``, while the train margin's extra
``tr(Sigma) / n`` (memorized noise, ``n = 2KQ``) shrinks as ``Q`` grows.

:func:`cluster_structure` checks the premise on real data: hidden states of one
behavior are closer to each other than to other behaviors' once the global mean
(shared by all hidden states) is subtracted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from prefdyn.errors import PrefdynError

__all__ = ["ClusterStructure", "Problems", "cluster_structure", "fit_exponent", "linear_margin_rates",
           "steps_to_margin"]


class Problems(Protocol):
    """``B`` padded problems as the last-layer trainer holds them
    (:class:`prefdyn.policies.last_layer.LastLayerData`): embeddings (B, N, d),
    prefers_yes and mask (B, N)."""

    embeddings: Tensor
    prefers_yes: Tensor
    mask: Tensor


def steps_to_margin(steps: np.ndarray, curve: np.ndarray, target: float) -> float:
    """First step at which ``curve >= target`` (``inf`` if never; NaNs skipped)."""
    hit = np.nonzero(np.nan_to_num(np.asarray(curve, dtype=float), nan=-np.inf) >= target)[0]
    return float(steps[hit[0]]) if len(hit) else float("inf")


def fit_exponent(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` on ``log x`` over finite positive pairs (NaN if < 2)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or np.ptp(np.log(x[ok])) == 0:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


@dataclass(frozen=True, eq=False)
class ClusterStructure:
    """Mean cosine similarity of hidden states within and between behaviors.

    ``matrix[k, l]``: mean cosine over pairs (one of ``k``, one of ``l``; distinct samples on
    the diagonal); ``within`` averages the diagonal, ``between`` the off-diagonal.
    ``*_centered``: the same after subtracting the global mean of all hidden states.
    """

    names: list[str]
    matrix: Tensor
    matrix_centered: Tensor

    @staticmethod
    def _split(m: Tensor) -> tuple[float, float]:
        K = m.shape[0]
        off = m[~torch.eye(K, dtype=torch.bool)]
        return float(m.diagonal().mean()), float(off.mean()) if K > 1 else float("nan")

    @property
    def within(self) -> float:
        return self._split(self.matrix)[0]

    @property
    def between(self) -> float:
        return self._split(self.matrix)[1]

    @property
    def within_centered(self) -> float:
        return self._split(self.matrix_centered)[0]

    @property
    def between_centered(self) -> float:
        return self._split(self.matrix_centered)[1]

    def to_dict(self) -> dict[str, float]:
        return {"within": self.within, "between": self.between,
                "within_centered": self.within_centered, "between_centered": self.between_centered}


def _mean_cosine_matrix(xs: list[Tensor]) -> Tensor:
    # With unit rows and S_k the sum of behavior k's rows, the sum of all pairwise cosines
    # is <S_k, S_l>; the diagonal drops the n_k self-pairs. O(n d), no n x n matrix.
    units = [torch.nn.functional.normalize(x.double(), dim=1) for x in xs]
    sums = torch.stack([u.sum(0) for u in units])
    n = torch.tensor([u.shape[0] for u in units], dtype=torch.float64)
    m = sums @ sums.T / (n[:, None] * n[None, :])
    diag = (sums.square().sum(1) - n) / (n * (n - 1)).clamp_min(1)
    return m - torch.diag(m.diagonal()) + torch.diag(diag)


def cluster_structure(embeddings: list[Tensor], names: Sequence[str]) -> ClusterStructure:
    """Within- vs between-behavior mean cosine, raw and after removing the global mean.

    Args:
        embeddings: one ``(n_k, d)`` tensor per behavior (concept), ``n_k >= 2``.
        names: the behaviors' names.
    """
    if len(embeddings) != len(names) or any(e.shape[0] < 2 for e in embeddings):
        raise PrefdynError("cluster_structure needs one (n_k >= 2, d) tensor per name")
    global_mean = torch.cat([e.double() for e in embeddings]).mean(0)
    return ClusterStructure(list(names), _mean_cosine_matrix(embeddings),
                            _mean_cosine_matrix([e.double() - global_mean for e in embeddings]))


def class_cluster_structure(embeddings: list[Tensor], prefers_yes: list[Tensor],
                            names: Sequence[str]) -> dict[str, float]:
    """The scaling law's cluster assumption checked per (concept, class) cluster (Im & Li 2024b:
    "the preference data consists of K pairs of clusters", each concept a preferred and a
    non-preferred cluster; quoted from the summary): mean cosine of the global-mean-removed hidden
    states within a cluster, to the same concept's other class, and to the other concepts' clusters.
    The assumption holds as far as ``within`` exceeds both (``separated``).

    Args:
        embeddings: one ``(n_k, d)`` tensor per concept; ``prefers_yes``: its ``(n_k,)`` classes.
        names: the concepts' names (the clusters are ``name+`` and ``name-``).
    """
    clusters, labels = [], []
    for x, y, name in zip(embeddings, prefers_yes, names):
        clusters += [x[y], x[~y]]
        labels += [f"{name}+", f"{name}-"]
    m = cluster_structure(clusters, labels).matrix_centered
    K2 = m.shape[0]
    idx = torch.arange(K2)
    partner = idx ^ 1  # the same concept's other class
    same_concept = float(m[idx, partner].mean())
    other = ~torch.eye(K2, dtype=torch.bool)
    other[idx, partner] = False
    other_concepts = float(m[other].mean()) if other.any() else float("nan")
    within = float(m.diagonal().mean())
    return {"within": within, "same_concept_other_class": same_concept, "other_concepts": other_concepts,
            "separated": bool(within > same_concept and (math.isnan(other_concepts) or within > other_concepts))}


def _signed_means(data: Problems) -> Tensor:
    """``m = (1/n) sum_i s_i g_i`` of each problem: ``(B, d)`` float64."""
    sign = (data.prefers_yes.double() * 2 - 1) * data.mask
    return torch.einsum("bn,bnd->bd", sign, data.embeddings.double()) / data.mask.sum(1, keepdim=True)


def linear_margin_rates(train: Problems, test: Problems, *, beta: float,
                        lr: float) -> tuple[Tensor, Tensor]:
    """Per-step growth of the mean train and test reward margins at ``W0``: ``(B,)`` each.

    Exact for the first step (Appendix A.3 with the whole mixture as one behavior):
    ``eta beta^2 ||m||^2`` and ``eta beta^2 <m, m_test>``; later steps are slower as the
    sigmoid weights of learned samples fall, so ``target / rate`` under-estimates the steps.
    """
    m, m_test = _signed_means(train), _signed_means(test)
    return lr * beta**2 * m.square().sum(1), lr * beta**2 * (m * m_test).sum(1)
