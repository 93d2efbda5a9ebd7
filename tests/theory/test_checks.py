"""Theorems 4.2-4.3 bounds (hand values and validity), tail estimates, and the A.3 identity."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from prefdyn.diagnostics import theorem42_constants
from prefdyn.errors import PrefdynError
from prefdyn.policies import stack_problems
from prefdyn.theory import (
    accuracy_bound,
    check_theorem41,
    check_theorem42,
    dpo_last_layer_grad,
    estimate_alpha,
    first_step_identity,
    gn_psi_norm,
    psi_norm,
    theorem42_bound,
    theorem43_bound,
    two_class_law,
)
from prefdyn.theory.checks import gn_moment_ratio
from prefdyn.training import TrainConfig, fit_last_layer


# ------------------------------------------------------------------ 4.2 ---

def test_theorem42_bound_by_hand():
    # kappa = 0.1, cos(m, b) = 0.9. rho(1) = 0 (the first step is exact);
    # rho(2) = ((1.1^2 - 1) / 0.1 - 2) / 2 = (2.1 - 2) / 2 = 0.05, bound = 0.85 / 1.05;
    # rho(3) = ((1.331 - 1) / 0.1 - 3) / 3 = 0.31 / 3, bound = (0.9 - 0.31/3) / (1 + 0.31/3).
    got = theorem42_bound(torch.tensor([0, 1, 2, 3]), 0.9, 0.1)
    rho3 = 0.31 / 3
    expected = torch.tensor([-1.0, 0.9, 0.85 / 1.05, (0.9 - rho3) / (1 + rho3)], dtype=torch.float64)
    assert got.dtype == torch.float64
    assert torch.allclose(got, expected, atol=1e-12)


def test_theorem42_bound_limits():
    # kappa = 0: sigma never leaves 1/2's linearization, the direction stays m's.
    assert torch.allclose(theorem42_bound(torch.arange(1, 5), 0.7, 0.0), torch.full((4,), 0.7, dtype=torch.float64))
    # Far past 1 / kappa the bound is vacuous (-1), and stays finite.
    far = theorem42_bound(10_000, 0.99, 1.0)
    assert far.item() == -1.0
    assert theorem42_bound(5, 1.0 + 1e-12, 0.1).item() <= 1.0
    with pytest.raises(PrefdynError):
        theorem42_bound(5, 0.5, -0.1)


def test_theorem42_bound_holds_along_gradient_descent():
    # Full-batch GD in float64 with the closed-form gradient: cos(u(t), b) stays above the bound.
    gen = torch.Generator().manual_seed(0)
    law = two_class_law(32, 0.3, alpha=1.0, generator=gen)
    g, y = law.sample(200, generator=gen, pos_share=0.55)
    beta, lr = 0.3, 0.5
    c = theorem42_constants(g, y, beta=beta, lr=lr, b=law.b)
    W0 = torch.zeros(2, 32, dtype=torch.float64)
    W, cos = W0.clone(), []
    for _ in range(40):
        W = W - lr * dpo_last_layer_grad(W, W0, g, y, beta)
        cos.append(float(torch.nn.functional.cosine_similarity(W[0] - W[1], law.b, dim=0)))
    bound = theorem42_bound(torch.arange(1, 41), c["cos_m_b"], c["kappa"]).numpy()
    assert np.all(np.array(cos) >= bound - 1e-12)
    assert cos[0] == pytest.approx(c["cos_m_b"], abs=1e-12)  # u(1) = eta beta m exactly
    assert c["kappa"] > 0 and (bound > 0).sum() > 3  # and the bound said something for a while
    check = check_theorem42(np.arange(1, 41), np.array(cos), bound)
    assert check["holds"] and check["horizon"] >= 4


# ------------------------------------------------------------------ 4.3 ---

def test_theorem43_bound_by_hand():
    # 1 - 2 exp(-(2/1)^2) = 1 - 2 e^-4;  1 - 2 exp(-(3/1.5)^1) = 1 - 2 e^-2; margin <= 0 or tiny: 0.
    got = theorem43_bound(torch.tensor([2.0, -1.0, 0.1]), 1.0, 2.0)
    assert torch.allclose(got, torch.tensor([1 - 2 * math.exp(-4), 0.0, 0.0], dtype=torch.float64))
    assert theorem43_bound(3.0, 1.5, 1.0).item() == pytest.approx(1 - 2 * math.exp(-2))
    with pytest.raises(PrefdynError):
        theorem43_bound(1.0, 0.0, 2.0)


def test_theorem43_bound_is_below_the_gaussian_accuracy():
    # Noise N(0, 1) along u: accuracy Phi(margin); psi_2 norm sqrt(8/3).
    margins = torch.linspace(0.1, 5, 50, dtype=torch.float64)
    bound = theorem43_bound(margins, gn_psi_norm(2.0), 2.0).numpy()
    assert np.all(bound <= stats.norm.cdf(margins.numpy()))


def test_psi_norm_by_hand():
    # x = (1, 1), alpha 1: exp(1/K) = 2, K = 1/log 2. x = (0, 2), alpha 2: (1 + exp(4/K^2))/2 = 2, K = 2/sqrt(log 3).
    assert psi_norm(torch.tensor([1.0, 1.0]), 1.0).item() == pytest.approx(1 / math.log(2), rel=1e-9)
    assert psi_norm(torch.tensor([0.0, 2.0]), 2.0).item() == pytest.approx(2 / math.sqrt(math.log(3)), rel=1e-9)
    rows = psi_norm(torch.tensor([[1.0, 1.0], [2.0, 2.0]]), 1.0)
    assert torch.allclose(rows, torch.tensor([1, 2], dtype=torch.float64) / math.log(2))


def test_gn_moment_ratio_and_alpha_estimate():
    assert gn_moment_ratio(2.0) == pytest.approx(math.sqrt(2 / math.pi))
    assert gn_moment_ratio(1.0) == pytest.approx(1 / math.sqrt(2))
    gen = torch.Generator().manual_seed(0)
    for alpha in (2.0, 1.0, 0.5):
        law = two_class_law(20, 0.5, alpha=alpha, generator=gen)
        assert estimate_alpha(law.noise(20_000, True, generator=gen)) == pytest.approx(alpha, rel=0.06)


def test_accuracy_bound_below_measured_accuracy():
    gen = torch.Generator().manual_seed(0)
    law = two_class_law(16, 0.5, alpha=1.0, generator=gen)  # D = 4
    noise = torch.randn(16, generator=gen, dtype=torch.float64)
    u = torch.stack([torch.zeros(16, dtype=torch.float64), law.b, law.b + noise])
    res = [law.noise(4000, c, generator=gen) for c in (True, False)]
    bound = accuracy_bound(u, law.mu_pos, law.mu_neg, *res, alpha=1.0)
    g, y = law.sample(4000, generator=gen)
    acc = ((g @ u.T > 0) == y[:, None]).double().mean(0)
    assert bound[0] == 0.0  # no direction yet
    assert torch.all(bound[1:] > 0.3) and torch.all(bound[1:] <= acc[1:])


# ---------------------------------------------------------- 4.1, checks ---

def test_check_theorem41_by_hand():
    # bound = 6 * 0.5 * 0.1 * 4 t = 1.2 t; rate = max(0.1/1, 0.15/2) = 0.1; C = 0.1 / (0.5*0.1*4) = 0.5.
    c = check_theorem41(np.array([0, 1, 2]), np.array([0.0, 0.1, 0.15]), beta=0.5, lr=0.1, d=16, D=4.0)
    assert c["holds"] and c["rate"] == pytest.approx(0.1) and c["C_emp"] == pytest.approx(0.5)
    assert c["slack"] == pytest.approx(2.4 / 0.15)
    assert not check_theorem41(np.array([0, 1]), np.array([0.0, 1.3]), beta=0.5, lr=0.1, d=16, D=4.0)["holds"]


# ------------------------------------------------------------------- A.3 ---

def _hand_mixture():
    # Behavior 0: g+ = (2, 0), g- = (0, 0), b_0 = (2, 0). Behavior 1: g+ = (0, 1), g- = (0, 0), b_1 = (0, 1).
    g = torch.tensor([[2.0, 0], [0, 0], [0, 1], [0, 0]], dtype=torch.float64)
    return g, torch.tensor([True, False, True, False]), torch.tensor([0, 0, 1, 1])


def test_a3_identity_by_hand():
    # m = ((2,0) - 0 + (0,1) - 0) / 4 = (0.5, 0.25), b_bar = 2m = (1, 0.5) = (b_0 + b_1) / 2.
    # eta = 0.1, beta = 2: logit change_j = (eta beta / 2) <b_bar, b_j> = 0.1 * (2, 0.5) = (0.2, 0.05);
    # reward margin_j = eta beta^2 <m, m_j>, m_0 = (1, 0), m_1 = (0, 0.5): 0.4 * (0.5, 0.125) = (0.2, 0.05).
    a3 = first_step_identity(*_hand_mixture(), beta=2.0, lr=0.1)
    expected = torch.tensor([0.2, 0.05], dtype=torch.float64)
    assert torch.allclose(a3.logit_predicted, expected, rtol=0, atol=1e-15)
    assert torch.allclose(a3.logit_measured, expected, rtol=0, atol=1e-15)
    assert torch.allclose(a3.reward_measured, expected, rtol=0, atol=1e-15)
    assert torch.allclose(a3.b_bar, torch.tensor([1.0, 0.5], dtype=torch.float64))
    assert a3.max_abs_error < 1e-15


@pytest.mark.parametrize("balanced", [True, False])
def test_a3_identity_is_exact_on_random_mixtures(balanced):
    gen = torch.Generator().manual_seed(int(balanced))
    sizes = [(6, 6), (10, 10), (4, 4)] if balanced else [(3, 9), (7, 2), (5, 5)]
    g = torch.randn(sum(p + n for p, n in sizes), 7, generator=gen, dtype=torch.float64) + 3.0
    y = torch.cat([torch.arange(p + n) < p for p, n in sizes])
    groups = torch.cat([torch.full((p + n,), k) for k, (p, n) in enumerate(sizes)])
    W0 = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    a3 = first_step_identity(g, y, groups, beta=0.3, lr=0.7, W0=W0)
    assert torch.allclose(a3.logit_measured, a3.logit_predicted, rtol=1e-12, atol=1e-13)
    assert torch.allclose(a3.reward_measured, a3.reward_predicted, rtol=1e-12, atol=1e-13)
    if balanced:
        # b_bar is then Eq. 5's sample-share mean of the b_j and the reward margin (eta beta^2 / 4) <b_bar, b_j>.
        assert torch.allclose(a3.b_bar, a3.weights @ a3.bs, atol=1e-13)
        assert torch.allclose(a3.reward_predicted, 0.7 * 0.09 / 4 * (a3.bs @ a3.b_bar), atol=1e-13)
        assert torch.allclose(a3.priority, torch.nn.functional.cosine_similarity(a3.b_bar[None], a3.bs, dim=-1))


def test_a3_identity_through_the_trainer():
    # The same first step taken by fit_last_layer (float32): per-behavior margins after step 1.
    g, y, groups = _hand_mixture()
    data = stack_problems([g.float()], [y], groups=[groups])
    run = fit_last_layer(torch.zeros(2, 2), data, TrainConfig(steps=1, lr=0.1, beta=2.0), names=["mix"],
                         group_names=["b0", "b1"])
    margins = run.history.last("margin", by="group")
    assert [margins["b0"], margins["b1"]] == pytest.approx([0.2, 0.05], rel=1e-6)
