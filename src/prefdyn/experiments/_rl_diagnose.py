"""``prefdyn diagnose --reward NAME``: the reward spread per prompt before any training.

Razin et al. (ICLR 2024): "Expected gradient for an input vanishes when reward std is
small, even if reward mean is suboptimal" -- so the reward std of each prompt under the
model is a diagnostic of what RL fine-tuning can move, available before training. With
the ``persona`` reward the behaviors' prompts are the one-step bandit (the matching
answer token +1, any other -1) and every number is exact; any other registered reward
scores ``k`` sampled responses per prompt against the preferred answer as reference.
"""

from __future__ import annotations

from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.workspace import Workspace
from prefdyn.policies.bandit import BanditStream
from prefdyn.rewards import get_reward
from prefdyn.tracking.reward_spread import InputSpread, bandit_spread, sampled_spread

SMALL_STD = 0.1


def behavior_spread(ws: Workspace, i: int, loaded, reward: str, *, k: int, seed: int) -> InputSpread:
    """The spread of every prompt of behavior ``i`` under ``loaded.model``."""
    b, tok = ws.behaviors[i], loaded.tokenizer
    yes, no = ws.answer_ids
    if reward == "persona":
        ids = tok(b.prompts, add_special_tokens=False)["input_ids"]
        targets = [yes if p else no for p in b.prefers_yes.tolist()]
        stream = BanditStream(ids, targets, vocab_size=loaded.model.get_output_embeddings().weight.shape[0],
                              pad_id=tok.pad_token_id, batch_size=len(ids))
        return bandit_spread(loaded.model, stream.collate(list(range(len(ids)))), k=k, seed=seed)
    return sampled_spread(loaded.model, tok, b.prompts, get_reward(reward), rows=range(b.n),
                          references=b.chosen_answers(), k=k, seed=seed)


def add_reward_spread(res: ExperimentResult, ws: Workspace, loaded, reward: str, *, k: int = 8,
                      seed: int = 0) -> None:
    """A reward-spread table (one row per behavior) in ``res`` and its summary."""
    rows, summary = [], {}
    for i, name in enumerate(ws.names):
        s = behavior_spread(ws, i, loaded, reward, k=k, seed=seed)
        small = s.small(SMALL_STD)
        stats = {"prompts": len(s), "mean reward": float(s.mean.mean()),
                 "median std": float(s.std.median()), f"std < {SMALL_STD:g}": float(small.double().mean()),
                 f"frac_reward_zero_std (k={k})": s.frac_reward_zero_std,
                 "p^k+(1-p)^k": s.predicted_frac_zero_std}
        summary[name] = stats
        rows.append({"behavior": name, **stats})
    res.summary["reward_spread"] = {"reward": reward, "k": k, "behaviors": summary}
    res.tables.append(((f"Reward spread per behavior under the model ({reward}; "
                       f"{'exact one-token bandit' if reward == 'persona' else f'{k} samples a prompt'})"),
                       rows))
    res.notes.append("Reward spread (Razin et al., ICLR 2024): a prompt whose reward std under "
                     "the model is small gets a small expected policy gradient however poor its "
                     "reward; frac_reward_zero_std is the share of prompts whose k sampled "
                     "rewards agree (zero RLOO/GRPO update), beside its prediction p^k + (1-p)^k.")
