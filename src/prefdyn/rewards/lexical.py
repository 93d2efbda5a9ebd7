"""Rewards against a reference response: exact match (also the persona bandit's +-1),
ROUGE-L (through the ``rouge-score`` package), and the bandit's per-token reward table.

Razin et al. (ICLR 2024) run RL fine-tuning on GRUE generation tasks scored against
references; prefdyn builds such tasks from data it has (e.g. HH-RLHF prompts with
the chosen response as reference) and the persona task as a one-step bandit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.rewards.registry import register_reward


def _normalize(text: str) -> str:
    return " ".join(text.split()).lower()


@register_reward("exact_match", needs_reference=True)
def exact_match(prompts: Sequence[str], responses: Sequence[str],
                references: Sequence[str], *, hit: float = 1.0, miss: float = 0.0) -> Tensor:
    """``hit`` when the response equals the reference up to case and whitespace, else ``miss``."""
    return torch.tensor([hit if _normalize(y) == _normalize(ref) else miss
                         for y, ref in zip(responses, references)])


@register_reward("persona", needs_reference=True)
def persona_reward(prompts: Sequence[str], responses: Sequence[str],
                   references: Sequence[str]) -> Tensor:
    """The persona task as a one-step bandit: +1 for the answer matching the behavior
    (the reference, e.g. " Yes"), -1 otherwise."""
    return exact_match(prompts, responses, references, hit=1.0, miss=-1.0)


@register_reward("rouge_l", needs_reference=True)
def rouge_l(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str],
            *, stemmer: bool = True) -> Tensor:
    """ROUGE-L F-measure of the response against the reference, in [0, 1] (``rouge-score``,
    the Google Research implementation GRUE uses)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise PrefdynError("the rouge_l reward needs rouge-score: pip install rouge-score") from e
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)
    return torch.tensor([scorer.score(ref, y)["rougeL"].fmeasure
                         for y, ref in zip(responses, references)])


def target_token_rewards(targets: Tensor, vocab_size: int, *, hit: float = 1.0,
                         miss: float = -1.0) -> Tensor:
    """The bandit's reward of every answer token: ``(n,) target ids -> (n, V)``, ``hit`` at
    each prompt's target token (any per-prompt token, e.g. the persona's matching
    answer) and ``miss`` elsewhere. The exact V_x and its std follow from the softmax."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    if targets.dim() != 1:
        raise PrefdynError(f"targets must be one token id per prompt, got shape {tuple(targets.shape)}")
    if len(targets) and not (0 <= int(targets.min()) and int(targets.max()) < vocab_size):
        raise PrefdynError(f"target token ids must be in [0, {vocab_size}), got "
                           f"{int(targets.min())}..{int(targets.max())}")
    table = torch.full((len(targets), vocab_size), float(miss))
    table[torch.arange(len(targets)), targets] = float(hit)
    return table
