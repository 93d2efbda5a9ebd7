import math

import pytest
import torch

from prefdyn.diagnostics import priority_gap_matrix, priority_levels
from prefdyn.errors import DataError


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_priority_levels_by_hand_uniform():
    # b_bar = (1, 0.5), ||b_bar|| = sqrt(5)/2.
    # P_1 = 2 / (2 * sqrt(5)/2) = 2/sqrt5; projection_1 = <(2,0),(1,.5)> / (sqrt5/2) = 4/sqrt5.
    # P_2 = 0.5 / (1 * sqrt5/2) = 1/sqrt5 = projection_2.
    r = priority_levels(_t([[2, 0], [0, 1]]))
    s5 = math.sqrt(5)
    assert torch.allclose(r.weights, _t([0.5, 0.5]))
    assert torch.allclose(r.b_bar, _t([1, 0.5]))
    assert torch.allclose(r.D, _t([2, 1]))
    assert torch.allclose(r.P, _t([2 / s5, 1 / s5]))
    assert torch.allclose(r.projection, _t([4 / s5, 1 / s5]))
    assert torch.allclose(r.projection, r.D * r.P)


def test_priority_levels_by_hand_weighted():
    # weights 3:1 -> (0.75, 0.25); b_bar = (0.75, 0.25), ||b_bar|| = sqrt(10)/4.
    # P_1 = 0.75 / (sqrt10/4) = 3/sqrt10, P_2 = 1/sqrt10.
    r = priority_levels(_t([[1, 0], [0, 1]]), _t([3, 1]))
    assert torch.allclose(r.weights, _t([0.75, 0.25]))
    assert torch.allclose(r.P, _t([3 / math.sqrt(10), 1 / math.sqrt(10)]))


def test_zero_mean_direction_raises():
    with pytest.raises(DataError, match="b_bar is zero"):
        priority_levels(_t([[1, 0], [-1, 0]]))


@pytest.mark.parametrize(
    ("bs", "weights"),
    [(torch.zeros(3), None), (torch.ones(2, 3), torch.ones(3)), (torch.ones(2, 3), _t([1, -1]))],
)
def test_bad_shapes_or_weights_raise(bs, weights):
    with pytest.raises(DataError):
        priority_levels(bs, weights)


def test_gap_matrix_by_hand():
    # Pair {0, 1} is the uniform example above: P gap 2/sqrt5 - 1/sqrt5, projection gap 3/sqrt5.
    g = priority_gap_matrix(_t([[2, 0], [0, 1], [1, 1]]))
    s5 = math.sqrt(5)
    assert g.gap[0, 1].item() == pytest.approx(1 / s5)
    assert g.proj_gap[0, 1].item() == pytest.approx(3 / s5)


def test_gap_matrix_is_antisymmetric_and_matches_pairwise_priority_levels():
    gen = torch.Generator().manual_seed(0)
    bs = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    weights = _t([10, 20, 30, 5])
    g = priority_gap_matrix(bs, weights)
    assert torch.equal(g.gap.diagonal(), torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(g.gap, -g.gap.T)
    assert torch.allclose(g.proj_gap, -g.proj_gap.T)
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            r = priority_levels(bs[[i, j]], weights[[i, j]])
            assert g.gap[i, j].item() == pytest.approx((r.P[0] - r.P[1]).item())
            assert g.proj_gap[i, j].item() == pytest.approx((r.projection[0] - r.projection[1]).item())


def test_both_readings_of_eq5_by_hand():
    # b_1 = (2, 0), b_2 = (1, 1): b_bar = (1.5, 0.5), ||b_bar|| = sqrt(2.5);
    # b_bar . b_1 = 3, b_bar . b_2 = 2; b_* = b_1 (norm 2).
    # cosine:   P_1 = 3 / (sqrt2.5 * 2) = 0.948683, P_2 = 2 / (sqrt2.5 * sqrt2) = 0.894427.
    # max_norm: P_1 = 3 / (sqrt2.5 * 2) = 0.948683, P_2 = 2 / (sqrt2.5 * 2) = 0.632456.
    bs = _t([[2, 0], [1, 1]])
    r2 = math.sqrt(2.5)
    cos = priority_levels(bs)
    mx = priority_levels(bs, reading="max_norm")
    assert cos.reading == "cosine" and mx.reading == "max_norm"
    assert torch.allclose(cos.P, _t([3 / (r2 * 2), 2 / (r2 * math.sqrt(2))]))
    assert torch.allclose(mx.P, _t([3 / (r2 * 2), 2 / (r2 * 2)]))
    assert torch.allclose(cos.max_norm_level, mx.P) and torch.allclose(mx.cosine, cos.P)
    # Pair gaps: the pair is the whole set, so gap[0, 1] = P_1 - P_2 in each reading.
    assert priority_gap_matrix(bs).gap[0, 1].item() == pytest.approx(3 / (r2 * 2) - 2 / (r2 * math.sqrt(2)))
    assert priority_gap_matrix(bs, reading="max_norm").gap[0, 1].item() == pytest.approx(1 / (r2 * 2))
    with pytest.raises(DataError):
        priority_levels(bs, reading="argmax")


def test_max_norm_reading_orders_like_the_projection():
    gen = torch.Generator().manual_seed(1)
    bs = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    r = priority_levels(bs, reading="max_norm")
    assert torch.equal(torch.argsort(r.P), torch.argsort(r.projection))
