"""K-concept scaling: steps to margin, exponents and cluster structure (the training runs
are tested in tests/experiments/test_theory_runs.py)."""

import math

import numpy as np
import pytest
import torch

from prefdyn.theory import cluster_structure, concept_law, fit_exponent, steps_to_margin


def test_steps_to_margin_and_exponent_by_hand():
    steps = np.array([0, 10, 20, 30])
    assert steps_to_margin(steps, np.array([0, 0.5, 1.2, 2.0]), 1.0) == 20
    assert steps_to_margin(steps, np.array([0, np.nan, 0.5, 0.9]), 1.0) == math.inf
    # y = 3 x^1.5: slope 1.5; an inf point is skipped.
    assert fit_exponent([1, 2, 4, 8], [3, 3 * 2**1.5, 3 * 8, math.inf]) == pytest.approx(1.5)
    assert math.isnan(fit_exponent([1], [2]))


def test_cluster_structure_by_hand():
    # A = (1,0), (1,0); B = (0,1), (0,2). Raw: within 1 (A's pair and B's pair), between 0.
    a = torch.tensor([[1.0, 0], [1, 0]])
    b = torch.tensor([[0.0, 1], [0, 2]])
    cs = cluster_structure([a, b], ["A", "B"])
    assert cs.within == pytest.approx(1.0) and cs.between == pytest.approx(0.0)
    # Centered on (0.5, 0.75): A -> (0.5, -0.75) twice; B -> (-0.5, 0.25), (-0.5, 1.25).
    x, y1, y2 = np.array([0.5, -0.75]), np.array([-0.5, 0.25]), np.array([-0.5, 1.25])

    def cos(u, v):
        return u @ v / np.linalg.norm(u) / np.linalg.norm(v)

    assert cs.within_centered == pytest.approx((1 + cos(y1, y2)) / 2)
    assert cs.between_centered == pytest.approx((cos(x, y1) + cos(x, y2)) / 2)


def test_cluster_structure_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 5, generator=gen) + k for k, n in enumerate((4, 6, 3))]
    cs = cluster_structure(xs, ["a", "b", "c"])
    allx = torch.cat(xs).double()
    for mat, shift in ((cs.matrix, 0.0), (cs.matrix_centered, allx.mean(0))):
        units = [torch.nn.functional.normalize(x.double() - shift, dim=1) for x in xs]
        for k in range(3):
            for m in range(3):
                c = units[k] @ units[m].T
                want = c[~torch.eye(len(c), dtype=torch.bool)].mean() if k == m else c.mean()
                assert float(mat[k, m]) == pytest.approx(float(want))


def test_global_mean_hides_cluster_structure_until_subtracted():
    gen = torch.Generator().manual_seed(0)
    law = concept_law(4, 32, center_norm=3.0, global_mean=20.0, generator=gen)
    g, _, groups = law.sample(30, generator=gen)
    cs = cluster_structure([g[groups == k] for k in range(4)], list("abcd"))
    assert cs.between > 0.9  # everything shares the global direction
    assert cs.within_centered > cs.between_centered + 0.2


def test_class_cluster_structure_by_hand():
    from prefdyn.theory import class_cluster_structure

    # two concepts along e1 / e2, their classes at +-e3, two identical points per cluster. The
    # global mean (e1 + e2) / 2 removed: a+- = (1/2, -1/2, +-1), b+- = (-1/2, 1/2, +-1), norm sqrt(3/2).
    e = torch.eye(3, dtype=torch.float64)
    a = torch.stack([e[0] + e[2], e[0] + e[2], e[0] - e[2], e[0] - e[2]])
    b = torch.stack([e[1] + e[2], e[1] + e[2], e[1] - e[2], e[1] - e[2]])
    y = torch.tensor([True, True, False, False])
    r = class_cluster_structure([a, b], [y, y], ["a", "b"])
    assert r["within"] == pytest.approx(1.0)
    assert r["same_concept_other_class"] == pytest.approx(-1 / 3)  # (1/4 + 1/4 - 1) / (3/2)
    # cos(a+, b+) = (-1/2 + 1) / (3/2) = 1/3, cos(a+, b-) = (-1/2 - 1) / (3/2) = -1: mean -1/3
    assert r["other_concepts"] == pytest.approx(-1 / 3)
    assert r["separated"] is True
