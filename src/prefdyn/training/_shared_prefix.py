"""Shared-prefix forward for single-token answers, exact and differentiable.

The prompts of a persona batch share a long token prefix (chat template and
question: 35 of 47-58 tokens for SmolLM2). The decoder runs that prefix once
(batch 1), its key/value cache is *expanded* (a view, no copy) over the batch,
and only the right-padded suffixes go through the model with an attention mask
covering prefix + suffix. The hidden state at each row's last real token is
what :meth:`prefdyn.training.lm_policy.LMPolicy.answer_logps` reads.

It is exact up to float round-off: the prefix is cut in token space, each row
still sees its own tokens at positions ``0..len-1`` (as in the left-padded
plain path), and no real token attends to a pad (the suffix pads are at the
end, behind the causal mask). Gradients flow back through the expanded cache
into the single prefix computation, so full fine-tuning trains the prefix's
layers as the plain path does; ``expand``'s backward sums the rows' cache
gradients. With dropout active (LoRA's default 0.05 in train mode) the plain
path runs instead, so every row keeps its own dropout mask.

The no-grad sibling for embedding extraction is :mod:`prefdyn.embeddings._prefix`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Below this many shared tokens the extra prefix forward is not worth it.
MIN_SHARED_PREFIX = 8


def _right_aligned(input_ids: Tensor, lengths: Tensor) -> Tensor:
    """Left-padded (n, T) ids moved to the left edge; entries past a row's length are junk."""
    width = input_ids.shape[1]
    start = width - lengths
    idx = (start[:, None] + torch.arange(width, device=input_ids.device)).clamp(max=width - 1)
    return input_ids.gather(1, idx)


def shared_prefix_length(input_ids: Tensor, attention_mask: Tensor) -> int:
    """Longest common token prefix of the real tokens of left-padded prompts.

    Leaves at least one suffix token per row (its last hidden state is read).
    Returns 0 when the batch is not cleanly left-padded (a row with a pad after
    a real token), so callers fall back to the plain forward.
    """
    n, width = input_ids.shape
    lengths = attention_mask.sum(-1)
    left_padded = torch.arange(width, device=input_ids.device)[None, :] >= (width - lengths)[:, None]
    if n == 0 or not torch.equal(attention_mask.bool(), left_padded):
        return 0
    ids = _right_aligned(input_ids, lengths)
    limit = int(lengths.min()) - 1
    if limit <= 0:
        return 0
    same = (ids[:, :limit] == ids[:1, :limit]).all(0)
    differs = (~same).nonzero()
    return int(differs[0]) if len(differs) else limit


def _expand_cache(cache, n: int) -> bool:
    """Expand every layer of a batch-1 DynamicCache to ``n`` rows, as views.

    Returns False (cache untouched) when a layer is not a plain dynamic layer
    (sliding-window, quantized, ...), whose update rule could differ.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return False
    for layer in layers:
        layer.keys = layer.keys.expand(n, *layer.keys.shape[1:])
        layer.values = layer.values.expand(n, *layer.values.shape[1:])
    return True


def _dropout_active(decoder: nn.Module) -> bool:
    """Whether a forward in the current mode would drop anything (e.g. LoRA's dropout)."""
    if not decoder.training:
        return False
    if getattr(getattr(decoder, "config", None), "attention_dropout", 0.0):
        return True
    return any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in decoder.modules())


def _plain_last_hidden(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                       position_ids: Tensor) -> Tensor:
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                     position_ids=position_ids, use_cache=False).last_hidden_state
    return hidden[:, -1]


def last_token_hidden(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                      position_ids: Tensor, *, min_prefix: int | None = MIN_SHARED_PREFIX
                      ) -> Tensor:
    """Final hidden state at the last token of each left-padded prompt, (n, d).

    With ``min_prefix`` set and a common prefix of at least that many tokens,
    the prefix is computed once and broadcast (see the module docstring);
    otherwise (``min_prefix=None``, a short prefix, position ids that are not
    ``0..len-1`` per row, or a cache layer type we do not handle) it is the plain
    left-padded forward, the last position read. Works with and without grad.

    With dropout active (train mode, e.g. LoRA's dropout 0.05) it is the plain
    forward too: a shared prefix would share one dropout mask across the batch,
    correlating the rows' noise, which the plain path does not.
    """
    n = input_ids.shape[0]
    if min_prefix is None or _dropout_active(decoder):
        return _plain_last_hidden(decoder, input_ids, attention_mask, position_ids)
    prefix_len = shared_prefix_length(input_ids, attention_mask)
    if prefix_len < max(min_prefix, 1):
        return _plain_last_hidden(decoder, input_ids, attention_mask, position_ids)
    device = input_ids.device
    lengths = attention_mask.sum(-1)
    expected_positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if not torch.equal(position_ids, expected_positions):
        return _plain_last_hidden(decoder, input_ids, attention_mask, position_ids)

    from transformers.cache_utils import DynamicCache

    ids = _right_aligned(input_ids, lengths)
    cache = DynamicCache(config=getattr(decoder, "config", None))
    prefix_positions = torch.arange(prefix_len, device=device)[None, :]
    decoder(input_ids=ids[:1, :prefix_len], position_ids=prefix_positions,
            past_key_values=cache, use_cache=True)
    if not _expand_cache(cache, n):
        return _plain_last_hidden(decoder, input_ids, attention_mask, position_ids)

    suffix_lengths = lengths - prefix_len  # >= 1 by construction
    suffix_width = int(suffix_lengths.max())
    suffix_ids = ids[:, prefix_len:prefix_len + suffix_width]
    steps = torch.arange(suffix_width, device=device)
    suffix_mask = (steps[None, :] < suffix_lengths[:, None]).to(attention_mask.dtype)
    suffix_ids = suffix_ids.masked_fill(suffix_mask == 0, 0)  # junk past a row's end -> a valid id
    full_mask = torch.cat([attention_mask.new_ones(n, prefix_len), suffix_mask], dim=1)
    suffix_positions = (prefix_len + steps).expand(n, suffix_width)
    hidden = decoder(input_ids=suffix_ids, attention_mask=full_mask, position_ids=suffix_positions,
                     past_key_values=cache, use_cache=True).last_hidden_state
    return hidden[torch.arange(n, device=device), suffix_lengths - 1]
