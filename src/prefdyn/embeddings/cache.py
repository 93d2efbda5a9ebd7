"""On-disk cache of g(x) embeddings, keyed by content (model, tokenizer, texts).

One safetensors file per key under ``cache_dir()/embeddings/<key>.safetensors``
holding a single (n, d) float32 tensor ``"embeddings"``; the key and shape are
repeated in the file's metadata so that a truncated, foreign or mismatched
file is noticed, warned about and recomputed rather than silently used.
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
from prefdyn.embeddings.extract import extract_embeddings
from prefdyn.models.loading import LoadedModel, tokenizer_fingerprint

logger = logging.getLogger(__name__)

# Bump when the definition of g(x), the tokenization or the file layout changes.
_FORMAT = "prefdyn-embeddings-v1"
_TENSOR = "embeddings"


def embedding_cache_key(loaded: LoadedModel, texts: Sequence[str]) -> str:
    """Content key of the embeddings of ``texts`` under ``loaded`` (uses ``loaded.fingerprint``)."""
    return hash_obj({
        "format": _FORMAT,
        "model": loaded.fingerprint,
        "tokenizer": tokenizer_fingerprint(loaded.tokenizer),
        "texts": hash_texts(texts),
    })[:32]


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
    key = embedding_cache_key(loaded, texts)
    path = _cache_root(cache_dir) / "embeddings" / f"{key}.safetensors"
    hidden_size = loaded.model.get_output_embeddings().weight.shape[1]
    embeddings = _read(path, key, (len(texts), hidden_size))
    if embeddings is not None:
        logger.info("embeddings cache hit: %s", path.name)
        return embeddings
    embeddings = extract_embeddings(loaded.model, loaded.tokenizer, texts, batch_size=batch_size,
                                    device=device, reuse_prefix=reuse_prefix, progress=progress)
    _write(path, embeddings, key, loaded.name)
    return embeddings


def _read(path: Path, key: str, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached tensor, or None when absent; a bad file is warned about and ignored."""
    if not path.exists():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensor = f.get_tensor(_TENSOR)
    except Exception as e:  # truncated or not safetensors at all
        return _reject(path, f"unreadable ({e})")
    expected = {"format": _FORMAT, "key": key, "shape": _shape_str(shape)}
    found = {k: meta.get(k) for k in expected}
    if found != expected:
        return _reject(path, f"metadata {found} != expected {expected}")
    if tuple(tensor.shape) != shape or tensor.dtype != torch.float32:
        return _reject(path, f"tensor {tuple(tensor.shape)} {tensor.dtype} != {shape} float32")
    return tensor


def _reject(path: Path, why: str) -> None:
    warnings.warn(f"ignoring corrupt embeddings cache file {path}: {why}; recomputing", stacklevel=3)
    return None


def _write(path: Path, embeddings: torch.Tensor, key: str, model_name: str) -> None:
    """Write atomically (temp file in the same folder + os.replace): readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": _FORMAT, "key": key, "shape": _shape_str(tuple(embeddings.shape)),
                "model": model_name}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({_TENSOR: embeddings.contiguous()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _shape_str(shape: tuple[int, ...]) -> str:
    return ",".join(str(s) for s in shape)
