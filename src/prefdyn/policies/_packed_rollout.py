"""Rollout log-probs with each group's prompt computed once: packed, exact, differentiable.

The k samples of a prompt share the whole prompt. The plain forward runs it k times
(a left-padded (N, L + T) batch); here every group becomes one packed sequence::

    [ prompt | response_1 | response_2 | ... | response_k ]
    positions 0..L-1 | L..L+T_1-1 | L..L+T_2-1 | ...

with a block attention mask (a response token sees the prompt and the earlier tokens
of its own response), so each response sees exactly its own tokens at its own
positions, as in the plain path: the log-probs agree up to float round-off. Pads are
never computed either (the responses are cut at their first EOS). On the
persona-style prompts of the RL benchmark (~50 prompt tokens, k = 4 responses of
16) a group costs ~110 tokens instead of ~260 in the forward, the backward and the
reference's forward. Conditions as :mod:`prefdyn.policies._shared_prefix` (rotary
positions, "sdpa" or "eager" attention, no short sliding window, no active dropout);
elsewhere the caller runs the plain forward.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prefdyn.embeddings._prefix import packing_exact
from prefdyn.policies._shared_prefix import _dropout_active, packed_hidden
from prefdyn.policies._token_logps import head_token_logps


def _causal_lm(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def can_pack(model: nn.Module, groups: Tensor, input_ids: Tensor, attention_mask: Tensor,
             response_mask: Tensor, prompt_len: int) -> bool:
    """Whether the packed forward is exact for this model and batch: samples of a group
    contiguous (they share their prompt, as the streams build them), every response a
    prefix of its row, and the decoder fit for packing."""
    lm = _causal_lm(model)
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    if decoder is None or lm.get_output_embeddings() is None or _dropout_active(decoder):
        return False
    if len(groups) == 0 or not bool((groups[1:] >= groups[:-1]).all()):
        return False
    _, counts = torch.unique_consecutive(groups, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    first = torch.repeat_interleave(starts, counts)
    prompt = slice(0, prompt_len)
    if not torch.equal(input_ids[:, prompt], input_ids[first, prompt]):
        return False  # a group whose samples answer different prompts
    steps = torch.arange(response_mask.shape[1], device=response_mask.device)
    if not torch.equal(response_mask.bool(), steps < response_mask.sum(-1, keepdim=True)):
        return False  # a response with a hole: not a prefix of its row
    longest = int(attention_mask[:, :prompt_len].sum(-1).max()) + attention_mask.shape[1] - prompt_len
    return packing_exact(decoder, longest)


@dataclass(frozen=True)
class GroupPacking:
    """Where a batch's tokens go in the packed (P, W) rows, one row a group.

    ``tokens`` / ``positions`` / ``segment`` (P, W) are the packed rows' ids, position ids
    and segment ids (-1 the prompt, i >= 0 sample i's response, -2 pads); ``source``
    (N, T): for sample i's response token t, the flat packed position whose hidden state
    predicts it (the prompt's last token for t = 0, else the response's token t - 1);
    ``origin`` (P * W,): the flat index ``row * (L + T) + column`` in the (N, L + T)
    batch of the token each packed position holds (-1 for pads)."""

    tokens: Tensor
    positions: Tensor
    segment: Tensor
    source: Tensor
    origin: Tensor


def group_packing(input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
                  groups: Tensor, prompt_len: int) -> GroupPacking:
    """The :class:`GroupPacking` of a batch whose groups :func:`can_pack` accepted."""
    device = input_ids.device
    N, T = response_mask.shape
    full = input_ids.shape[1]
    resp_len = response_mask.sum(-1)
    prompt_real = attention_mask[:, :prompt_len].sum(-1)
    starts = [0] + (torch.nonzero(groups[1:] != groups[:-1]).flatten() + 1).tolist() + [N]
    spans = list(itertools.pairwise(starts))
    widths = [int(prompt_real[a]) + int(resp_len[a:b].sum()) for a, b in spans]
    width = max(widths)
    P = len(spans)
    tokens = input_ids.new_zeros(P, width)
    positions = torch.zeros(P, width, dtype=torch.long, device=device)
    segment = torch.full((P, width), -2, dtype=torch.long, device=device)
    origin = torch.full((P, width), -1, dtype=torch.long, device=device)
    source = torch.zeros(N, T, dtype=torch.long, device=device)
    for p, (a, b) in enumerate(spans):
        L = int(prompt_real[a])
        tokens[p, :L] = input_ids[a, prompt_len - L:prompt_len]
        positions[p, :L] = torch.arange(L, device=device)
        segment[p, :L] = -1
        origin[p, :L] = a * full + torch.arange(prompt_len - L, prompt_len, device=device)
        at = L
        for i in range(a, b):
            n = int(resp_len[i])
            tokens[p, at:at + n] = input_ids[i, prompt_len:prompt_len + n]
            positions[p, at:at + n] = torch.arange(L, L + n, device=device)
            segment[p, at:at + n] = i
            origin[p, at:at + n] = i * full + torch.arange(prompt_len, prompt_len + n, device=device)
            if n:
                source[i, 0] = p * width + L - 1
                source[i, 1:n] = p * width + at + torch.arange(n - 1, device=device)
            at += n
    return GroupPacking(tokens, positions, segment, source, origin.reshape(-1))


def logps_from_top(model: nn.Module, top: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """Token log-probs ``(K,)`` from the decoder's last layer's outputs ``top`` (K, d),
    before its final norm: the norm, then the LM head and the log-softmax
    (:func:`head_token_logps`)."""
    lm = _causal_lm(model)
    return head_token_logps(lm.get_output_embeddings(), lm.get_decoder().norm(top), targets,
                            temperature)


def packed_response_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                          response_mask: Tensor, groups: Tensor, prompt_len: int,
                          temperature: float = 1.0) -> Tensor:
    """log pi(y_t | x, y_<t) of every response token, ``(N, T)`` (0 where
    ``response_mask`` is 0), computed through one packed sequence per group.

    ``input_ids`` / ``attention_mask`` (N, L + T): left-padded prompt then response;
    samples of one group are contiguous rows with the same prompt (checked by
    :func:`can_pack`)."""
    lm = _causal_lm(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    packing = group_packing(input_ids, attention_mask, response_mask, groups, prompt_len)
    hidden = packed_hidden(decoder, packing.tokens, packing.segment, packing.positions)
    mask = response_mask.bool()
    picked = hidden.reshape(-1, hidden.shape[-1])[packing.source[mask]]  # (K, d): real tokens only
    logps = head_token_logps(head, picked, input_ids[:, prompt_len:][mask], temperature)
    out = logps.new_zeros(mask.shape)
    out[mask] = logps
    return out
