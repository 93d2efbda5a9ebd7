"""The plain per-step record: means of the objective's metrics and, for sampled groups,
the share of groups whose rewards all agree."""

from types import SimpleNamespace

import torch

from prefdyn.tracking.history import History
from prefdyn.tracking.step_metrics import StepMetrics


def test_step_metrics_records_the_share_of_groups_whose_rewards_agree():
    history = History()
    logps = SimpleNamespace(rewards=torch.tensor([1.0, 1.0, 0.0, 1.0]), groups=torch.tensor([0, 0, 1, 1]))
    out = SimpleNamespace(loss=torch.tensor(0.5), grad_norm=torch.tensor(2.0), logps=logps,
                          out=SimpleNamespace(metrics={"reward": torch.tensor([1.0, 0.0]),
                                                       "kl": torch.tensor([])}))
    StepMetrics(history, name="rl").on_step_end(SimpleNamespace(step=1, max_steps=1), None, out)
    (record,) = history.records
    assert record["frac_reward_zero_std"] == 0.5 and record["reward"] == 0.5
    assert "kl" not in record and record["grad_norm"] == 2.0  # an empty metric is no number
