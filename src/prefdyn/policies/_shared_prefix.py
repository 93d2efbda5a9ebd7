"""Shared-prefix, packed forward for single-token answers, exact and differentiable.

The prompts of a persona batch share a long token prefix (chat template and
question: 35 of 47-58 tokens for SmolLM2) and differ in length. Instead of a
left-padded (n, T) forward, the rows are *packed*: one sequence holds the
common prefix once, then every row's own suffix, back to back::

    [ prefix | suffix_0 | suffix_1 | ... ]      position ids 0..P-1 | P.. | P.. | ...

and a block attention mask lets each suffix token see the prefix and the
earlier tokens of its own suffix only. Every row therefore sees exactly its own
tokens at positions ``0..len-1``, as in the plain path, so the last hidden state
of each suffix equals the plain one up to float round-off. The prefix is
computed once, no pad is computed at all, and every weight is used once per
forward (one gradient, no per-use accumulation), which is what makes it faster
than broadcasting a prefix key/value cache: on CPU the 2x-used weights' gradient
sums and small-K weight-gradient products cost as much as the saved tokens.

Long batches are cut into several packs of at most ``pack_tokens`` tokens
(each repeating the prefix), run as the rows of one forward, so attention,
which the mask cannot make cheaper, stays a small share of the work.

The packed path runs only where it is exact: a cleanly left-padded batch with
position ids ``0..len-1`` per row, a decoder with rotary position embeddings
(positions enter through ``position_ids`` only) whose attention takes a 4-D
mask as given ("sdpa" or "eager"), and no sliding window shorter than a row.
With dropout active (LoRA's default 0.05 in train mode) it does not run either:
a shared prefix would share one dropout mask across the rows, correlating their
noise. Otherwise the plain left-padded forward runs, the last position read.

The no-grad sibling for embedding extraction is :mod:`prefdyn.embeddings._prefix`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefdyn.embeddings._prefix import packing_exact
from prefdyn.models.segment_attention import forward_context, packed_attention_inputs

# Tokens per pack (prefix + suffixes). Above a few hundred tokens the masked
# attention, quadratic in the pack length, starts to cost more than the
# prefix repeated once per pack.
PACK_TOKENS = 512


def _right_aligned(input_ids: Tensor, lengths: Tensor) -> Tensor:
    """Left-padded (n, T) ids moved to the left edge; entries past a row's length are junk."""
    width = input_ids.shape[1]
    start = width - lengths
    idx = (start[:, None] + torch.arange(width, device=input_ids.device)).clamp(max=width - 1)
    return input_ids.gather(1, idx)


def _left_padded(attention_mask: Tensor) -> bool:
    """Every row is pads then real tokens (no pad after a real token), and not empty."""
    n, width = attention_mask.shape
    lengths = attention_mask.sum(-1)
    if n == 0 or int(lengths.min()) < 1:
        return False
    expected = torch.arange(width, device=attention_mask.device)[None, :] >= (width - lengths)[:, None]
    return torch.equal(attention_mask.bool(), expected)


def shared_prefix_length(input_ids: Tensor, attention_mask: Tensor) -> int:
    """Longest common token prefix of the real tokens of left-padded prompts.

    Leaves at least one suffix token per row (its last hidden state is read).
    Returns 0 when there is none, or when the batch is not cleanly left-padded.
    """
    if not _left_padded(attention_mask):
        return 0
    lengths = attention_mask.sum(-1)
    return _common_prefix(_right_aligned(input_ids, lengths), lengths)


def _common_prefix(ids: Tensor, lengths: Tensor) -> int:
    """:func:`shared_prefix_length` of right-aligned ``ids`` (rows known to be clean)."""
    limit = int(lengths.min()) - 1
    if limit <= 0:
        return 0
    same = (ids[:, :limit] == ids[:1, :limit]).all(0)
    differs = (~same).nonzero()
    return int(differs[0]) if len(differs) else limit


