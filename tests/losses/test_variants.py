import math

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.losses import PreferenceLogps, available_losses, get_loss
from prefdyn.losses.variants import with_sft


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _logps(chosen, rejected, ref_chosen, ref_rejected, chosen_len=None, rejected_len=None):
    return PreferenceLogps(_t(chosen), _t(rejected), _t(ref_chosen), _t(ref_rejected),
                           None if chosen_len is None else _t(chosen_len),
                           None if rejected_len is None else _t(rejected_len))


# One pair used throughout: h_chosen = -1 - (-2) = 1, h_rejected = -3 - (-2) = -1, beta = 0.5
# so z = beta * (h_c - h_r) = 1; L(z) = log(1 + e^-1) = 0.313261687518; L(-z) = log(1 + e) = 1.313261687518.
PAIR = {"chosen": [-1.0], "rejected": [-3.0], "ref_chosen": [-2.0], "ref_rejected": [-2.0]}
L_POS, L_NEG = 0.313261687518, 1.313261687518


def test_variants_are_registered():
    assert {"cdpo", "robust", "simpo"} <= set(available_losses())


def test_cdpo_matches_hand_computed_value():
    # 0.75 * 0.313261687518 + 0.25 * 1.313261687518 = 0.563261687518
    out = get_loss("cdpo", beta=0.5, label_smoothing=0.25)(_logps(**PAIR))
    assert out.losses.item() == pytest.approx(0.563261687518, abs=1e-9)
    assert (out.metrics["chosen_reward"].item(), out.metrics["rejected_reward"].item()) == pytest.approx((0.5, -0.5))


def test_robust_matches_hand_computed_value():
    # (0.75 * 0.313261687518 - 0.25 * 1.313261687518) / (1 - 0.5) = -0.186738312482
    out = get_loss("robust", beta=0.5, label_smoothing=0.25)(_logps(**PAIR))
    assert out.losses.item() == pytest.approx(-0.186738312482, abs=1e-9)


def test_zero_smoothing_is_dpo():
    logps = _logps([-1.0, -4.0], [-3.0, -1.0], [-2.0, -2.5], [-2.0, -0.7])
    dpo = get_loss("dpo", beta=0.3)(logps).losses
    for name in ("cdpo", "robust"):
        assert torch.allclose(get_loss(name, beta=0.3, label_smoothing=0.0)(logps).losses, dpo)
    assert L_POS == pytest.approx(math.log(1 + math.exp(-1)))


def test_smoothing_out_of_range_is_refused():
    with pytest.raises(PrefdynError, match="label_smoothing"):
        get_loss("robust", label_smoothing=0.5)(_logps(**PAIR))
    with pytest.raises(PrefdynError, match="label_smoothing"):
        get_loss("cdpo", label_smoothing=-0.1)(_logps(**PAIR))


def test_simpo_matches_hand_computed_value():
    # chosen -2 over 2 tokens -> -1; rejected -6 over 3 tokens -> -2; beta = 2, gamma = 0.5
    # loss = -log sigmoid(2 * (-1 - (-2)) - 0.5) = log(1 + e^-1.5) = 0.201413277982
    logps = PreferenceLogps(_t([-2.0]), _t([-6.0]), None, None, _t([2.0]), _t([3.0]))
    out = get_loss("simpo", beta=2.0, gamma=0.5)(logps)
    assert out.losses.item() == pytest.approx(0.201413277982, abs=1e-9)
    # reference-free: the rewards are SimPO's beta * average log-prob
    assert (out.metrics["chosen_reward"].item(), out.metrics["rejected_reward"].item()) == pytest.approx((-2.0, -4.0))


def test_simpo_ignores_the_reference_but_reports_dpo_rewards():
    a = _logps([-2.0], [-6.0], [-2.0], [-2.0], [2.0], [3.0])
    b = _logps([-2.0], [-6.0], [-9.0], [-0.1], [2.0], [3.0])
    sa, sb = get_loss("simpo", beta=2.0)(a), get_loss("simpo", beta=2.0)(b)
    assert sa.losses.item() == pytest.approx(sb.losses.item())
    assert sb.metrics["chosen_reward"].item() == pytest.approx(2.0 * 7.0)  # beta * (-2 - (-9))


def test_simpo_without_lengths_treats_answers_as_single_tokens():
    # -log sigmoid(1 * (-1 - (-3)) - 0) = log(1 + e^-2) = 0.126928011043
    out = get_loss("simpo", beta=1.0, gamma=0.0)(_logps(**PAIR))
    assert out.losses.item() == pytest.approx(0.126928011043, abs=1e-9)


def test_with_sft_adds_length_normalized_nll_of_chosen():
    dpo = get_loss("dpo", beta=0.5)
    # single token: 0.313261687518 + 0.1 * 1 = 0.413261687518
    assert with_sft(dpo, 0.1)(_logps(**PAIR)).losses.item() == pytest.approx(0.413261687518, abs=1e-9)
    # chosen over 4 tokens: 0.313261687518 + 0.2 * (1 / 4) = 0.363261687518
    out = with_sft(dpo, 0.2)(_logps(**PAIR, chosen_len=[4.0], rejected_len=[1.0]))
    assert out.losses.item() == pytest.approx(0.363261687518, abs=1e-9)
    assert out.metrics["chosen_reward"].item() == pytest.approx(0.5)
    with pytest.raises(PrefdynError):
        with_sft(dpo, -1.0)


def test_dpo_sft_adds_the_length_normalized_nll_of_the_chosen_response():
    # DPO part: L_POS (beta 0.5, as above); SFT part: -log pi(y+) / |y+| = 1 / 2 = 0.5, weight 2.
    lp = _logps(**PAIR, chosen_len=[2.0], rejected_len=[1.0])
    out = get_loss("dpo_sft", beta=0.5, sft_weight=2.0)(lp)
    assert out.losses.item() == pytest.approx(L_POS + 2.0 * 0.5, abs=1e-9)
    assert get_loss("dpo_sft", beta=0.5)(lp).losses.item() == pytest.approx(L_POS + 0.5, abs=1e-9)
