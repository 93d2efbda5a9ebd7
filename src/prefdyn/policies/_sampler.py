"""Sampling inside ``generate`` by inverse CDF: one uniform a row, not one a vocabulary entry.

``generate(do_sample=True)`` draws each token with ``torch.multinomial(softmax(scores), 1)``,
which on CPU generates an exponential variate for every vocabulary entry (49,152 for
SmolLM2): 16 ms a decode step for 16 rows on 2 cores, growing with the rows.
Inverse-CDF sampling draws the same distribution
with one uniform a row: ``cumsum`` of the probabilities (fp64) and a binary search, well
under a millisecond.

:func:`sampling_processors` plugs it into transformers' own decoding loop: HF's
temperature / top-k / top-p warpers (the ones ``do_sample=True`` would build, in the same
order), then :class:`InverseCdfSampler`, which returns scores that are 0 at the drawn token
and -inf elsewhere; ``generate(do_sample=False)`` then selects that token (its argmax).
Everything else (the KV cache, EOS and padding of finished rows, stopping) is
``generate``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


class InverseCdfSampler(LogitsProcessor):
    """Draws one token a row from ``softmax(scores)`` with ``generator``; returns 0 at it
    and -inf elsewhere. ``nonfinite`` (a device flag, read once after ``generate``, so no
    host round trip a token) is set when a row's probabilities were not finite."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.nonfinite: Tensor | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        probs = torch.softmax(scores.float(), dim=-1)
        cdf = probs.cumsum(-1, dtype=torch.float64)
        total = cdf[:, -1:]
        bad = ~torch.isfinite(total).all()
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad
        u = torch.rand(total.shape, generator=self.generator, dtype=torch.float64,
                       device=scores.device) * total
        # right=True: the first entry whose cdf exceeds u, never a zero-probability token
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


def sampling_processors(generator: torch.Generator, *, temperature: float, top_k: int | None,
                        top_p: float | None) -> tuple[LogitsProcessorList, InverseCdfSampler]:
    """HF's warpers for ``temperature`` / ``top_k`` / ``top_p`` followed by the sampler, for
    ``generate(do_sample=False, logits_processor=...)``; and the sampler (its flag)."""
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    sampler = InverseCdfSampler(generator)
    processors.append(sampler)
    return processors, sampler
