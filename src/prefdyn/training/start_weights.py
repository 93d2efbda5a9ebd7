"""The starting weights of a full fine-tuning run, on disk instead of in memory.

DPO in full mode needs W(0) for two things: pi_ref's log-probs and the drift
metrics (``||W(t) - W(0)||``). Keeping a second in-memory model for them costs
one model's size for the whole run (0.54 GB for SmolLM2-135M in fp32), although
the reference log-probs are usually computed once before the first step (from
the model itself, which *is* W(0) then) and the drift reads W(0) only at logging
steps. :class:`StartWeights` writes W(0) once to a safetensors file and reads
one tensor at a time (each read opens and closes the file, so no mapping stays
resident), both through :mod:`prefdyn._store` (streamed, atomic writes);
:class:`~prefdyn.policies.lm.LMPolicy` builds a frozen copy from it only
if a reference log-prob is needed after training has started.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from pathlib import Path

from torch import Tensor, nn

from prefdyn._paths import cache_dir
from prefdyn._store import FORMAT, TensorSpec, read_tensor, write_tensors


class StartWeights:
    """W(0) of ``model``'s parameters (tied weights once, by their first name)."""

    def __init__(self, model: nn.Module, folder: str | os.PathLike | None = None):
        folder = Path(folder) if folder is not None else cache_dir() / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="start-weights-", suffix=".safetensors", dir=folder)
        os.close(fd)
        self.path = Path(name)
        # Deleted with this object (or at interpreter exit).
        self._cleanup = weakref.finalize(self, self.path.unlink, missing_ok=True)
        params = dict(model.named_parameters())
        self.names = list(params)
        # Checked on every read: a file changed under a running job fails loudly.
        self._specs = {n: TensorSpec(tuple(p.shape), p.dtype) for n, p in params.items()}
        write_tensors(self.path, params, {"format": FORMAT, "kind": "start-weights"})

    def tensor(self, name: str) -> Tensor:
        """W(0) of parameter ``name`` (a fresh CPU tensor)."""
        return read_tensor(self.path, name, self._specs[name])

    def load_into(self, model: nn.Module) -> nn.Module:
        """Copy W(0) into ``model`` (same architecture), one tensor at a time."""
        params = dict(model.named_parameters())
        for name in self.names:
            params[name].data.copy_(self.tensor(name))
        return model
