"""Attention of packed rows computed segment by segment: only the allowed blocks.

prefdyn packs several sequences that share a prompt into one row (the shared-prefix
LM step, GRPO groups, CHES pairs)::

    [ prefix | segment_0 | segment_1 | ... | pads ]

and a block mask lets a segment token see the prefix and the earlier tokens of its own
segment. Handed that (W, W) mask, SDPA still computes every query against every key of
the row: for a GRPO group of 8 responses of 64 tokens after a 50-token prompt, about
7x the scores the mask allows (86% thrown away), and about a tenth of the step's time
went there.

Here the same attention runs as two dense products over the allowed blocks only:

* the prefix, causal over the first ``max prefix length`` positions of every row;
* every segment, its queries against ``[its row's prefix | its own keys]``, one batch
  row per segment (GQA as transformers' SDPA does it), causal within the segment.

The outputs are written back to their packed positions (pads get zeros: they are never
read). The scores, softmax and weighted sums are the ones the block mask defines, so
the hidden states equal the masked forward's up to float round-off (tested), and
autograd differentiates the gathers (the prefix keys' gradient sums over the segments).

How it reaches the model: transformers looks the attention function up by the name in
``config._attn_implementation`` at every layer call. :func:`segmented_attention` sets
that name to this module's function for a block (only from "sdpa"); the function is
transformers' SDPA for every call that brings no layout, so generation and any other
forward inside the block are unchanged. A packed forward passes its
:class:`SegmentLayout` as the ``packed_layout`` keyword (transformers hands extra
keywords to the attention function), built once per forward by
:func:`packed_attention_inputs`, which otherwise returns the dense block mask.

With activation checkpointing the backward runs the layers again, so the name must
hold through the backward: :func:`prefdyn.training.recompute.recomputed_activations`
keeps it set for the run; :func:`forward_context` gives a packed forward the block for
itself where nothing calls the attention after it (no grad, or no recomputation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

NAME = "prefdyn_segments"
PREFIX, PAD = -1, -2  # segment ids of the shared prefix and of pads; segments are >= 0
# Rows narrower than this keep the dense mask. One layer's attention forward and
# backward on this CPU (fp32, SmolLM2's 9 x 64 heads): GRPO groups 50 + 8 x 64 tokens
# (562 wide) 207 ms dense against 100 ms in blocks; a 511-token shared-prefix pack
# 21.5 against 14.7 ms; at 114 to 307 tokens the two are within noise of each other or
# the blocks lose (5.5 against 7.7 ms at 114): their gathers, second call and small
# per-head products cost what the masked-out scores did.
MIN_WIDTH = 512


@dataclass(frozen=True)
class SegmentLayout:
    """Where each block of a packed (P, W) batch lives, as flat indices into P * W.

    ``prefix``: longest prefix (every row's prefix is its leading tokens, ``prefix_len``
    of them); ``query_index`` (S, n): the positions of each segment's tokens, padded by
    repeating its last one; ``key_index`` (S, prefix + n): its row's first ``prefix``
    positions, then its own; ``mask`` (S, 1, n, prefix + n): which of those keys each
    query sees; ``dest`` / ``source``: the packed positions written and where their
    values are in ``[prefix outputs (P * prefix) | segment outputs (S * n)]``.
    """

    rows: int
    width: int
    prefix: int
    query_index: Tensor
    key_index: Tensor
    mask: Tensor
    dest: Tensor
    source: Tensor


def build_layout(segment: Tensor) -> SegmentLayout:
    """The :class:`SegmentLayout` of packed rows with ``segment`` ids (P, W): each row's
    prefix (id -1) first, then its segments (ids >= 0, each one contiguous run), then
    pads (-2)."""
    P, W = segment.shape
    device = segment.device
    is_prefix = segment == PREFIX
    prefix_len = is_prefix.sum(1)
    prefix = int(prefix_len.max()) if P else 0
    leading = torch.arange(prefix, device=device) < prefix_len[:, None]
    if prefix and not torch.equal(is_prefix[:, :prefix], leading):
        raise ValueError("packed rows must start with their prefix (segment -1)")
    flat = segment.reshape(-1)
    col = torch.arange(W, device=device).repeat(P)
    # A run starts where the id changes or a row begins.
    change = torch.ones_like(flat, dtype=torch.bool)
    change[1:] = (flat[1:] != flat[:-1]) | (col[1:] == 0)
    run_start = change.nonzero().flatten()
    run_len = torch.diff(run_start, append=torch.tensor([flat.numel()], device=device))
    keep = flat[run_start] >= 0
    start, length = run_start[keep], run_len[keep]
    S = len(start)
    n = int(length.max()) if S else 0
    steps = torch.arange(n, device=device)
    query_index = start[:, None] + torch.minimum(steps, (length - 1)[:, None])
    row = start // W
    key_index = torch.cat([(row * W)[:, None] + torch.arange(prefix, device=device), query_index], 1)
    sees_prefix = torch.arange(prefix, device=device) < prefix_len[row][:, None]       # (S, prefix)
    sees_own = (steps[None, :] <= steps[:, None]) & (steps[None, None, :] < length[:, None, None])
    mask = torch.cat([sees_prefix[:, None, :].expand(S, n, prefix), sees_own], 2)[:, None]
    prefix_rows, prefix_cols = leading.nonzero(as_tuple=True)
    real = steps[None, :] < length[:, None]
    dest = torch.cat([prefix_rows * W + prefix_cols, query_index[real]])
    source = torch.cat([prefix_rows * prefix + prefix_cols,
                        P * prefix + (torch.arange(S, device=device)[:, None] * n + steps)[real]])
    return SegmentLayout(P, W, prefix, query_index, key_index, mask, dest, source)


def _flat(x: Tensor) -> Tensor:
    """(P, H, W, D) -> (P * W, H, D)."""
    P, H, W, D = x.shape
    return x.transpose(1, 2).reshape(P * W, H, D)


def _gathered(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (S, m) of the flat (P * W, H, D) ``x`` as (S, H, m, D)."""
    return x[index].transpose(1, 2)


