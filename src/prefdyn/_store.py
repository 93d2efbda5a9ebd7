"""The one on-disk store for cached tensors: safetensors files keyed by content.

Every tensor prefdyn caches (g(x) embeddings, reference log-probs, CHES hidden
sums) is expensive to compute and cheap to check, so all of them share one
recipe, implemented here once:

* **Key**: a sha256 of named parts (model fingerprint, hash of the data,
  settings) plus the kind and version of the artifact, via
  :func:`prefdyn._hashing.hash_obj` (stable across processes and machines).
  Bumping ``version`` changes every key, so old files are simply never read.
* **File**: ``cache_dir()/<kind>/<key>.safetensors`` (never pickle). The store
  format, kind, version, key and the key's parts (as JSON) are repeated in the
  file's metadata, so a renamed, foreign or stale file is recognised.
* **Atomic write**: tensors are streamed one at a time into a temp file in the
  same folder, which then replaces the final name (``os.replace``); a reader
  never sees half a file, concurrent writers of one key each replace it with a
  whole file, and an interrupted write leaves the previous file untouched.
* **Validated read**: an unreadable or truncated file, mismatched metadata, or
  tensors with other names, shapes or dtypes than expected are warned about
  (naming the file) and recomputed, never used and never fatal.

:class:`ArtifactStore` is the keyed cache (``get_or_compute``, ``load``,
``save``); :func:`write_tensors` and :func:`read_tensor` are the unkeyed
primitives for a caller that writes a file once and reads it back one tensor
at a time (W(0) of a full fine-tuning run); :func:`atomic_file` is the atomic
write itself, for any other file written whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import safe_open

from prefdyn._hashing import hash_obj, stable_json
from prefdyn._paths import cache_dir as _cache_root

logger = logging.getLogger(__name__)

# Bump when the file layout or the metadata written below changes.
FORMAT = "prefdyn-store-v1"

Tensors = dict[str, torch.Tensor]
# A check beyond names/shapes/dtypes (e.g. "all finite"): None when fine, else why not.
Check = Callable[[Mapping[str, torch.Tensor]], str | None]

# torch dtype -> safetensors dtype tag (the subset prefdyn stores).
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
           torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
           torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


@dataclass(frozen=True)
class TensorSpec:
    """What a stored tensor must look like to be used."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class ArtifactKey:
    """The content key of one artifact; ``str(key)`` is the file's stem.

    Two keys are equal when their kind and digest are (the digest hashes the
    parts); ``parts`` ride along to be written into the file's metadata.
    """

    kind: str
    digest: str
    parts: Mapping[str, Any] = field(compare=False, hash=False, repr=False)

    def __str__(self) -> str:
        return self.digest


