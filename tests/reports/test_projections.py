import numpy as np
import pytest

from prefdyn.errors import PrefdynError
from prefdyn.reports.projections import pca_2d, plot_before_after, project_2d


def test_pca_finds_the_dominant_directions():
    rng = np.random.default_rng(0)
    X = np.zeros((200, 5))
    X[:, 3] = rng.normal(0, 10, 200)  # largest variance
    X[:, 1] = rng.normal(0, 3, 200)
    X[:, [0, 2, 4]] = rng.normal(0, 0.1, (200, 3))
    P = pca_2d(X + 7.0)  # centring is part of PCA
    assert P.shape == (200, 2)
    assert np.allclose(np.abs(P[:, 0]), np.abs(X[:, 3] - X[:, 3].mean()), atol=0.5)
    assert np.abs(np.corrcoef(P[:, 1], X[:, 1])[0, 1]) > 0.99
    assert np.allclose(pca_2d(X), pca_2d(X))  # deterministic signs


def test_before_after_figure_and_errors():
    rng = np.random.default_rng(1)
    before = rng.normal(size=(20, 6))
    fig = plot_before_after(before, before + 1.0, [True, False] * 10, method="pca")
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="differ"):
        plot_before_after(before, before[:5], [True] * 20)
    with pytest.raises(ValueError, match="unknown projection"):
        project_2d("tsne", before)


def test_umap_missing_names_the_package(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    with pytest.raises(PrefdynError, match="pip install umap-learn"):
        project_2d("umap", np.zeros((10, 3)))


# numba compiles UMAP on first use: minutes on a loaded 2-core machine, so it runs with
# the slow (integration) tests.
@pytest.mark.integration
def test_umap_projection():
    pytest.importorskip("umap")
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(0, 1, (30, 8)), rng.normal(8, 1, (30, 8))])
    P = project_2d("umap", X, seed=0)
    assert P.shape == (60, 2) and np.isfinite(P).all()
    # two well-separated clusters stay apart
    gap = np.linalg.norm(P[:30].mean(0) - P[30:].mean(0))
    assert gap > max(P[:30].std(0).max(), P[30:].std(0).max())
