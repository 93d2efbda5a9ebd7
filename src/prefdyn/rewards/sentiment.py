"""A sentiment-lexicon reward: VADER's compound score (Hutto & Gilbert 2014).

The control of the vanishing-gradient study: a dense reward in [-1, 1] that almost
every response moves, so few inputs should have a small reward std (Razin et al.'s
IMDB case, "few inputs w/ small std"). ``vaderSentiment`` ships its lexicon.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.rewards.registry import register_reward


@functools.cache
def _analyzer():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise PrefdynError("the sentiment reward needs vaderSentiment: "
                           "pip install vaderSentiment") from e
    return SentimentIntensityAnalyzer()


@register_reward("sentiment")
def sentiment(prompts: Sequence[str], responses: Sequence[str],
              references: Sequence[str | None] | None = None) -> Tensor:
    """VADER's compound polarity of the response, in [-1, 1] (the reference is unused)."""
    analyzer = _analyzer()
    return torch.tensor([analyzer.polarity_scores(y)["compound"] for y in responses])