def _dropout_active(decoder: nn.Module) -> bool:
    """Whether a forward in the current mode would drop anything (e.g. LoRA's dropout)."""
    if not decoder.training:
        return False
    if getattr(getattr(decoder, "config", None), "attention_dropout", 0.0):
        return True
    return any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in decoder.modules())


def _token_embeddings(decoder: nn.Module, input_ids: Tensor) -> Tensor | None:
    """The decoder's input embeddings of ``input_ids``, with their weight gradient
    added *into* ``weight.grad`` rows by a hook instead of through autograd; None where
    that does not apply (no grad wanted, or not a plain ``nn.Embedding``).

    Autograd's embedding backward materializes a dense zero (vocab, d) gradient and,
    with tied input/output embeddings, sums it out of place with the lm_head's dense
    gradient: two full-vocabulary passes over freshly allocated memory, ~15% of a
    SmolLM2 step on CPU. Here the weight enters the graph once (through lm_head, whose
    gradient autograd stores as ``weight.grad``); the lookup reads the detached weight
    as a leaf, and the leaf's gradient hook ``index_add_``-s its rows into
    ``weight.grad`` (the same sum, in place). The hook fires when the lookup's gradient
    is complete, at the end of the backward pass, after the lm_head gradient (an
    accumulation node runs as soon as its input is ready); it copes with either order.
    """
    embedding = decoder.get_input_embeddings()
    weight = getattr(embedding, "weight", None)
    if (not torch.is_grad_enabled() or type(embedding) is not nn.Embedding
            or not weight.requires_grad or embedding.max_norm is not None):
        return None
    embeds = nn.functional.embedding(input_ids, weight.detach(), embedding.padding_idx)
    embeds.requires_grad_(True)
    flat_ids = input_ids.reshape(-1)
    # nn.Embedding gives its padding_idx row no gradient (Llama's is the pad token, which
    # for SmolLM2 is <|im_end|>, a token every chat prompt contains).
    frozen_rows = (flat_ids == embedding.padding_idx if embedding.padding_idx is not None
                   else None)

    def add_rows(grad: Tensor) -> None:
        rows = grad.reshape(-1, grad.shape[-1]).to(weight.dtype)
        if frozen_rows is not None:
            rows = rows.masked_fill(frozen_rows[:, None], 0)
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, flat_ids, rows)

    embeds.register_hook(add_rows)
    return embeds


def decoder_hidden(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                   position_ids: Tensor, **extra) -> Tensor:
    """``decoder(...).last_hidden_state``, the input-embedding gradient added in place
    (:func:`_token_embeddings`) where that applies; ``extra`` keywords go to the decoder."""
    embeds = _token_embeddings(decoder, input_ids)
    inputs = {"input_ids": input_ids} if embeds is None else {"inputs_embeds": embeds}
    return decoder(**inputs, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, **extra).last_hidden_state


def packed_hidden(decoder: nn.Module, tokens: Tensor, segment: Tensor, positions: Tensor) -> Tensor:
    """:func:`decoder_hidden` of packed rows with ``segment`` ids (-1 the shared prefix,
    leading; >= 0 the segments; -2 pads): each segment token sees the prefix and the
    earlier tokens of its own segment, the attention computed block by block where the
    model's is SDPA (:mod:`prefdyn.models.segment_attention`), else through the dense
    block mask."""
    with forward_context(decoder):
        inputs = packed_attention_inputs(decoder, segment)
        return decoder_hidden(decoder, tokens, position_ids=positions, **inputs)


def _plain_last_hidden(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                       position_ids: Tensor) -> Tensor:
    return decoder_hidden(decoder, input_ids, attention_mask, position_ids)[:, -1]


