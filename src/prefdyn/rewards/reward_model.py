"""A Bradley-Terry reward model: a scalar head on the LM's last hidden state.

Im & Li (2024), Eq. 1: "Under the Bradley-Terry model (Bradley & Terry, 1952), the
preference distribution is modeled as $p^*(y_w \\succ y_l|x) = \\sigma(r^*(x, y_w) -
r^*(x, y_l))$"; the model ``r`` is fit by Eq. 2, the registered loss
``bradley_terry`` (:mod:`prefdyn.losses.reward_model`); it is trained on preference
pairs through the one loop and cached by :mod:`prefdyn.training.reward_model`. This
module is the model and its use as a reward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prefdyn.rewards.registry import register_reward


class RewardModel(nn.Module):
    """``r(x, y) = w^T h_last + b``: ``h_last`` is the backbone's final hidden state at
    the last real (non-pad) token of prompt + response; the backbone is any
    transformers model that returns ``hidden_states`` (a causal LM works)."""

    def __init__(self, backbone: nn.Module, hidden_size: int | None = None):
        super().__init__()
        self.backbone = backbone
        hidden_size = hidden_size or backbone.config.hidden_size
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)  # every response starts at reward 0
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Scores ``(n,)`` of token sequences ``(n, L)`` (left or right padded)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            output_hidden_states=True)
        hidden = out.hidden_states[-1]                                     # (n, L, d)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (attention_mask.long() * (positions + 1)).argmax(-1)        # last real token
        h = hidden[torch.arange(len(hidden), device=hidden.device), last]
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1)

    def score_texts(self, tokenizer, texts: Sequence[str]) -> Tensor:
        """Scores of whole texts (prompt + response already joined), tokenized without added
        special tokens, as the embedding cache's g(x) is (the head-only reward model trains on it)."""
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
        device = self.head.weight.device
        return self(enc["input_ids"].to(device), enc["attention_mask"].to(device))


@register_reward("reward_model")
def reward_model_reward(prompts: Sequence[str], responses: Sequence[str],
                        references: Sequence[str | None] | None = None, *,
                        model: RewardModel, tokenizer) -> Tensor:
    """The reward model's score of prompt + response (no gradient; the reference is unused)."""
    with torch.no_grad():
        return model.score_texts(tokenizer, [x + y for x, y in zip(prompts, responses)]).float().cpu()
