"""The plainest per-step record: a batch's loss, its objective's metrics, the gradient norm.

For objectives whose metrics have no pair structure to analyse (policy gradient,
SFT, the reward model's Bradley-Terry loss): every named per-example metric the
objective reports (``reward``, ``advantage``, ``kl``, ``chosen_reward``, ...) is
averaged over the batch. A batch of sampled groups (rewards and group ids on the
policy's output, as :class:`~prefdyn.losses.RolloutLogps` carries them) also records
``frac_reward_zero_std``: the share of its groups whose rewards all agree, whose
advantages (and so gradient) vanish (Razin et al., ICLR 2024).
"""

from __future__ import annotations

from typing import Any

from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History
from prefdyn.tracking.reward_spread import group_frac_zero_std


class StepMetrics(Callback):
    """One record per logged step (every ``log_every`` and the last): ``loss``, the batch
    mean of each of the objective's (non-empty) metrics, ``grad_norm`` and, for sampled
    groups, ``frac_reward_zero_std``; tagged ``problem=name``."""

    def __init__(self, history: History, *, name: str, log_every: int = 1):
        self.history, self.name, self.log_every = history, name, log_every

    def on_step_end(self, state, policy, out) -> None:
        if state.step % self.log_every and state.step != state.max_steps:
            return
        record: dict[str, Any] = {"step": state.step, "split": "train", "problem": self.name,
                                  "group": None, "loss": out.loss.item()}
        for key, values in out.out.metrics.items():
            if values.numel():
                record[key] = values.float().mean().item()
        record["grad_norm"] = out.grad_norm.item()
        rewards, groups = getattr(out.logps, "rewards", None), getattr(out.logps, "groups", None)
        if rewards is not None and groups is not None and groups.numel():
            record["frac_reward_zero_std"] = group_frac_zero_std(rewards, groups)
        self.history.add(record)
