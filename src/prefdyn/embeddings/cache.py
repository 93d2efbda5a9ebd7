"""On-disk cache of g(x) embeddings, keyed by content (model, tokenizer, texts).

One file per key in the :mod:`prefdyn._store` store ``embeddings``
(``cache_dir()/embeddings/<key>.safetensors``) holding a single (n, d) float32
tensor ``"embeddings"``; a truncated, foreign or mismatched file is noticed,
warned about and recomputed rather than silently used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from prefdyn._hashing import hash_texts
from prefdyn._store import ArtifactKey, ArtifactStore, TensorSpec
from prefdyn.embeddings.extract import extract_embeddings
from prefdyn.models.loading import LoadedModel, tokenizer_fingerprint

# Bump the version when the definition of g(x) or the tokenization changes.
_STORE = ArtifactStore("embeddings", version=1)
_TENSOR = "embeddings"


def embedding_cache_key(loaded: LoadedModel, texts: Sequence[str]) -> ArtifactKey:
    """Content key of the embeddings of ``texts`` under ``loaded`` (uses ``loaded.fingerprint``)."""
    return _STORE.key(model=loaded.fingerprint, tokenizer=tokenizer_fingerprint(loaded.tokenizer),
                      texts=hash_texts(texts))


def stored_embeddings(loaded: LoadedModel, texts: Sequence[str], *,
                      cache_dir: str | os.PathLike | None = None) -> torch.Tensor | None:
    """The cached g(x) of ``texts`` (:func:`cached_embeddings`' store), or None."""
    texts = list(texts)
    hidden_size = loaded.model.get_output_embeddings().weight.shape[1]
    found = _STORE.load(embedding_cache_key(loaded, texts),
                        {_TENSOR: TensorSpec((len(texts), hidden_size), torch.float32)},
                        cache_dir=cache_dir)
    return None if found is None else found[_TENSOR]


def store_embeddings(loaded: LoadedModel, texts: Sequence[str], embeddings: torch.Tensor, *,
                     cache_dir: str | os.PathLike | None = None) -> None:
    """Put g(x) of ``texts`` computed elsewhere (e.g. in a CHES pass, which reads the same
    hidden state) into :func:`cached_embeddings`' store: the path only changes round-off."""
    _STORE.save(embedding_cache_key(loaded, list(texts)), {_TENSOR: embeddings.float().contiguous()},
                cache_dir=cache_dir, info={"model": loaded.name})


def cached_embeddings(
    loaded: LoadedModel,
    texts: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    reuse_prefix: bool = True,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """:func:`~prefdyn.embeddings.extract_embeddings`, memoised on disk. Returns (n, d) float32.

    The key uses ``loaded.fingerprint``: after changing the weights in place,
    call ``loaded.refresh_fingerprint()`` first. Batch size, prefix reuse and
    device only change round-off, so they are not part of the key.
    """
    texts = list(texts)
    hidden_size = loaded.model.get_output_embeddings().weight.shape[1]
    expected = {_TENSOR: TensorSpec((len(texts), hidden_size), torch.float32)}

    def compute() -> dict[str, torch.Tensor]:
        return {_TENSOR: extract_embeddings(loaded.model, loaded.tokenizer, texts, batch_size=batch_size,
                                            device=device, reuse_prefix=reuse_prefix, progress=progress)}

    return _STORE.get_or_compute(embedding_cache_key(loaded, texts), expected, compute,
                                 cache_dir=cache_dir, info={"model": loaded.name})[_TENSOR]