def _greedy_packs(suffix_lengths: list[int], prefix_len: int, budget: int) -> list[list[int]]:
    packs: list[list[int]] = [[]]
    used = prefix_len
    for row, n in enumerate(suffix_lengths):
        if packs[-1] and used + n > budget:
            packs.append([])
            used = prefix_len
        packs[-1].append(row)
        used += n
    return packs


def pack_rows(suffix_lengths: list[int], prefix_len: int, pack_tokens: int) -> list[list[int]]:
    """Rows grouped, in order, into packs of at most ``pack_tokens`` tokens each (the
    prefix once per pack, then the rows' suffixes); a row longer than that alone gets a
    pack of its own. As few packs as in-order filling gives, balanced: the packs are
    run as the rows of one forward, padded to the longest, so the longest is made as
    short as that number of packs allows (the smallest budget that still needs no more)."""
    packs = _greedy_packs(suffix_lengths, prefix_len, pack_tokens)
    lo, hi = prefix_len + max(suffix_lengths, default=0), pack_tokens
    if len(packs) == 1 or lo >= hi:
        return packs
    while lo < hi:  # fewer packs with a larger budget: bisect for the smallest that keeps it
        mid = (lo + hi) // 2
        if len(_greedy_packs(suffix_lengths, prefix_len, mid)) <= len(packs):
            hi = mid
        else:
            lo = mid + 1
    return _greedy_packs(suffix_lengths, prefix_len, lo)


def _packed_last_hidden(decoder: nn.Module, ids: Tensor, lengths: Tensor, prefix_len: int,
                        pack_tokens: int) -> Tensor:
    """(n, d) last hidden states of right-aligned ``ids`` through packed sequences."""
    device = ids.device
    suffix_lengths = (lengths - prefix_len).tolist()
    packs = pack_rows(suffix_lengths, prefix_len, pack_tokens)
    width = max(prefix_len + sum(suffix_lengths[r] for r in pack) for pack in packs)
    k = len(packs)
    tokens = ids.new_zeros(k, width)  # pads: token 0 at position 0, segment -2
    positions = torch.zeros(k, width, dtype=torch.long, device=device)
    segment = torch.full((k, width), -2, dtype=torch.long, device=device)
    ends = torch.empty(len(suffix_lengths), dtype=torch.long, device=device)
    pack_of = torch.empty_like(ends)
    for p, pack in enumerate(packs):
        tokens[p, :prefix_len] = ids[pack[0], :prefix_len]
        positions[p, :prefix_len] = torch.arange(prefix_len, device=device)
        segment[p, :prefix_len] = -1
        at = prefix_len
        for row in pack:
            n = suffix_lengths[row]
            tokens[p, at:at + n] = ids[row, prefix_len:prefix_len + n]
            positions[p, at:at + n] = torch.arange(prefix_len, prefix_len + n, device=device)
            segment[p, at:at + n] = row
            at += n
            ends[row], pack_of[row] = at - 1, p
    return packed_hidden(decoder, tokens, segment, positions)[pack_of, ends]


def last_token_hidden(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                      position_ids: Tensor, *, share_prefix: bool = True,
                      pack_tokens: int = PACK_TOKENS) -> Tensor:
    """Final hidden state at the last token of each left-padded prompt, (n, d).

    With ``share_prefix`` and where it is exact (see the module docstring), the
    packed forward: the common prefix once per pack, no pads. Otherwise the plain
    left-padded forward, the last position read. Works with and without grad.
    """
    if not share_prefix or _dropout_active(decoder) or not _left_padded(attention_mask):
        return _plain_last_hidden(decoder, input_ids, attention_mask, position_ids)
    lengths = attention_mask.sum(-1)
    expected_positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if (not torch.equal(position_ids, expected_positions)
            or not packing_exact(decoder, int(lengths.max()))):
        return _plain_last_hidden(decoder, input_ids, attention_mask, position_ids)
    ids = _right_aligned(input_ids, lengths)
    return _packed_last_hidden(decoder, ids, lengths, _common_prefix(ids, lengths), pack_tokens)
