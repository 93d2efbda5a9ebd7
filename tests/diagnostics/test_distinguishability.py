import json
import math

import pytest
import torch

from prefdyn.diagnostics import BehaviorStats, behavior_stats
from prefdyn.errors import DataError


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _separated():
    # mu+ = (2, 0), mu- = (-2, 0): b = (4, 0), D = 4. Within-class deviations are
    # (0, +-1) for all four samples: scatter 4 over n - 2 = 2, so Sigma = diag(0, 2).
    g = _t([[2, 1], [2, -1], [-2, 1], [-2, -1]])
    return g, torch.tensor([True, True, False, False])


def _overlapping():
    # x: Yes at 0, 2, 4 (mu+ = 2), No at 1, -1 (mu- = 0); y = 3 everywhere.
    # b = (2, 0), D = 2, midpoint x = 1. Yes at 0 is on the wrong side, No at 1 lies
    # on the hyperplane (counts as not separated): 3 of 5 separable.
    # Scatter along x: 4 + 0 + 4 + 1 + 1 = 10, over n - 2 = 3.
    g = _t([[0, 3], [2, 3], [4, 3], [1, 3], [-1, 3]])
    return g, torch.tensor([True, True, True, False, False])


def test_separated_classes_by_hand():
    s = behavior_stats(*_separated())
    assert (s.n, s.n_pos, s.n_neg, s.d) == (4, 2, 2, 2)
    assert s.D == pytest.approx(4.0)
    assert s.Delta == pytest.approx(2.0)  # log 4 / log 2
    assert s.trace_ratio == pytest.approx(2 / 16)
    assert s.op_ratio == pytest.approx(2 / 16)
    assert s.along_ratio == pytest.approx(0.0)
    assert s.scale_free_D == pytest.approx(4 / math.sqrt(2))
    assert s.separable_share == 1.0
    assert s.mean_norm == pytest.approx(0.0)
    assert s.D_debiased == pytest.approx(math.sqrt(16 - 2 * (1 / 2 + 1 / 2)))
    assert torch.equal(s.b, _t([4, 0]))


def test_overlapping_classes_by_hand():
    s = behavior_stats(*_overlapping())
    assert (s.n, s.n_pos, s.n_neg) == (5, 3, 2)
    assert s.D == pytest.approx(2.0)
    assert s.Delta == pytest.approx(1.0)
    assert s.trace_ratio == pytest.approx((10 / 3) / 4)
    assert s.op_ratio == pytest.approx((10 / 3) / 4)
    assert s.along_ratio == pytest.approx((10 / 3) / 4)
    assert s.separable_share == pytest.approx(3 / 5)
    assert s.mean_norm == pytest.approx(math.sqrt(1.2**2 + 3**2))  # mean (6/5, 3)
    assert s.D_debiased == pytest.approx(math.sqrt(4 - (10 / 3) * (1 / 3 + 1 / 2)))


def test_random_labels_have_large_D_but_no_debiased_D():
    # Pure noise, n < d: E[D**2] = d (1/n_pos + 1/n_neg) = 64 * (1/20 + 1/20) = 6.4.
    g = torch.randn(40, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = behavior_stats(g, torch.arange(40) % 2 == 0)
    assert s.D > 2 and s.D_debiased < 0.3 * s.D
    assert s.separable_share >= 0.8  # in-sample, so optimistic when n < d


def test_large_inputs_take_the_lobpcg_path():
    gen = torch.Generator().manual_seed(0)
    # Gram side min(n, d) = 270 > 256; one strong common direction, as real hidden states have.
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    g = randn(300, 270) + 5 * randn(300, 1) * randn(270)
    labels = torch.arange(300) % 2 == 0
    state = torch.random.get_rng_state()
    s = behavior_stats(g, labels)
    assert torch.equal(state, torch.random.get_rng_state())
    centered = torch.where(labels[:, None], g - g[labels].mean(0), g - g[~labels].mean(0))
    # Reference by power iteration: the spike makes the top eigenvalue ~1000x the next.
    scatter, v = centered.T @ centered, torch.ones(270, dtype=torch.float64)
    for _ in range(50):
        v = scatter @ v
        v = v / v.norm()
    op = float(v @ scatter @ v) / 298
    assert s.op_ratio == pytest.approx(op / s.D**2, rel=1e-8)


def test_ratios_match_explicit_pooled_covariance():
    gen = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    g = randn(30, 5) @ randn(5, 5)
    labels = torch.arange(30) % 3 == 0
    pos, neg = g[labels], g[~labels]
    scatter = (pos - pos.mean(0)).T @ (pos - pos.mean(0)) + (neg - neg.mean(0)).T @ (neg - neg.mean(0))
    sigma = scatter / (30 - 2)
    b = pos.mean(0) - neg.mean(0)
    v = b / b.norm()

    s = behavior_stats(g, labels)
    D2 = float(b @ b)
    assert s.trace_ratio == pytest.approx(float(sigma.trace()) / D2)
    assert s.op_ratio == pytest.approx(float(torch.linalg.eigvalsh(sigma)[-1]) / D2)
    assert s.along_ratio == pytest.approx(float(v @ sigma @ v) / D2)


def test_float32_input_is_computed_in_float64():
    g, labels = _overlapping()
    s32, s64 = behavior_stats(g.float(), labels), behavior_stats(g, labels)
    assert s32.b.dtype == torch.float64
    assert s32.to_dict() == pytest.approx(s64.to_dict())


def test_to_dict_leaves_out_b_and_is_json_ready():
    s = behavior_stats(*_separated())
    d = s.to_dict()
    assert "b" not in d
    assert set(d) == {f for f in BehaviorStats.__dataclass_fields__} - {"b"}
    assert json.loads(json.dumps(d))["D"] == pytest.approx(4.0)


def test_identical_class_means_give_infinite_ratios():
    g = _t([[1, 0], [-1, 0], [0, 1], [0, -1]])
    s = behavior_stats(g, torch.tensor([True, True, False, False]))
    assert s.D == 0 and s.Delta == -math.inf and s.trace_ratio == math.inf
    assert math.isnan(s.along_ratio) and math.isnan(s.separable_share)


@pytest.mark.parametrize(
    ("g", "labels", "match"),
    [
        (torch.zeros(4, 2), torch.tensor([True, True, True, True]), "0 sample"),
        (torch.zeros(3, 2), torch.tensor([True, True, False]), "1 sample"),
        (torch.tensor([[0.0, 1], [1, 1], [2, math.nan], [3, 1]]), torch.tensor([True, True, False, False]), "NaN"),
        (torch.zeros(4, 2), torch.tensor([1, 1, 0, 0]), "bool"),
        (torch.zeros(4, 2), torch.tensor([True, False, True]), "shape"),
        (torch.zeros(4), torch.tensor([True, True, False, False]), "shape"),
        (torch.zeros(4, 1), torch.tensor([True, True, False, False]), "width"),
    ],
)
def test_bad_input_raises_data_error(g, labels, match):
    with pytest.raises(DataError, match=match):
        behavior_stats(g, labels)
