import math

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.losses import RolloutLogps, get_loss
from prefdyn.losses.bandit import BanditLogps
from prefdyn.losses.entropy import with_entropy_bonus


def test_entropy_bonus_by_hand():
    logps = torch.log(torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 1e-30, 1e-30, 1e-30]]))
    rewards = torch.tensor([[1.0, -1.0, -1.0, -1.0], [1.0, -1.0, -1.0, -1.0]])
    out = with_entropy_bonus(get_loss("expected_reward"), 0.1)(BanditLogps(logps, rewards))
    # -V - 0.1 H: V = (-0.5, 1), H = (log 4, ~0)
    torch.testing.assert_close(out.losses, torch.tensor([0.5 - 0.1 * math.log(4), -1.0]),
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.metrics["entropy"], torch.tensor([math.log(4), 0.0]), atol=1e-6, rtol=0)


def test_entropy_bonus_refuses_sampled_responses_and_negative_coefficients():
    lp = torch.zeros(2, 1)
    ro = RolloutLogps(lp, torch.ones_like(lp), torch.ones(2), torch.tensor([0, 0]))
    with pytest.raises(PrefdynError, match="full answer distribution"):
        with_entropy_bonus(get_loss("rloo"), 0.1)(ro)
    with pytest.raises(PrefdynError, match=">= 0"):
        with_entropy_bonus(get_loss("rloo"), -1.0)
