"""Policy-gradient, SFT, bandit and reward-model objectives against hand-computed values."""

import math

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.losses import BanditLogps, PairScores, PreferenceLogps, RolloutLogps, get_loss
from prefdyn.losses.policy_gradient import grpo_advantages, rloo_advantages


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _rollout(rewards, groups, logps=None, mask=None, **kw):
    n = len(rewards)
    logps = _t(logps if logps is not None else [[-1.0, -2.0]] * n).requires_grad_(True)
    mask = _t(mask if mask is not None else [[1.0, 1.0]] * n)
    return RolloutLogps(logps, mask, _t(rewards), torch.tensor(groups), **kw)


def test_rloo_subtracts_the_mean_of_the_other_samples():
    # group 0: [1, 0, 0] -> 1 - 0, 0 - (1+0)/2, 0 - (1+0)/2 ; group 1: [2, 4] -> -2, 2
    adv = rloo_advantages(_t([1.0, 0.0, 0.0, 2.0, 4.0]), torch.tensor([0, 0, 0, 1, 1]))
    assert adv.tolist() == pytest.approx([1.0, -0.5, -0.5, -2.0, 2.0])


def test_grpo_advantage_scalings_match_trl():
    r, g = _t([1.0, 0.0, 3.0, 3.0]), torch.tensor([0, 0, 1, 1])
    # group [1, 0]: mean 0.5, unbiased std sqrt(0.5); group [3, 3]: std 0
    s = math.sqrt(0.5) + 1e-4
    assert grpo_advantages(r, g, "group").tolist() == pytest.approx([0.5 / s, -0.5 / s, 0, 0])
    # batch std of [1, 0, 3, 3]: mean 1.75, sum of squares 6.75, / 3 -> 2.25 -> 1.5
    assert grpo_advantages(r, g, "batch").tolist() == pytest.approx([0.5 / 1.5001, -0.5 / 1.5001, 0, 0])
    assert grpo_advantages(r, g, "none").tolist() == pytest.approx([0.5, -0.5, 0, 0])
    with pytest.raises(PrefdynError, match="scale"):
        grpo_advantages(r, g, "std")


@pytest.mark.parametrize("name", ["rloo", "grpo", "ppo_clip"])
def test_group_of_one_is_a_clear_error(name):
    with pytest.raises(PrefdynError, match="at least 2 samples per prompt"):
        get_loss(name)(_rollout([1.0, 0.0], [0, 1]))


def test_reinforce_gradient_is_minus_advantage_on_each_response_token():
    # rewards 1 and 3, baseline 2: advantages -1, +1; the pad of sample 1 gets nothing.
    ro = _rollout([1.0, 3.0], [0, 1], mask=[[1.0, 1.0], [1.0, 0.0]])
    out = get_loss("reinforce", baseline=2.0)(ro)
    out.losses.sum().backward()
    assert ro.logps.grad.tolist() == [[1.0, 1.0], [-1.0, 0.0]]
    assert out.metrics["advantage"].tolist() == [-1.0, 1.0]
    assert out.metrics["length"].tolist() == [2.0, 1.0]
    # on-policy the ratio is 1: the loss value is -A per token
    assert out.losses.tolist() == pytest.approx([2.0, -1.0])


def test_rloo_gradient_uses_leave_one_out_advantages():
    ro = _rollout([1.0, 0.0, 0.0], [0, 0, 0])
    get_loss("rloo")(ro).losses.sum().backward()
    assert ro.logps.grad[:, 0].tolist() == pytest.approx([-1.0, 0.5, 0.5])


