"""CHES hidden sums with each pair's prompt run once: one packed row per pair.

The plain path runs prompt+chosen and prompt+rejected as two sequences, so every
prompt token runs twice (HH-RLHF: 125 prompt tokens against 40 + 50 response
tokens on average, 1.58x the tokens that must run). Here a pair is one row::

    [ prompt (P) | chosen[:-1] | rejected[:-1] ]   positions 0..P-1 | P.. | P..

with a block mask (:func:`prefdyn.models.segment_attention.segment_mask`): each response
token sees the prompt and the earlier tokens of its own response only, at the
positions it has alone, so every hidden state equals the plain one up to float
round-off. A response's last token predicts nothing and is not read
(:mod:`prefdyn.diagnostics.ches`), and since nothing after it in its own segment
exists, it is not run at all. The hidden state at P-1 (predicting the first response
token) is shared by both sums.

Rows run longest first, ``pairs_per_forward`` at a time, right-padded; a pad sees
the prompt and earlier pads, and is never read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from prefdyn.embeddings.extract import _length_sorted_batches
from prefdyn.models.segment_attention import forward_context, packed_attention_inputs

Encoded = Sequence[tuple[list[int], int]]  # (ids, P): chosen of pair i at 2i, rejected at 2i+1
# reader(j, hidden): sequence j's hidden states at the positions predicting its response
# tokens, in order, (|y_j|, d) float64 on the CPU.
Reader = Callable[[int, torch.Tensor], None]

_PROMPT, _PAD = -1, -2


def packed_row(chosen: tuple[list[int], int], rejected: tuple[list[int], int]
               ) -> tuple[list[int], list[int], list[int]]:
    """``(tokens, position ids, segment ids)`` of one pair's packed row (module docstring).

    Segment -1 is the prompt, 0 the chosen response, 1 the rejected one. The prompt's
    ids are the first P ids of both sequences (:func:`~prefdyn.diagnostics.ches.response_token_ids`
    keeps the prompt/response split exact).
    """
    (chosen_ids, n_prompt), (rejected_ids, n_prompt_rejected) = chosen, rejected
    if n_prompt != n_prompt_rejected or chosen_ids[:n_prompt] != rejected_ids[:n_prompt]:
        raise ValueError("the chosen and rejected sequences of a pair must share their prompt ids")
    chosen_tail, rejected_tail = chosen_ids[n_prompt:-1], rejected_ids[n_prompt:-1]
    tokens = chosen_ids[:n_prompt] + chosen_tail + rejected_tail
    positions = (list(range(n_prompt)) + list(range(n_prompt, n_prompt + len(chosen_tail)))
                 + list(range(n_prompt, n_prompt + len(rejected_tail))))
    segments = [_PROMPT] * n_prompt + [0] * len(chosen_tail) + [1] * len(rejected_tail)
    return tokens, positions, segments


def packed_tokens(encoded: Encoded) -> int:
    """Tokens the packed path runs: each prompt once and each response but its last token."""
    return sum(len(encoded[i][0]) + len(encoded[i + 1][0]) - encoded[i][1] - 2
               for i in range(0, len(encoded), 2))


def packed_pair_sums(decoder, encoded: Encoded, *, pairs_per_forward: int, pad_id: int,
                     device: torch.device, hidden_size: int,
                     advance: Callable[[int], None] = lambda n: None,
                     reader: Reader | None = None) -> torch.Tensor:
    """(2n, d) float64 hidden sums, chosen of pair i at 2i and rejected at 2i+1, as the
    plain path returns them; ``advance`` is called with the sequences done (2 a pair),
    ``reader`` (if given) with each sequence's summed hidden states, one by one."""
    rows = [packed_row(encoded[2 * i], encoded[2 * i + 1]) for i in range(len(encoded) // 2)]
    sums = torch.zeros(len(encoded), hidden_size, dtype=torch.float64)
    for batch in _length_sorted_batches([len(tokens) for tokens, _, _ in rows], pairs_per_forward):
        width = max(len(rows[i][0]) for i in batch)
        tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        segment = torch.full((len(batch), width), _PAD, dtype=torch.long)
        # read[b, s, t] = 1 where position t is summed into side s (0 chosen, 1 rejected).
        read = torch.zeros((len(batch), 2, width), dtype=torch.float64)
        for b, i in enumerate(batch):
            row_tokens, row_positions, row_segments = rows[i]
            n = len(row_tokens)
            tokens[b, :n] = torch.tensor(row_tokens)
            positions[b, :n] = torch.tensor(row_positions)
            segment[b, :n] = torch.tensor(row_segments)
            n_prompt = encoded[2 * i][1]
            read[b, :, n_prompt - 1] = 1.0
            read[b, :, :n] += (segment[b, :n] == torch.arange(2)[:, None]).double()
        segment = segment.to(device)
        with forward_context(decoder):  # the attention block by block where it is SDPA
            hidden = decoder(input_ids=tokens.to(device), position_ids=positions.to(device),
                             use_cache=False, **packed_attention_inputs(decoder, segment)).last_hidden_state
        hidden = hidden.to("cpu", torch.float64)
        side_sums = torch.einsum("bst,btd->bsd", read, hidden)
        if reader is not None:  # positions ascending: P-1, then the side's own tokens in order
            for b, i in enumerate(batch):
                for side in (0, 1):
                    reader(2 * i + side, hidden[b, read[b, side].bool()])
        index = torch.tensor(batch)
        sums[2 * index], sums[2 * index + 1] = side_sums[:, 0], side_sums[:, 1]
        advance(2 * len(batch))
    return sums
