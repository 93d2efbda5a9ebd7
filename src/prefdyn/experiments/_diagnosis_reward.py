"""Reward spread per prompt for ``prefdyn diagnose --reward NAME`` (Razin et al., ICLR 2024).

"Expected gradient for an input vanishes when reward std is small, even if reward mean
is suboptimal" (:mod:`prefdyn.diagnostics.reward_spread`). Per distinct prompt (the
first ``n_prompts`` in load order), with the chosen response as the reward's reference:

* every pair single-token: exact, from the softmax over the whole vocabulary (the
  one-step bandit; the reward is evaluated on every token);
* otherwise Monte Carlo: ``k`` responses sampled from the model (at most
  ``max_new_tokens`` tokens each, :class:`~prefdyn.policies.rollout.RolloutStream`).

``zero_std_share`` is the share of prompts with no reward spread: all k samples agree
(Monte Carlo, TRL's ``frac_reward_zero_std``), or an exact std below :data:`ZERO_STD`.
"""

from __future__ import annotations

from typing import Any

import torch

from prefdyn.data.sources import PairsData
from prefdyn.diagnostics.reward_spread import bandit_reward_spread, frac_reward_zero_std, monte_carlo_spread
from prefdyn.embeddings import extract_embeddings
from prefdyn.embeddings.extract import _progress_bar
from prefdyn.policies.rollout import RolloutStream
from prefdyn.rewards import get_reward

ZERO_STD = 1e-3
"""prefdyn's threshold: an exact reward std below this gives (almost) no expected gradient."""


def _prompts(data: PairsData, usable: list[int], n_prompts: int) -> list[int]:
    seen: dict[str, int] = {}
    for i in usable:
        seen.setdefault(data.pairs[i].prompt, i)
        if len(seen) == n_prompts:
            break
    return list(seen.values())


def _exact(loaded, prompts: list[str], refs: list[str], reward) -> dict[str, Any]:
    g = extract_embeddings(loaded.model, loaded.tokenizer, prompts)
    W = loaded.model.get_output_embeddings().weight.detach().float().cpu()
    logits = g @ W.T
    tokens = [loaded.tokenizer.decode([v]) for v in range(W.shape[0])]
    rewards = torch.stack([reward([p] * len(tokens), tokens, [r] * len(tokens)) for p, r in zip(prompts, refs)])
    spread = bandit_reward_spread(logits, rewards)
    return {"method": "exact", "k": None, "mean": spread.mean.tolist(), "std": spread.std.tolist(),
            "zero_std_share": float((spread.std < ZERO_STD).double().mean())}


def _sampled(loaded, prompts: list[str], refs: list[str], reward, *, k: int, max_new_tokens: int,
             seed: int, progress: bool) -> dict[str, Any]:
    stream = RolloutStream(loaded.model, loaded.tokenizer, prompts, reward, references=refs, group_size=k,
                           prompts_per_batch=4, max_new_tokens=max_new_tokens, seed=seed,
                           replay=False)  # scored, never trained on
    rows = []
    with _progress_bar(len(prompts), progress, "reward samples") as advance:
        for start in range(0, len(prompts), 4):
            chunk = list(range(start, min(start + 4, len(prompts))))
            rows.append(stream.sample(chunk).rewards.reshape(len(chunk), k).cpu())
            advance(len(chunk))
    rewards = torch.cat(rows)
    spread = monte_carlo_spread(rewards)
    return {"method": "monte_carlo", "k": k, "max_new_tokens": max_new_tokens,
            "mean": spread.mean.tolist(), "std": spread.std.tolist(),
            "zero_std_share": frac_reward_zero_std(rewards)}


def reward_spread(loaded, data: PairsData, usable: list[int], single_token: bool, name: str, *,
                  k: int = 4, max_new_tokens: int = 16, n_prompts: int = 8, seed: int = 0,
                  progress: bool = False) -> dict[str, Any]:
    """The reward spread of the first ``n_prompts`` distinct prompts (module docstring)."""
    reward = get_reward(name)
    records = _prompts(data, usable, n_prompts)
    prompts = [data.pairs[i].prompt for i in records]
    refs = [data.pairs[i].chosen for i in records]
    if single_token:
        out = _exact(loaded, prompts, refs, reward)
    else:
        out = _sampled(loaded, prompts, refs, reward, k=k, max_new_tokens=max_new_tokens, seed=seed,
                       progress=progress)
    return {"reward": name, "records": records, **out}
