"""Reward spread per prompt inside an unmodified TRL ``GRPOTrainer``, beside its prediction.

    from prefdyn.integrations.trl import RewardSpreadCallback
    spread = RewardSpreadCallback("runs/grpo")
    trainer = GRPOTrainer(model=model, reward_funcs=spread.watch(reward_fn), args=GRPOConfig(...),
                          train_dataset=data, callbacks=[spread])
    trainer.train()

A prompt whose k sampled completions all get the same reward gives GRPO (and RLOO) a
zero update; Razin et al. (ICLR 2024): "Expected gradient for an input vanishes when
reward std is small, even if reward mean is suboptimal". :meth:`RewardSpreadCallback.watch`
wraps the reward function, so the callback sees every group of k rewards as TRL computes
it, and records per generation batch:

* ``reward_std``: the mean over prompts of the std of each prompt's k rewards (Bessel's
  correction, as TRL's ``nanstd``), and every prompt's std in the run folder;
* ``frac_reward_zero_std``: the share of prompts whose k rewards are all equal
  (:func:`~prefdyn.diagnostics.reward_spread.frac_reward_zero_std`; TRL logs the same
  share of its summed reward under the same name);
* ``predicted_frac_zero_std``: for a 0/1 reward, ``p^k + (1-p)^k`` averaged over the
  prompts (:func:`~prefdyn.diagnostics.reward_spread.predicted_frac_zero_std`), with ``p``
  each prompt's success rate over its *earlier* samples (this batch left out, so the
  prediction is made before the outcome it predicts); prompts seen for the first time
  are left out of it, and it is missing until some prompt comes back.

They are logged through the trainer's own logging (the ``log_metric`` hook TRL hands to
reward functions: averaged per logging step, every ``report_to`` backend) and appended
to prefdyn's run folder (``metrics.jsonl``). Single process: under several processes each
sees its own share of the groups.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from prefdyn.diagnostics.reward_spread import (
    frac_reward_zero_std,
    predicted_frac_zero_std,
)
from prefdyn.errors import PrefdynError
from prefdyn.tracking.history import History
from prefdyn.tracking.run_dir import RunDir

__all__ = ["RewardSpreadCallback"]


def _key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


class RewardSpreadCallback(TrainerCallback):
    """Reward std per prompt and the zero-std share beside its prediction (module docstring).

    Args:
        run_dir: prefdyn's run folder.
        num_generations: k; default: the trainer's ``args.num_generations``, read at train start.
    """

    prefix = "prefdyn/"

    def __init__(self, run_dir: str | Path, *, num_generations: int | None = None):
        self.run = RunDir(run_dir)
        self.history = History(self.run)
        self.k = num_generations
        self.seen: dict[str, list[int]] = {}  # prompt -> [successes, samples] before this batch

    def watch(self, reward_func: Callable[..., list[float]]) -> Callable[..., list[float]]:
        """``reward_func`` unchanged, its rewards also recorded (pass this to ``GRPOTrainer``)."""

        @functools.wraps(reward_func)
        def watched(prompts, completions, **kwargs):
            rewards = reward_func(prompts=prompts, completions=completions, **kwargs)
            state = kwargs.get("trainer_state")
            # The rewards feed the next optimizer step, the one TRL logs them under.
            self.observe(prompts, rewards, step=None if state is None else state.global_step + 1,
                         log_metric=kwargs.get("log_metric"))
            return rewards

        return watched

    def on_train_begin(self, args, state, control, **kwargs):
        if self.k is None:
            self.k = getattr(args, "num_generations", None)

    def observe(self, prompts: list[Any], rewards: list[float | None], *, step: int | None = None,
                log_metric: Callable[[str, float], None] | None = None) -> dict[str, Any]:
        """Record one generation batch: ``prompts`` each repeated k times in a row, as TRL
        samples them, and their ``rewards`` (None: not applicable, NaN)."""
        k = self.k
        if k is None or k < 2:
            raise PrefdynError(f"RewardSpreadCallback needs num_generations >= 2, got {k}: pass it or "
                               "add the callback to the trainer (it reads args.num_generations)")
        if len(prompts) % k:
            raise PrefdynError(f"{len(prompts)} completions are not whole groups of {k}")
        keys = [_key(p) for p in prompts[::k]]
        if any(_key(p) != keys[i // k] for i, p in enumerate(prompts)):
            raise PrefdynError(f"the completions do not come in groups of {k} of one prompt")
        r = torch.tensor([float("nan") if x is None else float(x) for x in rewards],
                         dtype=torch.float64).view(-1, k)
        std = r.std(1)  # Bessel's correction, as TRL's nanstd
        record: dict[str, Any] = {"reward_std": float(std.nanmean()),
                                  "frac_reward_zero_std": frac_reward_zero_std(r)}
        binary = bool(((r == 0) | (r == 1)).all())
        if binary:
            known = [i for i, key in enumerate(keys) if key in self.seen]
            if known:
                p = torch.tensor([self.seen[keys[i]][0] / self.seen[keys[i]][1] for i in known])
                record["predicted_frac_zero_std"] = predicted_frac_zero_std(p, k)
                record["predicted_on"] = len(known) / len(keys)
            for key, row in zip(keys, r):
                s = self.seen.setdefault(key, [0, 0])
                s[0], s[1] = s[0] + int(row.sum()), s[1] + k
        if log_metric is not None:
            for name, value in record.items():
                log_metric(f"{self.prefix}{name}", value)
        self.history.add({"step": step, "split": "train", "problem": "grpo", "group": None, **record,
                          "k": k, "binary_reward": binary, "reward_std_per_prompt": std.tolist()})
        return record

    def on_log(self, args, state, control, logs=None, **kwargs):
        # TRL's own measurement beside prefdyn's, in the run folder.
        if logs and "frac_reward_zero_std" in logs:
            self.history.add({"step": state.global_step, "split": "trl_log", "problem": "grpo",
                              "group": None, "frac_reward_zero_std": logs["frac_reward_zero_std"]})

    def on_train_end(self, args, state, control, **kwargs):
        records = [r for r in self.history.records if r["split"] == "train"]
        last = records[-1] if records else {}
        self.run.write_summary({k: v for k, v in last.items() if k != "reward_std_per_prompt"})
        self.run.close()
