"""Shared-prefix key/value reuse for hidden-state extraction.

The prompts of one task share a long token prefix (chat template, system
prompt, question). The prefix is run once; its key/value cache is copied for
every batch and only the suffixes go through the model. Exact up to float
round-off, because the prefix is cut in token space (the suffix tokens are the
very tokens of the full text) and suffix position ids continue from the
prefix length.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from prefdyn.models.kv_cache import cache_kwargs, output_cache
from prefdyn.models.segment_attention import NAME as SEGMENTS


def common_prefix_length(token_ids: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving >= 1 suffix token per text.

    The last token must stay in the suffix: its hidden state is what we read.
    """
    if not token_ids:
        return 0
    shortest = min(len(ids) for ids in token_ids)
    first = token_ids[0]
    n = 0
    while n < shortest - 1 and all(ids[n] == first[n] for ids in token_ids):
        n += 1
    return n


def prefix_cache(decoder, prefix_ids: Sequence[int], device: torch.device):
    """Run the prefix once (batch 1) and return its filled key/value cache."""
    input_ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
    return output_cache(decoder(input_ids=input_ids, use_cache=True))


def suffix_last_hidden(decoder, cache, prefix_len: int, suffixes: Sequence[Sequence[int]],
                       pad_id: int, device: torch.device) -> torch.Tensor:
    """Final hidden state at each suffix's last token, given the shared prefix ``cache``
    (``None`` with ``prefix_len`` 0: the suffixes are the whole texts, a plain forward).

    Suffixes are right-padded: with causal attention no real token ever sees a
    pad, and the last real position is gathered per row. Returns (B, d).
    """
    batch, width = len(suffixes), max(len(s) for s in suffixes)
    lengths = torch.tensor([len(s) for s in suffixes], device=device)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    for row, ids in enumerate(suffixes):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    suffix_mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
    attention_mask = torch.cat(
        [torch.ones(batch, prefix_len, dtype=torch.long, device=device), suffix_mask.long()], dim=1)
    position_ids = (prefix_len + torch.arange(width, device=device)).expand(batch, width)
    prefix = {}
    if cache is not None:
        # The model appends the suffix keys/values to the cache it is given, so
        # each batch gets its own copy, repeated to the batch size.
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(batch)
        prefix = cache_kwargs(decoder, batch_cache)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=cache is not None, **prefix)
    return out.last_hidden_state[torch.arange(batch, device=device), lengths - 1]


def packing_exact(decoder, longest: int) -> bool:
    """Whether a packed forward of ``decoder`` (several segments in one sequence, a block
    mask, per-segment position ids) equals its plain forward, rows up to ``longest`` tokens.

    It does where positions enter through ``position_ids`` only (rotary embeddings, not
    learned or ALiBi positions), the attention takes a 4-D mask as given ("sdpa" or
    "eager", or SDPA block by block: :mod:`prefdyn.models.segment_attention`), and no
    sliding window is shorter than a row.
    """
    config = getattr(decoder, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", SEGMENTS):
        return False
    if not hasattr(decoder, "rotary_emb"):
        return False
    window = getattr(config, "sliding_window", None)
    return not window or window >= longest
