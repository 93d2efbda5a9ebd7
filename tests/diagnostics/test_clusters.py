"""k-means and the silhouette choice of K (diagnostics/clusters.py)."""

import math

import torch

from prefdyn.diagnostics.clusters import choose_clusters, silhouette


def test_silhouette_by_hand():
    # Points 0, 1 | 10 on a line: a = 1 for both; b_0 = 10, b_1 = 9; the singleton counts 0.
    x = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    expected = ((10 - 1) / 10 + (9 - 1) / 9 + 0.0) / 3
    assert math.isclose(silhouette(x, torch.tensor([0, 0, 1])), expected, rel_tol=1e-12)


def test_three_separated_blobs_give_k3_numbered_by_size():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [0.0, 20.0, 0.0]])
    sizes = [5, 12, 8]
    x = torch.cat([c + torch.randn(n, 3, generator=g) for c, n in zip(centers, sizes)])
    result = choose_clusters(x, seed=1)
    assert result.k == 3 and set(result.scores) == set(range(2, 9))
    assert max(result.scores, key=result.scores.get) == 3
    truth = torch.tensor([0] * 5 + [1] * 12 + [2] * 8)
    # Largest cluster first: the 12-point blob is 0, the 8-point one 1, the 5-point one 2.
    assert result.labels.tolist() == [{1: 0, 2: 1, 0: 2}[t] for t in truth.tolist()]
    assert [int(truth[m]) for m in result.medoids] == [1, 2, 0]


def test_fixed_k_and_seeded():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(2))
    a, b = choose_clusters(x, k=4, seed=7), choose_clusters(x, k=4, seed=7)
    assert a.k == 4 and list(a.scores) == [4] and torch.equal(a.labels, b.labels)
