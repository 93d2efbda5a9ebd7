import math

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.losses import PreferenceLogps, available_losses, get_loss, reduce_loss


def _logps(chosen, rejected, ref_chosen, ref_rejected):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return PreferenceLogps(t(chosen), t(rejected), t(ref_chosen), t(ref_rejected))


def test_dpo_matches_hand_computed_value():
    # h_chosen = -1 - (-2) = 1, h_rejected = -3 - (-2) = -1; beta = 0.5
    # loss = -log sigmoid(0.5 * (1 - (-1))) = -log sigmoid(1) = log(1 + e^-1)
    out = get_loss("dpo", beta=0.5)(_logps([-1.0], [-3.0], [-2.0], [-2.0]))
    assert out.losses.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)
    assert out.metrics["chosen_reward"].item() == pytest.approx(0.5)
    assert out.metrics["rejected_reward"].item() == pytest.approx(-0.5)
    assert set(out.metrics) == {"chosen_reward", "rejected_reward"}


def test_dpo_at_reference_is_log2():
    out = get_loss("dpo", beta=0.1)(_logps([-1.0, -5.0], [-2.0, -0.5], [-1.0, -5.0], [-2.0, -0.5]))
    assert torch.allclose(out.losses, torch.full((2,), math.log(2), dtype=torch.float64))


def test_ipo_matches_hand_computed_value():
    # h = 1 - (-1) = 2, beta = 0.25 -> target 1/(2*0.25) = 2 -> loss 0; and h=0 -> 4
    out = get_loss("ipo", beta=0.25)(_logps([-1.0, 0.0], [-3.0, 0.0], [-2.0, 0.0], [-2.0, 0.0]))
    assert out.losses.tolist() == pytest.approx([0.0, 4.0])


def test_hinge_matches_hand_computed_value():
    # beta * (h_c - h_r) = 0.1 * 2 = 0.2 -> loss 0.8 ; 2.0 * 2 = 4 -> 0
    assert get_loss("hinge", beta=0.1)(_logps([-1.0], [-3.0], [-2.0], [-2.0])).losses.item() == pytest.approx(0.8)
    assert get_loss("hinge", beta=2.0)(_logps([-1.0], [-3.0], [-2.0], [-2.0])).losses.item() == pytest.approx(0.0)


def test_reduce_loss_sums_problem_means():
    losses = torch.tensor([[1.0, 3.0, 100.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert reduce_loss(losses, mask).item() == pytest.approx(2.0 + 2.0)


def test_registry_errors_are_clear():
    assert {"dpo", "ipo", "hinge"} <= set(available_losses())
    with pytest.raises(PrefdynError, match="unknown loss 'nope'"):
        get_loss("nope")
    with pytest.raises(PrefdynError, match="no parameter"):
        get_loss("dpo", gamma=1.0)