def segment_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask: Tensor | None, dropout: float = 0.0,
                              scaling: float | None = None, packed_layout: SegmentLayout | None = None,
                              **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function signature; SDPA itself without ``packed_layout``.

    With it, ``attention_mask`` (the dense block mask) is not read: the prefix and the
    segments run as two dense SDPA calls (module docstring). Output (P, W, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packed_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    layout = packed_layout
    P, H, W, D = query.shape
    if (P, W) != (layout.rows, layout.width):
        raise ValueError(f"packed layout for {layout.rows} x {layout.width} tokens, got {P} x {W}")
    parts = []
    if layout.prefix:
        L = layout.prefix
        head, _ = sdpa_attention_forward(module, query[:, :, :L], key[:, :, :L], value[:, :, :L], None,
                                         dropout=dropout, scaling=scaling, is_causal=True)
        parts.append(head.reshape(P * L, H, D))
    if len(layout.query_index):
        seg, _ = sdpa_attention_forward(
            module, _gathered(_flat(query), layout.query_index), _gathered(_flat(key), layout.key_index),
            _gathered(_flat(value), layout.key_index), layout.mask, dropout=dropout, scaling=scaling)
        parts.append(seg.reshape(-1, H, D))
    if not parts:  # pads only
        return query.new_zeros(P, W, H, D), None
    outputs = torch.cat(parts)
    out = outputs.new_zeros(P * W, H, D).index_copy(0, layout.dest, outputs[layout.source])
    return out.view(P, W, H, D), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # masks as for "sdpa" (generation, padding)


def _config(model: nn.Module):
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(lm, "config", None)


@contextlib.contextmanager
def segmented_attention(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s "sdpa" attention is :func:`segment_attention_forward`
    (the same function for every call without a layout); as before on exit. Other
    attention implementations are left as they are (packed forwards then get the dense
    block mask)."""
    config = _config(model)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register()
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def forward_context(model: nn.Module) -> contextlib.AbstractContextManager:
    """The block a packed forward of ``model`` runs in: :func:`segmented_attention` where
    nothing calls the attention after the forward (no grad, or no layer recomputed in
    the backward); as it is otherwise (set for the run by activation checkpointing's
    context, or the dense mask)."""
    recomputed = torch.is_grad_enabled() and any(
        getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
    return contextlib.nullcontext() if recomputed else segmented_attention(model)


def segment_mask(decoder: nn.Module, segment: Tensor) -> Tensor:
    """(k, 1, L, L) attention mask of packed rows with ``segment`` ids (k, L): query i sees
    key j <= i that is in the shared prefix (segment -1) or in i's own segment.

    Pads carry their own segment (e.g. -2) and so see the prefix and earlier pads, never
    an empty row (which would give NaN). Boolean for "sdpa", additive for "eager".
    """
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment.device).tril()
    key, query = segment[:, None, :], segment[:, :, None]
    allowed = (causal & ((key == PREFIX) | (key == query)))[:, None]
    if decoder.config._attn_implementation == "eager":
        dtype = decoder.get_input_embeddings().weight.dtype
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    return allowed


def packed_attention_inputs(decoder: nn.Module, segment: Tensor) -> dict:
    """The decoder keywords of packed rows with ``segment`` ids: the dense block mask
    (:func:`segment_mask`, which every attention implementation understands) and, where
    the attention is this module's and the rows are at least ``MIN_WIDTH`` wide, the
    layout it runs by instead."""
    inputs = {"attention_mask": segment_mask(decoder, segment)}
    if (getattr(getattr(decoder, "config", None), "_attn_implementation", None) == NAME
            and segment.shape[1] >= MIN_WIDTH):
        inputs["packed_layout"] = build_layout(segment)
    return inputs
