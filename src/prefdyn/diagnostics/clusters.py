"""Concepts from clusters: k-means on the prompts' last hidden states, K chosen by silhouette.

When a data set names no concept column, prefdyn groups its pairs by what the model
sees of the prompt: ``g(x)``, the last hidden state of the prompt (the input of the
unembedding, :mod:`prefdyn.embeddings`). The states are standardized (centered, and
divided by their overall RMS, since real models' hidden states share one large
direction), clustered by k-means (k-means++ seeding from an explicit generator,
Lloyd iterations, best of ``n_init`` restarts) for each K in a small range, and the K
with the highest mean silhouette (Rousseeuw 1987: ``s_i = (b_i - a_i) / max(a_i, b_i)``,
``a_i`` the mean distance to i's own cluster, ``b_i`` to the nearest other one) is
kept. The whole curve is returned so that the report can show why this K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.errors import DataError


@dataclass(frozen=True)
class Clustering:
    """``labels`` (n,) int64 in 0..k-1 (clusters numbered by size, largest first),
    ``k``, the silhouette of every K tried (``scores``), and ``medoids``: per cluster,
    the index of the point closest to its centroid (its representative prompt)."""

    labels: Tensor
    k: int
    scores: dict[int, float]
    medoids: list[int]


def standardize(x: Tensor) -> Tensor:
    """Centered and scaled to unit RMS, float64 (clusters do not depend on the overall scale)."""
    x = x.double() - x.double().mean(0)
    rms = x.square().mean().sqrt()
    return x / rms if rms > 0 else x


def kmeans(x: Tensor, k: int, *, generator: torch.Generator, n_init: int = 4,
           iters: int = 100) -> tuple[Tensor, Tensor]:
    """``(labels (n,), centroids (k, d))`` of the best of ``n_init`` k-means++ runs (least inertia)."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise DataError(f"k-means needs 1 <= k <= n, got k={k}, n={n}")
    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        centroids = x[torch.randint(n, (1,), generator=generator)]
        for _ in range(1, k):
            d2 = torch.cdist(x, centroids).square().amin(1)
            probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n, dtype=x.dtype)
            centroids = torch.cat([centroids, x[torch.multinomial(probs, 1, generator=generator)]])
        labels = torch.full((n,), -1, dtype=torch.long)
        for _ in range(iters):
            new = torch.cdist(x, centroids).argmin(1)
            if torch.equal(new, labels):
                break
            labels = new
            for c in range(k):
                members = labels == c
                if members.any():  # an emptied cluster keeps its centroid
                    centroids[c] = x[members].mean(0)
        inertia = float((x - centroids[labels]).square().sum())
        if inertia < best_inertia:
            best, best_inertia = (labels, centroids.clone()), inertia
    return best  # type: ignore[return-value]


def silhouette(x: Tensor, labels: Tensor) -> float:
    """Mean silhouette of ``labels`` on ``x`` (Euclidean); points alone in their cluster count 0."""
    dist = torch.cdist(x, x)
    ids = labels.unique()
    if len(ids) < 2:
        return 0.0
    onehot = (labels[:, None] == ids[None, :]).double()  # (n, c)
    sizes = onehot.sum(0)
    mean_to = (dist @ onehot)  # (n, c): summed distance to each cluster
    own = (onehot * mean_to).sum(1) / (onehot @ sizes - 1).clamp_min(1)
    other = (mean_to / sizes).masked_fill(onehot.bool(), float("inf")).amin(1)
    s = (other - own) / torch.maximum(own, other).clamp_min(1e-300)
    s = torch.where(onehot @ sizes > 1, s, torch.zeros_like(s))
    return float(s.mean())


def choose_clusters(embeddings: Tensor, *, k_range: range = range(2, 9), seed: int = 0,
                    k: int | None = None) -> Clustering:
    """Cluster ``embeddings (n, d)``; ``k`` fixed, or the best silhouette over ``k_range``."""
    n = embeddings.shape[0]
    if n < 2:
        raise DataError(f"clustering needs at least 2 prompts, got {n}")
    x = standardize(embeddings)
    generator = torch.Generator().manual_seed(seed)
    candidates = [k] if k is not None else [c for c in k_range if 2 <= c < n] or [min(2, n)]
    scores: dict[int, float] = {}
    runs = {}
    for c in candidates:
        labels, centroids = kmeans(x, c, generator=generator)
        scores[c], runs[c] = silhouette(x, labels), (labels, centroids)
    chosen = max(scores, key=lambda c: (scores[c], -c))
    labels, centroids = runs[chosen]
    # Number clusters by size (largest first, ties by first member) so that names are stable.
    order = sorted(labels.unique().tolist(), key=lambda c: (-int((labels == c).sum()),
                                                            int((labels == c).nonzero()[0])))
    remap = torch.empty(int(labels.max()) + 1, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(len(order))
    labels = remap[labels]
    centroids = centroids[torch.tensor(order)]
    medoids = [int(torch.where(labels == c, (x - centroids[c]).norm(dim=1), torch.inf).argmin())
               for c in range(len(order))]
    return Clustering(labels=labels, k=len(order), scores=scores, medoids=medoids)
