"""Sampling inside ``generate`` by inverse CDF: one uniform a row, not one a vocabulary entry.

``generate(do_sample=True)`` draws each token with ``torch.multinomial(softmax(scores), 1)``,
which on CPU generates an exponential variate for every vocabulary entry (49,152 for
SmolLM2): 16 ms a decode step for 16 rows on 2 cores, growing with the rows.
Inverse-CDF sampling draws the same distribution
with one uniform a row and a binary search in the fp64 CDF, built in two levels (the
blocks' sums, then one block) so that no vocabulary-long fp64 scan runs and no
(64 x 49,152) fp64 CDF is kept: the one-level CDF cost up to 25-30 ms a decode step.
(torch's fp64 sum of the blocks still casts the probabilities inside its kernel.)

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

BLOCK = 512  # tokens a block of the two-level CDF (SmolLM2: 96 blocks)


class InverseCdfSampler(LogitsProcessor):
    """Draws one token a row from ``softmax(scores)`` with ``generator``; returns 0 at it
    and -inf elsewhere. ``nonfinite`` (a device flag, read once after ``generate``, so no
    host round trip a token) is set when a row's probabilities were not finite."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.nonfinite: Tensor | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        probs = torch.softmax(scores.float(), dim=-1)
        u01 = torch.rand((len(probs), 1), generator=self.generator, dtype=torch.float64,
                         device=scores.device)
        token, total = inverse_cdf(probs, u01)
        bad = ~torch.isfinite(total).all()
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


def inverse_cdf(probs: Tensor, u01: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """For each row of ``probs`` (n, V), the token whose CDF interval holds ``u01 * total``
    (``u01`` (n, 1) uniform in [0, 1)), and the total, both (n, 1); fp64 sums.

    In two levels, so that no vocabulary-long fp64 scan runs: the CDF of the
    ``block``-token blocks' sums picks the block, then the CDF inside that block picks the
    token. Bound to the first entry whose CDF exceeds the target (``right=True``), so a
    zero-probability token is never drawn; where the two levels' round-off put the
    target at or past the block's own total, it is moved just below it (the block's last
    token with probability > 0).
    """
    n, V = probs.shape
    pad = -V % block
    blocks = (probs if not pad else torch.nn.functional.pad(probs, (0, pad))).view(n, -1, block)
    # The fp64 sums cost ~4 ms of the sampler's ~7 ms a decode step at 64 rows: most of
    # an LM's probabilities are fp32 subnormals (< 1.2e-38), slow to convert on x86.
    # Summing the blocks in fp32 would save ~0.2 s a full-size GRPO rollout batch, but on
    # the embedded model it moved 2 of ~19,000 draws (5 batches of 64 rows x 64 tokens;
    # targets within fp32 round-off of a boundary): not done, so the draws stay those of
    # the one-level fp64 CDF.
    sums = blocks.sum(-1, dtype=torch.float64).cumsum(-1)                 # (n, V / block)
    total = sums[:, -1:]
    target = u01 * total
    b = torch.searchsorted(sums, target, right=True).clamp_(max=sums.shape[1] - 1)
    before = torch.where(b > 0, sums.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(target))
    inner = blocks.gather(1, b[:, :, None].expand(n, 1, block)).squeeze(1).double().cumsum(-1)
    rest = torch.minimum(target - before, torch.nextafter(inner[:, -1:], torch.zeros_like(target)))
    t = torch.searchsorted(inner, rest, right=True).clamp_(max=block - 1)
    return (b * block + t).clamp_(max=V - 1), total


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