class ArtifactStore:
    """One kind of cached tensors under ``cache_dir()/<kind>/``.

    ``version``: bump when what the tensors mean changes (a new definition of
    g(x), another tokenization), so that no old file is read. ``label``: how
    warnings and logs name this cache ("embeddings", "CHES", ...).
    """

    def __init__(self, kind: str, *, version: int, label: str | None = None):
        self.kind = kind
        self.version = version
        self.label = label or kind

    def key(self, **parts: Any) -> ArtifactKey:
        """The key of the artifact made from ``parts`` (JSON-able values: strings, numbers, ...)."""
        digest = hash_obj({"store": FORMAT, "kind": self.kind, "version": self.version,
                           "parts": parts})[:32]
        return ArtifactKey(self.kind, digest, dict(parts))

    def path(self, key: ArtifactKey, cache_dir: str | os.PathLike | None = None) -> Path:
        self._own(key)
        return _cache_root(cache_dir) / self.kind / f"{key.digest}.safetensors"

    def metadata(self, key: ArtifactKey) -> dict[str, str]:
        """What the file under ``key`` carries in its metadata, and must carry to be read."""
        return {"format": FORMAT, "kind": self.kind, "version": str(self.version),
                "key": key.digest, "parts": stable_json(key.parts)}

    def load(self, key: ArtifactKey, expected: Mapping[str, TensorSpec], *,
             cache_dir: str | os.PathLike | None = None, check: Check | None = None) -> Tensors | None:
        """The tensors stored under ``key``, or None when absent or bad (a bad file is warned about)."""
        path = self.path(key, cache_dir)
        if not path.exists():
            return None
        want = self.metadata(key)
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                found = {k: meta.get(k) for k in want}
                if found != want:  # checked first: a foreign file's tensors are never read
                    return self._reject(path, f"metadata {found} != expected {want}")
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as e:  # noqa: BLE001 -- truncated, empty, or not safetensors at all
            return self._reject(path, f"unreadable ({e})")
        why = problem(tensors, expected, check)
        if why is not None:
            return self._reject(path, why)
        logger.info("%s cache hit: %s", self.label, path.name)
        return tensors

    def save(self, key: ArtifactKey, tensors: Mapping[str, torch.Tensor], *,
             cache_dir: str | os.PathLike | None = None, info: Mapping[str, str] | None = None) -> Path:
        """Write ``tensors`` under ``key`` atomically; ``info``: extra metadata for a human reader."""
        path = self.path(key, cache_dir)
        write_tensors(path, tensors, {**(info or {}), **self.metadata(key)})
        logger.info("%s cached in %s", self.label, path)
        return path

    def get_or_compute(self, key: ArtifactKey, expected: Mapping[str, TensorSpec],
                       compute: Callable[[], Mapping[str, torch.Tensor]], *,
                       cache_dir: str | os.PathLike | None = None, check: Check | None = None,
                       info: Mapping[str, str] | None = None) -> Tensors:
        """The stored tensors under ``key`` if present and valid, else ``compute()``, stored.

        A computed result with other names, shapes or dtypes than ``expected`` is
        a bug in the caller (ValueError); one that fails ``check`` is returned
        but not stored (warned), so that a bad value is never served from disk.
        """
        cached = self.load(key, expected, cache_dir=cache_dir, check=check)
        if cached is not None:
            return cached
        tensors = dict(compute())
        why = problem(tensors, expected)
        if why is not None:
            raise ValueError(f"computed {self.label} do not match what the cache expects: {why}")
        why = check(tensors) if check is not None else None
        if why is not None:
            warnings.warn(f"not caching {self.label}: {why}", stacklevel=2)
            return tensors
        self.save(key, tensors, cache_dir=cache_dir, info=info)
        return tensors

    def _own(self, key: ArtifactKey) -> None:
        if key.kind != self.kind:
            raise ValueError(f"a {key.kind!r} key cannot address the {self.kind!r} store")

    def _reject(self, path: Path, why: str) -> None:
        warnings.warn(f"ignoring corrupt {self.label} cache file {path}: {why}; recomputing",
                      stacklevel=3)


def problem(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, TensorSpec],
            check: Check | None = None) -> str | None:
    """Why ``tensors`` are not what ``expected`` describes (names, shapes, dtypes) or fail
    ``check``; None when they are fine."""
    if set(tensors) != set(expected):
        return f"tensors {sorted(tensors)} != expected {sorted(expected)}"
    for name, spec in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(spec.shape) or t.dtype != spec.dtype:
            return f"{name} is {tuple(t.shape)} {t.dtype}, expected {tuple(spec.shape)} {spec.dtype}"
    return check(tensors) if check is not None else None


def write_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` as a safetensors file at ``path``, atomically, one tensor at a time.

    Streaming: each tensor is copied to the CPU (if it is not there), written,
    and released before the next, so writing a model on a GPU never holds a
    second whole copy in host memory (``safetensors.torch.save_file`` keeps every
    CPU copy alive until the end). Tensors sharing storage (tied or viewed
    weights) are written as they are.
    """
    path = Path(path)
    with atomic_file(path) as f:
        _serialize(f, tensors, metadata or {})
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; it becomes ``path`` only when the
    block ends without error (temp file in the same folder + ``os.replace``).

    An error or interrupt inside the block removes the temp file and leaves any
    old ``path`` untouched; the temp file has no name of its own that could leak
    into what is written (e.g. a gzip header).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_tensor(path: str | os.PathLike, name: str, spec: TensorSpec | None = None) -> torch.Tensor:
    """Tensor ``name`` of the safetensors file at ``path`` (a fresh CPU tensor), reading nothing else.

    The file is opened and closed per call, so no mapping of it stays resident.
    Raises ValueError naming the file when the tensor differs from ``spec``.
    """
    with safe_open(path, framework="pt") as f:
        tensor = f.get_tensor(name)
    if spec is not None:
        why = problem({name: tensor}, {name: spec})
        if why is not None:
            raise ValueError(f"{path}: {why}")
    return tensor


def _serialize(f, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """The safetensors layout: 8-byte little-endian header size, JSON header, raw bytes."""
    if not all(isinstance(v, str) for v in metadata.values()):
        raise TypeError(f"safetensors metadata values must be strings, got {dict(metadata)}")
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise TypeError(f"cannot store {name!r}: dtype {t.dtype} is not one of {list(_DTYPES)}")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for t in tensors.values():
        data = t.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            f.write(memoryview(data.view(torch.uint8).numpy()))
