"""Reference log-probs computed once per (model, data) and cached on disk.

pi_ref never changes during DPO, so log pi_ref(y+|x), log pi_ref(y-|x) of every
training row are computed once, in a fixed order and batching (so the values do
not depend on how a run is batched, resumed or sharded), and stored in the
:mod:`prefdyn._store` store ``reference`` (``cache_dir()/reference/<key>.safetensors``)
as the tensors ``rows`` (n,) long, ``chosen`` and ``rejected`` (n,) float32. The
key hashes the model's fingerprint, the encoded data and the reference's identity
(mode, dtype); a truncated, foreign or non-finite file is warned about and recomputed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from prefdyn._hashing import hash_obj
from prefdyn._store import ArtifactKey, ArtifactStore, TensorSpec
from prefdyn.policies.lm import LMPolicy, reference_logps, to_device

# Bump the version when the definition of the reference log-probs changes.
_STORE = ArtifactStore("reference", version=1)

Table = dict[int, tuple[float, float]]


def reference_key(model_fingerprint: str, content: object, *, mode: str, dtype: torch.dtype,
                  autocast: torch.dtype | None = None) -> ArtifactKey:
    """Content key: model weights + encoded data + how pi_ref is realised (``autocast``:
    the mixed-precision dtype its forward ran in; fp32 runs keep the keys they had)."""
    extra = {"autocast": str(autocast)} if autocast is not None else {}
    return _STORE.key(model=model_fingerprint, data=hash_obj(content), mode=mode, dtype=str(dtype),
                      **extra)


def compute_reference(policy: LMPolicy, batches) -> Table:
    """row -> (chosen, rejected) reference log-probs over ``batches`` (each row once)."""
    device = next(policy.model.parameters()).device
    table: Table = {}
    for batch in batches:
        batch = reference_logps(policy, to_device(batch, device))
        for r, c, j in zip(batch.rows.tolist(), batch.ref_chosen.tolist(), batch.ref_rejected.tolist()):
            table[r] = (c, j)
    return table


def precompute_reference(policy: LMPolicy, stream, key: ArtifactKey, *, batch_size: int = 8,
                         cache_dir: str | os.PathLike | None = None) -> Table:
    """Reference log-probs of every row of ``stream`` (an
    :class:`~prefdyn.training.lm_data.LMBatchStream`), read from the on-disk cache
    under ``key`` or computed (rows in order, ``batch_size`` at a time) and written."""
    tensors = _STORE.get_or_compute(
        key, _expected(stream.n), lambda: _to_tensors(compute_reference(policy, stream.in_order(batch_size))),
        cache_dir=cache_dir, check=_finite)
    return _to_table(tensors)


def cached_reference(key: ArtifactKey, n: int, *, cache_dir: str | os.PathLike | None = None
                     ) -> Table | None:
    """The cached table of ``n`` rows under ``key``, or None (absent or corrupt: warned)."""
    tensors = _STORE.load(key, _expected(n), cache_dir=cache_dir, check=_finite)
    return _to_table(tensors) if tensors is not None else None


def _expected(n: int) -> dict[str, TensorSpec]:
    return {"rows": TensorSpec((n,), torch.long), "chosen": TensorSpec((n,), torch.float32),
            "rejected": TensorSpec((n,), torch.float32)}


def _finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    if torch.isfinite(tensors["chosen"]).all() and torch.isfinite(tensors["rejected"]).all():
        return None
    return "non-finite values"


def _to_tensors(table: Table) -> dict[str, torch.Tensor]:
    rows = sorted(table)
    return {"rows": torch.tensor(rows, dtype=torch.long),
            "chosen": torch.tensor([table[r][0] for r in rows], dtype=torch.float32),
            "rejected": torch.tensor([table[r][1] for r in rows], dtype=torch.float32)}


def _to_table(tensors: Mapping[str, torch.Tensor]) -> Table:
    return {r: (c, j) for r, c, j in zip(tensors["rows"].tolist(), tensors["chosen"].tolist(),
                                          tensors["rejected"].tolist())}
