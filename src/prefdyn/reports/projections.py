"""2-D projections of embeddings before and after training (PCA, UMAP).

Both snapshots are projected with *one* map fitted on their union, so the two
panels share axes and a move of a class is a move on the page. PCA is an SVD
(numpy only); UMAP needs the optional ``umap-learn`` package
(``pip install umap-learn`` or ``pip install prefdyn[viz]``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from prefdyn.errors import PrefdynError
from prefdyn.reports.plots import plot_grid, plot_projection_2d

__all__ = ["pca_2d", "plot_before_after", "project_2d", "umap_2d"]


def pca_2d(points: np.ndarray) -> np.ndarray:
    """The first two principal components of ``points`` (n, d): (n, 2).

    Signs are fixed (largest-magnitude loading positive) so reruns draw the same picture.
    """
    X = np.asarray(points, dtype=float)
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"PCA needs (n >= 2, d) points, got {X.shape}")
    X = X - X.mean(0)
    _, _, Vt = np.linalg.svd(X, full_matrices=False)
    V = Vt[:2]
    signs = np.sign(V[np.arange(len(V)), np.abs(V).argmax(1)])
    out = X @ (V * signs[:, None]).T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def umap_2d(points: np.ndarray, *, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """UMAP (McInnes et al. 2018) of ``points`` (n, d) to (n, 2); raises a
    :class:`PrefdynError` naming ``pip install umap-learn`` when it is missing."""
    try:
        import umap
    except ImportError as e:
        raise PrefdynError("UMAP projections need umap-learn: pip install umap-learn "
                           "(or pip install prefdyn[viz])") from e
    X = np.asarray(points, dtype=float)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(X) - 1),
                        random_state=seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(X))


def project_2d(method: str, points: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """``"pca"`` or ``"umap"`` of ``points``: (n, 2)."""
    if method == "pca":
        return pca_2d(points)
    if method == "umap":
        return umap_2d(points, seed=seed)
    raise ValueError(f"unknown projection {method!r}; use 'pca' or 'umap'")


def plot_before_after(before: np.ndarray, after: np.ndarray, classes: Sequence[int], *,
                      method: str = "pca", title: str = "", seed: int = 0,
                      labels: Sequence[str] = ("before", "after")) -> Figure:
    """Two panels, ``before`` and ``after`` (each (n, d), same rows), projected by one
    ``method`` map fitted on both; points coloured by ``classes`` (True/1 = prefers Yes)."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ")
    joint = project_2d(method, np.concatenate([before, after]), seed=seed)
    n = len(before)
    # class index 0 = prefers Yes, as in plot_projection_2d's default names
    cls = 1 - np.asarray(classes).astype(int)
    name = method.upper()
    panels = [functools.partial(plot_projection_2d, joint[:n], cls, xlabel=f"{name} 1",
                                ylabel=f"{name} 2"),
              functools.partial(plot_projection_2d, joint[n:], cls, xlabel=f"{name} 1",
                                ylabel=f"{name} 2")]
    return plot_grid(panels, ncols=2, titles=list(labels), suptitle=title or None,
                     panel_size=(4.6, 3.9), sharex=True, sharey=True)
