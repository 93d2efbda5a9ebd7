"""What every workload gets: device, dtype, size, the measured limits, the shared model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks._limits import Limits

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


class Skip(Exception):
    """A workload (or its anchor) cannot run here; the message says what to install or pass."""


@dataclass
class Context:
    device: torch.device
    dtype: str  # "fp32" | "bf16"
    quick: bool
    repeats: int
    limits: Limits
    _loaded: object = field(default=None, repr=False)

    def model(self):
        """The embedded SmolLM2-135M-Instruct on the device, fp32, loaded once per invocation."""
        if self._loaded is None:
            from prefdyn.models import load_model

            self._loaded = load_model(None, device=self.device)
            self._loaded.model.eval()
        return self._loaded

    def fp32_only(self, workload: str) -> None:
        if self.dtype != "fp32":
            raise Skip(f"{workload} has no {self.dtype} path yet (fp32 only)")


def non_embedding_params(model) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding table
    (a lookup); a tied lm_head is counted where it is used (at the answer positions)."""
    embed = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embed)
