"""Reference log-probs computed once per (model, data) and cached on disk.

pi_ref never changes during DPO, so log pi_ref(y+|x), log pi_ref(y-|x) of every
training row are computed once, in a fixed order and batching (so the values do
not depend on how a run is batched, resumed or sharded), and stored as one
safetensors file ``cache_dir()/reference/<key>.safetensors`` with the tensors
``rows`` (n,) long, ``chosen`` and ``rejected`` (n,) float32. The key hashes the
model's fingerprint, the encoded data and the reference's identity (mode, dtype);
the key and row count are repeated in the metadata so that a truncated or
foreign file is noticed, warned about and recomputed (as
:mod:`prefdyn.embeddings.cache` does).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prefdyn._hashing import hash_obj
from prefdyn._paths import cache_dir as _cache_root
from prefdyn.policies.lm import LMPolicy, reference_logps, to_device

log = logging.getLogger(__name__)

# Bump when the definition of the reference log-probs or the file layout changes.
_FORMAT = "prefdyn-reference-v1"


def reference_key(model_fingerprint: str, content: object, *, mode: str, dtype: torch.dtype) -> str:
    """Content key: model weights + encoded data + how pi_ref is realised."""
    return hash_obj({"format": _FORMAT, "model": model_fingerprint, "data": hash_obj(content),
                     "mode": mode, "dtype": str(dtype)})[:32]


def compute_reference(policy: LMPolicy, batches) -> dict[int, tuple[float, float]]:
    """row -> (chosen, rejected) reference log-probs over ``batches`` (each row once)."""
    device = next(policy.model.parameters()).device
    table: dict[int, tuple[float, float]] = {}
    for batch in batches:
        batch = reference_logps(policy, to_device(batch, device))
        for r, c, j in zip(batch.rows.tolist(), batch.ref_chosen.tolist(), batch.ref_rejected.tolist()):
            table[r] = (c, j)
    return table


def precompute_reference(policy: LMPolicy, stream, key: str, *, batch_size: int = 8,
                         cache_dir: str | os.PathLike | None = None) -> dict[int, tuple[float, float]]:
    """Reference log-probs of every row of ``stream`` (an
    :class:`~prefdyn.training.lm_data.LMBatchStream`), read from the on-disk cache
    under ``key`` or computed (rows in order, ``batch_size`` at a time) and written."""
    table = cached_reference(key, stream.n, cache_dir=cache_dir)
    if table is not None:
        return table
    path = _path(key, cache_dir)
    table = compute_reference(policy, stream.in_order(batch_size))
    _write(path, table, key)
    log.info("reference log-probs of %d rows cached in %s", len(table), path)
    return table


def cached_reference(key: str, n: int, *, cache_dir: str | os.PathLike | None = None
                     ) -> dict[int, tuple[float, float]] | None:
    """The cached table of ``n`` rows under ``key``, or None (absent or corrupt: warned)."""
    path = _path(key, cache_dir)
    table = _read(path, key, n)
    if table is not None:
        log.info("reference log-probs cache hit: %s", path.name)
    return table


def _path(key: str, cache_dir) -> Path:
    return _cache_root(cache_dir) / "reference" / f"{key}.safetensors"


def _read(path: Path, key: str, n: int) -> dict[int, tuple[float, float]] | None:
    if not path.exists():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            rows, chosen, rejected = (f.get_tensor(k) for k in ("rows", "chosen", "rejected"))
    except Exception as e:  # noqa: BLE001 -- truncated or not safetensors at all
        return _reject(path, f"unreadable ({e})")
    expected = {"format": _FORMAT, "key": key, "rows": str(n)}
    found = {k: meta.get(k) for k in expected}
    if found != expected:
        return _reject(path, f"metadata {found} != expected {expected}")
    if not rows.shape == chosen.shape == rejected.shape == (n,):
        return _reject(path, f"tensor shapes {rows.shape}, {chosen.shape}, {rejected.shape} != ({n},)")
    if not (torch.isfinite(chosen).all() and torch.isfinite(rejected).all()):
        return _reject(path, "non-finite values")
    return {r: (c, j) for r, c, j in zip(rows.tolist(), chosen.tolist(), rejected.tolist())}


def _reject(path: Path, why: str) -> None:
    warnings.warn(f"ignoring corrupt reference cache file {path}: {why}; recomputing", stacklevel=3)


def _write(path: Path, table: dict[int, tuple[float, float]], key: str) -> None:
    """Atomic (temp file + os.replace): concurrent writers (one per process) are safe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(table)
    tensors = {"rows": torch.tensor(rows, dtype=torch.long),
               "chosen": torch.tensor([table[r][0] for r in rows], dtype=torch.float32),
               "rejected": torch.tensor([table[r][1] for r in rows], dtype=torch.float32)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": _FORMAT, "key": key, "rows": str(len(rows))})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
