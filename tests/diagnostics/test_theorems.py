"""The theorems' assumptions and constants measured on data: Theorem 4.1's C_hat, 4.2's
constants (hand values) and the assumption checks on and off the theorems' setting."""

import math

import pytest
import torch

from prefdyn.diagnostics import check_assumptions, estimate_theorem41_constants, theorem42_constants
from prefdyn.errors import DataError, PrefdynError
from prefdyn.theory import dpo_last_layer_grad, two_class_law


def _balanced():
    # mu+ = (2, 0), mu- = (-2, 0), D = 4; m = (2 mu+ - 2 mu-) / 4 = (2, 0).
    g = torch.tensor([[2.0, 1], [2, -1], [-2, 1], [-2, -1]], dtype=torch.float64)
    return g, torch.tensor([True, True, False, False])


def test_constants_balanced_by_hand():
    # ||grad||_F = beta / sqrt2 * ||m|| = 0.5 / sqrt2 * 2 = sqrt(2)/2;
    # C_hat = (sqrt(2)/2) / (beta D) = (sqrt(2)/2) / (0.5 * 4) = sqrt(2)/4.
    c = estimate_theorem41_constants(*_balanced(), beta=0.5)
    assert c["grad_norm"] == pytest.approx(math.sqrt(2) / 2)
    assert c["C_hat"] == pytest.approx(math.sqrt(2) / 4)
    assert c["theorem_constant"] == 6.0
    assert (c["d"], c["D"], c["Delta"]) == pytest.approx((2.0, 4.0, 2.0))
    assert c["beta_prime"] == pytest.approx(0.5 * math.sqrt(2))


def test_constants_grad_norm_is_the_closed_form_gradient_at_w0():
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(11, 5, generator=gen, dtype=torch.float64) + 3.0
    prefers_yes = torch.arange(11) < 7
    W0 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    grad = dpo_last_layer_grad(W0, W0, G, prefers_yes, beta=0.2)
    c = estimate_theorem41_constants(G, prefers_yes, beta=0.2)
    assert c["grad_norm"] == pytest.approx(float(grad.norm()))


def test_common_mean_with_unbalanced_classes_breaks_the_constant():
    # Yes x: 0, 2, 4; No x: 1, -1; all at y = c. D = 2 for every c, but
    # m = (3 mu+ - 2 mu-) / 5 = (6/5, c/5): C_hat = ||m|| / (sqrt2 * D).
    labels = torch.tensor([True, True, True, False, False])
    for c, expected in [(3.0, 3 / (2 * math.sqrt(10))), (100.0, math.hypot(1.2, 20) / (2 * math.sqrt(2)))]:
        g = torch.tensor([[0, c], [2, c], [4, c], [1, c], [-1, c]], dtype=torch.float64)
        out = estimate_theorem41_constants(g, labels, beta=0.1)
        assert out["D"] == pytest.approx(2.0)
        assert out["C_hat"] == pytest.approx(expected)
    assert out["C_hat"] > 6


def test_constants_reject_bad_input():
    with pytest.raises(PrefdynError):
        estimate_theorem41_constants(*_balanced(), beta=0.0)
    with pytest.raises(DataError):
        estimate_theorem41_constants(torch.zeros(3, 2), torch.tensor([True, False, False]), beta=0.1)


def test_theorem42_constants_by_hand():
    # g = (2, 0), (2, 2) prefer Yes; (0, 0), (0, -2) prefer No. m = ((2,0)+(2,2)-(0,0)-(0,-2))/4 = (1, 1);
    # b = (2, 1) - (0, -1) = (2, 2): cos(m, b) = 1. G^T G / n = [[8, 4], [4, 8]] / 4: lambda = 3.
    g = torch.tensor([[2.0, 0], [2, 2], [0, 0], [0, -2]], dtype=torch.float64)
    y = torch.tensor([True, True, False, False])
    c = theorem42_constants(g, y, beta=0.5, lr=0.2)
    assert c["m_norm"] == pytest.approx(math.sqrt(2))
    assert c["cos_m_b"] == pytest.approx(1.0)
    assert c["lambda"] == pytest.approx(3.0)
    assert c["kappa"] == pytest.approx(0.2 * 0.25 * 3 / 2)


def test_assumptions_hold_on_the_theorems_setting_and_fail_off_it():
    gen = torch.Generator().manual_seed(0)
    good = check_assumptions(*two_class_law(64, 0.4, alpha=1.0, generator=gen).sample(2000, generator=gen))
    assert good.all_hold, good.to_dict()
    assert good.alpha_hat == pytest.approx(1.0, rel=0.1)
    off = two_class_law(64, 0.1, common_mean=30.0, generator=gen).sample(2000, generator=gen, pos_share=0.75)
    bad = check_assumptions(*off)
    assert {"balanced", "centered", "concentrated"} <= set(bad.failed)
