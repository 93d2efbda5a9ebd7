import json
import math

import pytest
import torch

from prefdyn.diagnostics import diagnose
from prefdyn.errors import DataError, PrefdynError


def _behavior(b, copies=1):
    """Yes at b/2 +- e3, No at -b/2 +- e3: mu+ - mu- = b exactly (b[2] = 0), e3 is pure noise."""
    half = torch.tensor(b, dtype=torch.float64) / 2
    e3 = torch.zeros_like(half)
    e3[2] = 1.0
    g = torch.stack([half + e3, half - e3, -half + e3, -half - e3]).repeat(copies, 1)
    return g, torch.tensor([True, True, False, False]).repeat(copies)


def _overlapping():
    # Along e2: Yes at 0, 2, 4, No at 1, -1: b = (0, 2, 0), D = 2, 60% separable.
    g = torch.tensor([[0.0, 0, 0], [0, 2, 0], [0, 4, 0], [0, 1, 0], [0, -1, 0]], dtype=torch.float64)
    return g, torch.tensor([True, True, True, False, False])


def _three():
    # agreeableness: b = (6, 0, 0), n = 8; narcissism: b = (2, 0, 0), n = 4;
    # risk: b = (0, 2, 0), n = 5. Share-weighted b_bar = (8*6 + 4*2, 5*2, 0) / 17 = (56, 10, 0) / 17,
    # so P = 56/sqrt(3236) ~ 0.984 for the first two and 10/sqrt(3236) ~ 0.176 for risk.
    data = [_behavior([6, 0, 0], copies=2), _behavior([2, 0, 0]), _overlapping()]
    names = ["agreeableness", "narcissism", "risk"]
    return diagnose(names, [g for g, _ in data], [y for _, y in data], beta=0.1, lr=0.01, steps=100)


def test_diagnosis_numbers_by_hand():
    dx = _three()
    norm = math.sqrt(56**2 + 10**2)
    assert [s.D for s in dx.stats] == pytest.approx([6, 2, 2])
    assert torch.allclose(dx.priority.weights, torch.tensor([8, 4, 5], dtype=torch.float64) / 17)
    assert torch.allclose(dx.priority.P, torch.tensor([56 / norm, 56 / norm, 10 / norm], dtype=torch.float64))
    # Theorem 4.1 at t = 100: 6 * beta * lr * t * D = 0.6 * D.
    assert dx.bounds == pytest.approx([3.6, 1.2, 1.2])
    assert dx.gaps.gap.shape == (3, 3)
    assert dx.constants[0]["C_hat"] == pytest.approx(math.sqrt(2) / 4)  # balanced classes


def test_table_ranks_by_D_then_projection():
    rows = _three().table()
    # narcissism and risk tie at D = 2; narcissism projects 2 * 0.984 onto b_bar, risk 2 * 0.176.
    assert [r["behavior"] for r in rows] == ["agreeableness", "narcissism", "risk"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[2]["separable_share"] == pytest.approx(0.6)
    assert rows[0]["bound"] == pytest.approx(3.6)


def test_explain_names_fastest_last_and_overlapping():
    lines = _three().explain()
    text = "\n".join(lines)
    assert lines[0] == (
        "agreeableness is the most distinguishable (D=6, 3.0x the least, risk); "
        "DPO should lower its loss fastest."
    )
    assert "predicted order is agreeableness > narcissism > risk" in text
    assert (
        "risk has priority P=0.18, far below the mean direction (prefdyn's threshold P < 0.3): "
        "in a joint run it will be learned last."
    ) in text
    assert "risk: classes overlap (only 60% separable along mu+-mu-): expect slow, noisy learning." in text
    assert "constant 6 is loose here" in text
    assert "sampling noise" not in text


def test_explain_flags_noise_dominated_D():
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(40, 64, generator=gen, dtype=torch.float64)
    g, y = _behavior([30] + [0] * 63)
    dx = diagnose(["real", "noise"], [g, noise], [y, torch.arange(40) % 2 == 0], beta=0.1, lr=0.01, steps=10)
    text = "\n".join(dx.explain())
    assert "noise: much of D is sampling noise" in text
    assert "real: much of D" not in text


def test_explain_flags_opposing_behavior_and_common_mean():
    a, b = _behavior([4, 0, 0], copies=3), _behavior([-1, 0.5, 0])
    # An unbalanced behavior sharing a large common mean: C_hat > 6 (see tests/theory/test_bounds.py).
    c = torch.tensor([[x, 100.0, 0.0] for x in (0, 2, 4, 1, -1)], dtype=torch.float64)
    dx = diagnose(
        ["a", "b", "c"],
        [a[0], b[0], c],
        [a[1], b[1], torch.tensor([True, True, True, False, False])],
        beta=0.1,
        lr=0.01,
        steps=10,
    )
    text = "\n".join(dx.explain())
    assert "b points against the mean direction" in text
    assert "exceeds Theorem 4.1's 6 because the classes are unbalanced (3/2 Yes/No" in text
    assert "centering" not in text and "centered" not in text


def test_single_behavior_and_json():
    g, y = _behavior([3, 4, 0])
    dx = diagnose(["only"], [g], [y], beta=0.1, lr=0.01, steps=10)
    assert dx.explain()[0].startswith("only: D=5")
    assert dx.gaps.gap.tolist() == [[0.0]]
    out = json.loads(json.dumps(dx.to_dict()))
    assert out["behaviors"][0]["D"] == pytest.approx(5.0)
    assert out["behaviors"][0]["weight"] == pytest.approx(1.0)


def test_bad_input_raises():
    g, y = _behavior([1, 0, 0])
    with pytest.raises(DataError, match="as many"):
        diagnose(["a", "b"], [g], [y], beta=0.1, lr=0.01, steps=1)
    with pytest.raises(DataError, match="repeat"):
        diagnose(["a", "a"], [g, g], [y, y], beta=0.1, lr=0.01, steps=1)
    with pytest.raises(DataError, match="widths"):
        diagnose(["a", "b"], [g, g[:, :2]], [y, y], beta=0.1, lr=0.01, steps=1)
    with pytest.raises(DataError, match="^lonely: .*1 sample"):
        diagnose(["lonely"], [g[:3]], [y[:3]], beta=0.1, lr=0.01, steps=1)
    with pytest.raises(PrefdynError, match="beta"):
        diagnose(["a"], [g], [y], beta=0.0, lr=0.01, steps=1)
