"""CHES: the centered hidden embedding similarity of a preference pair (Razin et al., 2024).

Razin, Malladi, Bhaskar, Chen, Arora & Hanin, "Unintentional Unalignment:
Likelihood Displacement in Direct Preference Optimization" (2024), Section 5
(the CHES score): for a prompt x with preferred y+ and dispreferred y-,

    CHES_x(y+, y-) = < S+, S- > - ||S+||^2,   S± = sum_k h(x, y±_<k),

where h(x, y_<k) is the lm_head input (the decoder's output *after* its final
norm) at the position that predicts response token k. A larger CHES predicts
more likelihood displacement of y+ under DPO. The length-normalised CHES
replaces the sums by means (S± / |y±|).

Exact positions: with the prompt's P tokens at positions 0..P-1 and response
token k (0-based) at absolute position P+k, its predicting hidden state sits at
P+k-1. So S = sum of h at positions P-1 .. P+|y|-2: the last prompt token
predicts the first response token, and the last response token predicts
nothing and is not read.

Tokenization: ``add_special_tokens=False`` as in :mod:`prefdyn.embeddings`.
The ids of ``prompt + response`` are used when the prompt's ids are a prefix of
them (the usual case: the response starts a new pre-token). When BPE merges
across the boundary, the prompt and the response are tokenized separately and
concatenated, so that the prompt/response split stays exact (the same ids a
trainer that tokenizes the parts separately, like TRL's, would feed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from prefdyn._hashing import hash_texts
from prefdyn._store import ArtifactKey, ArtifactStore, TensorSpec
from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics._ches_pack import Reader, packed_pair_sums
from prefdyn.embeddings._prefix import packing_exact
from prefdyn.embeddings.extract import _length_sorted_batches, _progress_bar
from prefdyn.errors import DataError

HiddenSums = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
# Bump the version when the positions summed or the tokenization change.
STORE = ArtifactStore("ches", version=1, label="CHES")


def response_token_ids(tokenizer, prompt: str, response: str, *, source: str = "",
                       field: str = "response", max_length: int | None = None) -> tuple[list[int], int]:
    """``(ids of prompt+response, P)`` with P the number of prompt tokens (see the module docstring).

    Raises :class:`DataError` naming ``source`` for an empty prompt or response
    and for a sequence longer than ``max_length`` (the model's context).
    """
    if not response:
        raise DataError("empty response: CHES needs at least one response token", source=source, field=field)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not prompt_ids:
        raise DataError("empty prompt: no position predicts the first response token",
                        source=source, field="prompt")
    full_ids = tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        # BPE merged across the prompt/response boundary: keep the split exact.
        full_ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"]
    if len(full_ids) == len(prompt_ids):
        raise DataError("the response encodes to no tokens", source=source, field=field)
    if max_length is not None and len(full_ids) > max_length:
        raise DataError(f"prompt + response is {len(full_ids)} tokens, longer than the model's "
                        f"context ({max_length})", source=source, field=field)
    return full_ids, len(prompt_ids)


def _encode_pairs(model, tokenizer, pairs: Sequence[PreferencePair]) -> list[tuple[list[int], int]]:
    """Encoded (ids, P) of every sequence: chosen of pair i at 2i, rejected at 2i+1."""
    max_length = getattr(model.config, "max_position_embeddings", None)
    return [response_token_ids(tokenizer, pair.prompt, response, source=pair.source, field=field,
                               max_length=max_length)
            for pair in pairs for field, response in (("chosen", pair.chosen), ("rejected", pair.rejected))]


def _split(sums: torch.Tensor, lengths: torch.Tensor) -> HiddenSums:
    return sums[0::2].contiguous(), sums[1::2].contiguous(), lengths[0::2].contiguous(), lengths[1::2].contiguous()


def pair_hidden_sums(
    model,
    tokenizer,
    pairs: Sequence[PreferencePair],
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
    share_prompt: bool = True,
    autocast: torch.dtype | None = None,
    reader: Reader | None = None,
) -> HiddenSums:
    """S+ and S- of every pair, and the response lengths, batched.

    Returns ``(sum_chosen (n, d) float64, sum_rejected (n, d) float64,
    len_chosen (n,) int64, len_rejected (n,) int64)`` on CPU; the hidden states are
    accumulated in float64 and no vocabulary logits are computed.

    With ``share_prompt`` (the default) and where it is exact
    (:func:`~prefdyn.embeddings._prefix.packing_exact`), each pair is one packed row,
    its prompt run once and both responses after it (:mod:`._ches_pack`), and
    ``batch_size // 2`` pairs (``batch_size`` sequences' worth) run per forward.
    Otherwise the 2n sequences (prompt+chosen and prompt+rejected, one decoder forward
    each) run longest first in left-padded batches of ``batch_size`` sequences, with
    position ids from the attention mask, so each sees the positions it would see
    alone. Both paths equal one unpadded forward per sequence up to float round-off.
    ``autocast`` (e.g. ``torch.bfloat16``) runs the matrix products in that dtype under
    :func:`torch.autocast`, the weights and the sums staying as they are.
    ``reader(j, hidden)``, if given, sees the hidden states that go into sequence j's sum
    (chosen of pair i at 2i, rejected at 2i+1), ``(|y_j|, d)`` float64 in response order,
    in the same pass (e.g. :class:`prefdyn.diagnostics.pair_pass.PairPass`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    decoder = model.get_decoder()
    hidden_size = model.get_output_embeddings().weight.shape[1]
    encoded = _encode_pairs(model, tokenizer, pairs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = torch.tensor([len(ids) - p for ids, p in encoded], dtype=torch.long)
    longest = max((len(encoded[i][0]) + len(encoded[i + 1][0]) for i in range(0, len(encoded), 2)), default=0)
    mixed = torch.autocast(device.type, dtype=autocast, enabled=autocast is not None)
    with torch.inference_mode(), mixed, _progress_bar(len(encoded), progress) as advance:
        if share_prompt and packing_exact(decoder, longest):
            sums = packed_pair_sums(decoder, encoded, pairs_per_forward=max(1, batch_size // 2),
                                    pad_id=pad_id, device=device, hidden_size=hidden_size,
                                    advance=advance, reader=reader)
        else:
            sums = _padded_sums(decoder, encoded, batch_size, pad_id, device, hidden_size, advance,
                                reader)
    return _split(sums, lengths)


def _padded_sums(decoder, encoded, batch_size: int, pad_id: int, device: torch.device,
                 hidden_size: int, advance, reader: Reader | None = None) -> torch.Tensor:
    """(2n, d) float64 sums of the 2n sequences in left-padded, length-sorted batches."""
    sums = torch.zeros(len(encoded), hidden_size, dtype=torch.float64)
    for batch in _length_sorted_batches([len(ids) for ids, _ in encoded], batch_size):
        width = max(len(encoded[i][0]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        predicting = torch.zeros((len(batch), width), dtype=torch.float64)
        for row, i in enumerate(batch):
            ids, n_prompt = encoded[i]
            offset = width - len(ids)
            input_ids[row, offset:] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, offset:] = 1
            # Positions P-1 .. L-2 (shifted by the left padding) predict the response.
            predicting[row, offset + n_prompt - 1 : width - 1] = 1.0
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = decoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                         position_ids=position_ids.to(device), use_cache=False).last_hidden_state
        hidden = hidden.to("cpu", torch.float64)
        sums[batch] = torch.einsum("bt,btd->bd", predicting, hidden)
        if reader is not None:
            for row, i in enumerate(batch):
                reader(i, hidden[row, predicting[row].bool()])
        advance(len(batch))
    return sums


def pair_hidden_sums_naive(model, tokenizer, pairs: Sequence[PreferencePair], *,
                           device: str | torch.device | None = None) -> HiddenSums:
    """Reference for :func:`pair_hidden_sums`: one unpadded forward per sequence, no masks.

    Slow on purpose (used by tests and the ``ches`` benchmark workload); the same
    positions P-1 .. L-2, read by slicing.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    decoder = model.get_decoder()
    sums, lengths = [], []
    with torch.inference_mode():
        for ids, n_prompt in _encode_pairs(model, tokenizer, pairs):
            hidden = decoder(input_ids=torch.tensor([ids], device=device), use_cache=False).last_hidden_state[0]
            sums.append(hidden[n_prompt - 1 : len(ids) - 1].to("cpu", torch.float64).sum(0))
            lengths.append(len(ids) - n_prompt)
    hidden_size = model.get_output_embeddings().weight.shape[1]
    stacked = torch.stack(sums) if sums else torch.zeros(0, hidden_size, dtype=torch.float64)
    return _split(stacked, torch.tensor(lengths, dtype=torch.long))


def ches_from_sums(sum_chosen: torch.Tensor, sum_rejected: torch.Tensor,
                   len_chosen: torch.Tensor, len_rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """CHES and length-normalised CHES from the hidden sums, vectorized. Each (n,) float64.

    ``ches = <S+, S-> - ||S+||^2``; ``ches_normalized`` uses the means
    ``S+/|y+|`` and ``S-/|y-|`` (Razin et al., 2024, Section 5).
    """
    sum_chosen, sum_rejected = sum_chosen.double(), sum_rejected.double()
    ches = (sum_chosen * sum_rejected).sum(-1) - (sum_chosen * sum_chosen).sum(-1)
    mean_chosen = sum_chosen / len_chosen.double().unsqueeze(-1)
    mean_rejected = sum_rejected / len_rejected.double().unsqueeze(-1)
    ches_normalized = (mean_chosen * mean_rejected).sum(-1) - (mean_chosen * mean_chosen).sum(-1)
    return {"ches": ches, "ches_normalized": ches_normalized}


def ches_scores(model, tokenizer, pairs: Sequence[PreferencePair], *, batch_size: int = 8,
                device: str | torch.device | None = None, progress: bool = False,
                autocast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``{"ches": (n,), "ches_normalized": (n,)}`` float64 for every pair (see :func:`ches_from_sums`)."""
    return ches_from_sums(*pair_hidden_sums(model, tokenizer, pairs, batch_size=batch_size,
                                            device=device, progress=progress, autocast=autocast))


def ches_cache_key(loaded, pairs: Sequence[PreferencePair], *,
                   autocast: torch.dtype | None = None) -> ArtifactKey:
    """Content key of the hidden sums of ``pairs`` under ``loaded`` (model and tokenizer
    fingerprints), and the autocast dtype where one is used (fp32 keys are unchanged)."""
    from prefdyn.models.loading import tokenizer_fingerprint

    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    mixed = {} if autocast is None else {"autocast": str(autocast)}
    return STORE.key(model=loaded.fingerprint, tokenizer=tokenizer_fingerprint(loaded.tokenizer),
                      texts=hash_texts(texts), **mixed)


def sums_spec(n: int, hidden_size: int) -> dict[str, TensorSpec]:
    """What the ``ches`` store holds for ``n`` pairs: the four :data:`HiddenSums`, by name."""
    return {"sum_chosen": TensorSpec((n, hidden_size), torch.float64),
            "sum_rejected": TensorSpec((n, hidden_size), torch.float64),
            "len_chosen": TensorSpec((n,), torch.long), "len_rejected": TensorSpec((n,), torch.long)}


def cached_pair_hidden_sums(loaded, pairs: Sequence[PreferencePair], *,
                            cache_dir: str | os.PathLike | None = None, batch_size: int = 8,
                            device: str | torch.device | None = None, progress: bool = False,
                            autocast: torch.dtype | None = None) -> HiddenSums:
    """:func:`pair_hidden_sums`, memoised under ``cache_dir()/ches/<key>.safetensors``.

    Stored with :mod:`prefdyn._store` (atomic writes; a bad file is warned about
    and recomputed). Refresh ``loaded.fingerprint`` after changing weights.
    """
    pairs = list(pairs)
    expected = sums_spec(len(pairs), loaded.model.get_output_embeddings().weight.shape[1])

    def compute() -> dict[str, torch.Tensor]:
        sums = pair_hidden_sums(loaded.model, loaded.tokenizer, pairs, batch_size=batch_size,
                                device=device, progress=progress, autocast=autocast)
        return dict(zip(expected, sums))

    tensors = STORE.get_or_compute(ches_cache_key(loaded, pairs, autocast=autocast), expected, compute,
                                    cache_dir=cache_dir, info={"model": loaded.name})
    return tuple(tensors[name] for name in expected)  # type: ignore[return-value]