def test_ppo_clip_stops_the_gradient_of_a_clipped_ratio_only_on_the_gaining_side():
    # one token each; old logp log(1/1.5) below the current 0 -> ratio 1.5; eps 0.2
    ro = RolloutLogps(_t([[0.0], [0.0]]).requires_grad_(True), _t([[1.0], [1.0]]), _t([1.0, 0.0]),
                      torch.tensor([0, 0]), old_logps=_t([[-math.log(1.5)], [-math.log(1.5)]]))
    out = get_loss("ppo_clip", clip_eps=0.2, advantage="none")(ro)
    # A = 1: min(1.5, 1.2) = 1.2 (clipped, no gradient); A = 0: 0
    assert out.losses.tolist() == pytest.approx([-1.2, 0.0])
    out.losses.sum().backward()
    assert ro.logps.grad.tolist() == [[0.0], [0.0]]
    assert out.metrics["clip_frac"].tolist() == [1.0, 0.0]
    # A = -1 with ratio 1.5: min(-1.5, -1.2) = -1.5 is unclipped: loss 1.5, d/dlogp = 1.5
    ro2 = RolloutLogps(_t([[0.0]]).requires_grad_(True), _t([[1.0]]), _t([-1.0]),
                       torch.tensor([0]), old_logps=_t([[-math.log(1.5)]]))
    out2 = get_loss("ppo_clip", advantage="none")(ro2)
    out2.losses.sum().backward()
    assert out2.losses.item() == pytest.approx(1.5) and ro2.logps.grad.item() == pytest.approx(1.5)


def test_kl_penalty_is_the_k3_estimator_and_needs_the_reference():
    # pi = 0.5, pi_ref = 0.25 on the one token: q = log 0.5, k3 = 0.5 - log 0.5 - 1
    ro = _rollout([0.0], [0], logps=[[math.log(0.5)]], mask=[[1.0]], ref_logps=_t([[math.log(0.25)]]))
    out = get_loss("reinforce", beta=2.0)(ro)
    k3 = 0.5 - math.log(0.5) - 1.0
    assert out.metrics["kl"].item() == pytest.approx(k3)
    assert out.losses.item() == pytest.approx(2.0 * k3)
    with pytest.raises(PrefdynError, match="reference"):
        get_loss("reinforce", beta=0.1)(_rollout([0.0], [0]))


def test_rewards_of_the_wrong_shape_are_rejected():
    ro = _rollout([1.0, 0.0], [0, 0])
    ro.rewards = _t([1.0])
    with pytest.raises(PrefdynError, match="one per sample"):
        get_loss("rloo")(ro)


def test_sft_is_the_per_token_nll_of_the_labelled_response():
    pair = PreferenceLogps(_t([-6.0]), _t([-1.0]), None, None, _t([3.0]), _t([1.0]))
    assert get_loss("sft")(pair).losses.item() == pytest.approx(2.0)
    assert get_loss("sft", length_normalize=False)(pair).losses.item() == pytest.approx(6.0)
    ro = _rollout([0.0], [0], logps=[[-1.0, -2.0, -9.0]], mask=[[1.0, 1.0, 0.0]])
    assert get_loss("sft")(ro).losses.item() == pytest.approx(1.5)


def test_expected_reward_is_the_exact_sum_over_the_vocabulary():
    # p = (1/2, 1/4, 1/4), r = (+1, -1, -1): V = 0, Var = 1 ; r = (1, 0, 0): V = 1/2, std 1/2
    logps = _t([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]).log()
    out = get_loss("expected_reward")(BanditLogps(logps, _t([[1.0, -1.0, -1.0], [1.0, 0.0, 0.0]])))
    assert out.losses.tolist() == pytest.approx([0.0, -0.5])
    assert out.metrics["reward_std"].tolist() == pytest.approx([1.0, 0.5])
    # KL(p || uniform) = sum p log(3p)
    kl = sum(p * math.log(3 * p) for p in (0.5, 0.25, 0.25))
    ref = torch.full((2, 3), 1 / 3, dtype=torch.float64).log()
    out = get_loss("expected_reward", beta=0.5)(BanditLogps(logps, _t([[1.0, 0, 0]] * 2), ref))
    assert out.metrics["kl"].tolist() == pytest.approx([kl, kl])
    assert out.losses.tolist() == pytest.approx([-0.5 + 0.5 * kl] * 2)


def test_bradley_terry_is_eq2_per_pair():
    out = get_loss("bradley_terry")(PairScores(_t([1.0]), _t([0.0])))
    assert out.losses.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert out.metrics["chosen_reward"].item() == 1.0


def test_available_losses_by_the_container_they_take():
    from prefdyn.losses import available_losses

    assert available_losses(BanditLogps) == ["expected_reward"]
    assert set(available_losses(RolloutLogps)) == {"grpo", "ppo_clip", "reinforce", "rloo", "sft"}
    assert "dpo" in available_losses(PreferenceLogps) and "rloo" not in available_losses(PreferenceLogps)
