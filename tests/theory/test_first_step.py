import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.theory import a3_eq22_logit_factor, a3_logit_gap_factor, a3_reward_factor, dpo_last_layer_grad


def test_factors_by_hand():
    # beta = 0.1, eta = 2: beta^2 eta / 4 = 0.005; eta beta / 4 = 0.05; eta beta / 2 = 0.1.
    assert a3_reward_factor(0.1, 2.0) == pytest.approx(0.005)
    assert a3_eq22_logit_factor(0.1, 2.0) == pytest.approx(0.05)
    assert a3_logit_gap_factor(0.1, 2.0) == pytest.approx(0.1)
    # Eq. 24 is beta times Eq. 22's logit quantity.
    assert a3_reward_factor(0.1, 2.0) == pytest.approx(0.1 * a3_eq22_logit_factor(0.1, 2.0))
    with pytest.raises(PrefdynError):
        a3_reward_factor(0.0, 1.0)


def test_factors_match_one_gradient_step():
    # Two balanced behaviors in d = 2: behavior 0 has +(2, 0), -(0, 0) so b_0 = (2, 0);
    # behavior 1 has +(0, 1), -(0, -1) so b_1 = (0, 2). b_bar = (1, 1); b_bar . b_j = 2 for both.
    g = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([True, False, True, False])
    beta, eta = 0.5, 3.0
    W0 = torch.zeros(2, 2, dtype=torch.float64)
    W1 = W0 - eta * dpo_last_layer_grad(W0, W0, g, y, beta)
    logit = g @ (W1[0] - W1[1])  # the Yes-minus-No logit after the step (0 before)
    sign = y.double() * 2 - 1
    for j, rows in enumerate((slice(0, 2), slice(2, 4))):
        gap = logit[rows][0] - logit[rows][1]  # class-mean gap of behavior j
        assert gap.item() == pytest.approx(a3_logit_gap_factor(beta, eta) * 2)
        # Eq. 22: (1/n) over each half (n = 2 rows here) = half the gap.
        assert (gap / 2).item() == pytest.approx(a3_eq22_logit_factor(beta, eta) * 2)
        reward = (beta * sign[rows] * logit[rows]).mean()
        assert reward.item() == pytest.approx(a3_reward_factor(beta, eta) * 2)
