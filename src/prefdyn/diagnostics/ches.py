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

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prefdyn._hashing import hash_obj, hash_texts
from prefdyn._paths import cache_dir as _cache_root
from prefdyn.data.records import PreferencePair
from prefdyn.embeddings.cache import _shape_str
from prefdyn.embeddings.extract import _length_sorted_batches, _progress_bar
from prefdyn.errors import DataError

logger = logging.getLogger(__name__)

HiddenSums = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_FORMAT = "prefdyn-ches-sums-v1"
_TENSORS = ("sum_chosen", "sum_rejected", "len_chosen", "len_rejected")


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
) -> HiddenSums:
    """S+ and S- of every pair, and the response lengths, batched.

    Returns ``(sum_chosen (n, d) float64, sum_rejected (n, d) float64,
    len_chosen (n,) int64, len_rejected (n,) int64)`` on CPU. The 2n sequences
    (prompt+chosen and prompt+rejected, one decoder forward each) run longest
    first in left-padded batches of ``batch_size`` sequences, with position ids
    from the attention mask, so each sees the positions it would see alone; the
    hidden states are accumulated in float64. No vocabulary logits are computed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    decoder = model.get_decoder()
    hidden_size = model.get_output_embeddings().weight.shape[1]
    encoded = _encode_pairs(model, tokenizer, pairs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sums = torch.zeros(len(encoded), hidden_size, dtype=torch.float64)
    lengths = torch.tensor([len(ids) - p for ids, p in encoded], dtype=torch.long)
    with torch.inference_mode(), _progress_bar(len(encoded), progress) as advance:
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
            sums[batch] = torch.einsum("bt,btd->bd", predicting, hidden.to("cpu", torch.float64))
            advance(len(batch))
    return _split(sums, lengths)


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
                device: str | torch.device | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """``{"ches": (n,), "ches_normalized": (n,)}`` float64 for every pair (see :func:`ches_from_sums`)."""
    return ches_from_sums(*pair_hidden_sums(model, tokenizer, pairs, batch_size=batch_size,
                                            device=device, progress=progress))


def ches_cache_key(loaded, pairs: Sequence[PreferencePair]) -> str:
    """Content key of the hidden sums of ``pairs`` under ``loaded`` (model and tokenizer fingerprints)."""
    from prefdyn.models.loading import tokenizer_fingerprint

    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    return hash_obj({"format": _FORMAT, "model": loaded.fingerprint,
                     "tokenizer": tokenizer_fingerprint(loaded.tokenizer), "texts": hash_texts(texts)})[:32]


def cached_pair_hidden_sums(loaded, pairs: Sequence[PreferencePair], *,
                            cache_dir: str | os.PathLike | None = None, batch_size: int = 8,
                            device: str | torch.device | None = None, progress: bool = False) -> HiddenSums:
    """:func:`pair_hidden_sums`, memoised under ``cache_dir()/ches/<key>.safetensors``.

    Same conventions as :mod:`prefdyn.embeddings.cache`: the key and shapes are
    repeated in the file's metadata, a bad file is warned about and recomputed,
    writes are atomic. Refresh ``loaded.fingerprint`` after changing weights.
    """
    pairs = list(pairs)
    key = ches_cache_key(loaded, pairs)
    path = _cache_root(cache_dir) / "ches" / f"{key}.safetensors"
    hidden_size = loaded.model.get_output_embeddings().weight.shape[1]
    shape = (len(pairs), hidden_size)
    cached = _read_sums(path, key, shape)
    if cached is not None:
        logger.info("CHES cache hit: %s", path.name)
        return cached
    sums = pair_hidden_sums(loaded.model, loaded.tokenizer, pairs, batch_size=batch_size,
                            device=device, progress=progress)
    _write_sums(path, sums, key, shape, loaded.name)
    return sums


def _read_sums(path: Path, key: str, shape: tuple[int, int]) -> HiddenSums | None:
    if not path.exists():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in _TENSORS}
    except Exception as e:  # noqa: BLE001 -- truncated, foreign, or missing a tensor
        return _reject(path, f"unreadable ({e})")
    expected = {"format": _FORMAT, "key": key, "shape": _shape_str(shape)}
    found = {k: meta.get(k) for k in expected}
    if found != expected:
        return _reject(path, f"metadata {found} != expected {expected}")
    dims = {"sum_chosen": (shape, torch.float64), "sum_rejected": (shape, torch.float64),
            "len_chosen": ((shape[0],), torch.long), "len_rejected": ((shape[0],), torch.long)}
    for name, (want_shape, want_dtype) in dims.items():
        if tuple(tensors[name].shape) != want_shape or tensors[name].dtype != want_dtype:
            return _reject(path, f"{name} is {tuple(tensors[name].shape)} {tensors[name].dtype}")
    return tuple(tensors[name] for name in _TENSORS)  # type: ignore[return-value]


def _reject(path: Path, why: str) -> None:
    warnings.warn(f"ignoring corrupt CHES cache file {path}: {why}; recomputing", stacklevel=3)


def _write_sums(path: Path, sums: HiddenSums, key: str, shape: tuple[int, int], model_name: str) -> None:
    """Atomic: a temp file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": _FORMAT, "key": key, "shape": _shape_str(shape), "model": model_name}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({name: t.contiguous() for name, t in zip(_TENSORS, sums)}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
