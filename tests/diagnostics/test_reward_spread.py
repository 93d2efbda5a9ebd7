"""Reward spread: the bandit's exact moments, gradient and derived bound; Monte Carlo."""

import math

import pytest
import torch

from prefdyn.diagnostics.reward_spread import (bandit_reward_spread, expected_gradient_norms,
                                               expected_reward_logit_grad, frac_reward_zero_std,
                                               monte_carlo_spread, predicted_frac_zero_std)
from prefdyn.errors import PrefdynError
from prefdyn.losses import BanditLogps, get_loss
from prefdyn.rewards import target_token_rewards


def test_bandit_moments_and_logit_gradient_by_hand():
    # p = (1/2, 1/4, 1/4), r = (1, -1, -1): V = 0, std = 1, grad = p * r = (1/2, -1/4, -1/4)
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    r = torch.tensor([[1.0, -1.0, -1.0]])
    s = bandit_reward_spread(logits, r)
    assert s.mean.item() == pytest.approx(0.0, abs=1e-7) and s.std.item() == pytest.approx(1.0)
    assert s.logit_grad_norm.item() == pytest.approx(math.sqrt(0.25 + 2 / 16))
    assert s.bound.item() == pytest.approx(math.sqrt(0.5))


def test_logit_gradient_is_autograd_of_the_expected_reward_and_obeys_the_bound():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 50, generator=gen) * torch.linspace(0.1, 8, 64)[:, None])
    rewards = target_token_rewards(torch.randint(50, (64,), generator=gen), 50)
    z = logits.double().requires_grad_(True)
    (torch.softmax(z, -1) * rewards.double()).sum().backward()
    torch.testing.assert_close(expected_reward_logit_grad(logits.double(), rewards.double()), z.grad)
    s = bandit_reward_spread(logits, rewards)
    assert (s.logit_grad_norm <= s.bound * (1 + 1e-5) + 1e-12).all()
    assert (s.bound <= s.std * (1 + 1e-6)).all()
    assert s.std.min() < 1e-3 < s.std.max()  # sharp logits reach the small-std regime


def test_parameter_gradient_norm_per_input_is_autograd_of_each_v_x():
    lin = torch.nn.Linear(4, 5)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    rewards = target_token_rewards(torch.tensor([0, 1, 2]), 5)
    values = -get_loss("expected_reward")(BanditLogps(torch.log_softmax(lin(x), -1), rewards)).losses
    norms = expected_gradient_norms(values, lin.parameters())
    for i in range(3):
        lin.zero_grad()
        values[i].backward(retain_graph=True)
        want = math.sqrt(lin.weight.grad.pow(2).sum() + lin.bias.grad.pow(2).sum())
        assert norms[i].item() == pytest.approx(want, rel=1e-5)


def test_monte_carlo_mean_std_and_interval():
    # samples (1, 0, 1, 0): mean 0.5, Bessel std sqrt(1/3); 95%: 1.959964 * std / 2
    s = monte_carlo_spread(torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    half = 1.959964 * math.sqrt(1 / 3) / 2
    assert s.mean.item() == 0.5 and s.std.item() == pytest.approx(math.sqrt(1 / 3))
    assert (s.ci_low.item(), s.ci_high.item()) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-5)
    with pytest.raises(PrefdynError, match="k >= 2"):
        monte_carlo_spread(torch.ones(3, 1))


def test_zero_std_share_and_its_prediction():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert frac_reward_zero_std(r) == 0.5
    # p = 1/2, k = 3: 1/8 + 1/8 ; p = 0: 1 -> mean 5/8
    assert predicted_frac_zero_std(torch.tensor([0.5, 0.0]), 3) == pytest.approx(0.625)


def test_predicted_zero_std_share_matches_sampling():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(4000, generator=gen)
    draws = (torch.rand(4000, 4, generator=gen) < p[:, None]).float()
    assert frac_reward_zero_std(draws) == pytest.approx(predicted_frac_zero_std(p, 4), abs=0.03)
