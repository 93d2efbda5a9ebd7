"""Load a causal LM and its tokenizer from one spec string, with a content fingerprint.

Specs, in the order they are tried:

* ``None`` / ``"embedded"`` / ``"smollm2"``: the embedded SmolLM2-135M-Instruct;
* a path ending in ``.gguf``: de-quantized once by transformers, cached as safetensors;
* an existing folder: ``from_pretrained(folder, local_files_only=True)``;
* ``"org/name"``: a Hugging Face hub id (downloads when not cached);
* anything else: :class:`~prefdyn.errors.ModelError`.
"""

from __future__ import annotations

import copy
import dataclasses

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefdyn._hashing import hash_obj, hash_tensor
from prefdyn.errors import ModelError
from prefdyn.models.embedded import EMBEDDED_ALIASES, EMBEDDED_NAME, embedded_gguf_path, ensure_converted

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Elements sampled from every parameter for the fingerprint: enough to notice
# any training step, cheap enough to recompute at will (~0.1 s for 135M params).
_SAMPLES_PER_PARAM = 4096


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer (left padding, pad token set), a name and a fingerprint.

    ``fingerprint`` is computed at load time; after changing the weights in
    place call :meth:`refresh_fingerprint` (caches key on it).
    """

    model: Any  # transformers.PreTrainedModel (kept loose: PEFT wrappers are fine too)
    tokenizer: Any  # transformers tokenizer
    name: str
    fingerprint: str

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def copy(self) -> LoadedModel:
        """The same tokenizer, name and fingerprint with its own deep copy of the weights
        (training changes a model in place; runs that must start equal train copies)."""
        return dataclasses.replace(self, model=copy.deepcopy(self.model))

    def refresh_fingerprint(self) -> str:
        self.fingerprint = model_fingerprint(self.model, self.tokenizer)
        return self.fingerprint


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load the model named by ``spec`` (see the module docstring) on ``device`` in ``dtype``."""
    key = None if spec is None else str(spec)
    if key is None or key.lower() in EMBEDDED_ALIASES:
        return _load_gguf(embedded_gguf_path(), EMBEDDED_NAME, cache_dir, dtype, device)
    path = Path(key).expanduser()
    if key.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {key}")
        return _load_gguf(path, path.stem, cache_dir, dtype, device)
    if path.is_dir():
        return _load_hf(path, path.name, dtype, device, trust_remote_code, local_files_only=True)
    if path.exists():
        raise ModelError(f"{key} is a file, not a model folder or a .gguf file")
    if _HUB_ID.match(key):
        return _load_hf(key, key, dtype, device, trust_remote_code, local_files_only=False)
    raise ModelError(f"model not found: {key!r} is neither an existing folder, a .gguf file, "
                     "a hub id like 'org/name', nor 'embedded'")


def _load_gguf(gguf_path: Path, name: str, cache_dir, dtype, device) -> LoadedModel:
    """Load the converted folder of a GGUF file; a folder that fails to load is rebuilt once."""
    folder = ensure_converted(gguf_path, cache_dir=cache_dir)
    try:
        return _load_hf(folder, name, dtype, device, False, local_files_only=True)
    except ModelError as e:
        warnings.warn(f"converted model cache {folder} is corrupt ({e}); rebuilding it", stacklevel=3)
        folder = ensure_converted(gguf_path, cache_dir=cache_dir, rebuild=True)
        return _load_hf(folder, name, dtype, device, False, local_files_only=True)


def _load_hf(source: str | Path, name: str, dtype: torch.dtype, device, trust_remote_code: bool,
             *, local_files_only: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(local_files_only=local_files_only, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs, **_own_layers())
    except Exception as e:  # OSError, ValueError, safetensors errors, ...: all mean "cannot load"
        raise ModelError(f"cannot load model {str(source)!r}: {e}") from e
    model = model.to(device).eval()
    prepare_tokenizer(tokenizer)
    logger.info("loaded %s (%s, %s)", name, model.dtype, device)
    return LoadedModel(model, tokenizer, name, model_fingerprint(model, tokenizer))


def _own_layers() -> dict:
    """``use_kernels=False`` where transformers has the option: the model keeps its own
    PyTorch layers. Since transformers 5, ``from_pretrained`` turns hub kernels on by
    default when the ``kernels`` package is installed (transformers requires it), and
    ``model.train()`` on a GPU then swaps layers for code downloaded from the hub: offline
    that fails ("could not verify publisher trust status", seen on an H200 here), online
    it changes the numerics prefdyn measures."""
    from transformers import PreTrainedModel

    return {"use_kernels": False} if hasattr(PreTrainedModel, "set_use_kernels") else {}


def prepare_tokenizer(tokenizer) -> None:
    """Left padding (the last position is then the last prompt token) and a pad token (eos if none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError("the tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token


def tokenizer_fingerprint(tokenizer) -> str:
    """Content hash of what decides tokenization: the full fast-tokenizer spec (or vocab),
    the special tokens and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hash_obj({
        "class": type(tokenizer).__name__,
        "spec": hash_obj(spec),
        "size": len(tokenizer),
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "chat_template": getattr(tokenizer, "chat_template", None),
    })


def model_fingerprint(model, tokenizer) -> str:
    """Deterministic content hash of config, tokenizer and weights.

    The unembedding and the final norm are hashed in full (they decide the
    logits we study); every other parameter through a strided sample of
    ``_SAMPLES_PER_PARAM`` elements, which changes with any real update.
    """
    config = model.config.to_dict()
    # Keys that record where/how a model was saved, not what it computes.
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash", "architectures"):
        config.pop(volatile, None)
    config["dtype"] = str(model.dtype)  # None in a fresh config, set after save/load
    full = {id(p) for p in (_output_weight(model), _final_norm_weight(model)) if p is not None}
    params = {}
    with torch.no_grad():
        for pname, p in model.named_parameters(remove_duplicate=True):
            if id(p) in full:
                params[pname] = hash_tensor(p)
            else:
                flat = p.detach().reshape(-1)
                params[pname] = hash_tensor(flat[:: max(1, flat.numel() // _SAMPLES_PER_PARAM)])
    return hash_obj({"config": config, "tokenizer": tokenizer_fingerprint(tokenizer), "params": params})[:16]


def _output_weight(model) -> torch.Tensor | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return None if head is None else head.weight


def _final_norm_weight(model) -> torch.Tensor | None:
    try:
        norm = getattr(model.get_decoder(), "norm", None)
    except Exception:  # exotic architectures: the sampled hash still covers it
        return None
    return getattr(norm, "weight", None)
