"""The memory one training process needs, computed from the model's shape, not guessed.

Full fine-tuning with AdamW keeps, per trainable parameter, fp32 weights (4 bytes), an
fp32 gradient (4) and Adam's two moments (8): 16 bytes, about 108 GB for Llama-2-7B on
every data-parallel process. Mixed precision (``precision="bf16"``, autocast) keeps that
fp32 state, halves the activations and adds the bf16 copies of the weights that
autocast makes in the forward and keeps for the backward (2 bytes a parameter).
Sharding through an existing engine divides the state over the processes:
accelerate's FSDP ``FULL_SHARD`` (DeepSpeed ZeRO-3) shards weights, gradients and
optimizer state, ``SHARD_GRAD_OP`` (ZeRO-2) gradients and optimizer state only, and
prefdyn's own ``TrainConfig.sharding="optimizer"`` (ZeRO-1) the optimizer state only;
``TrainConfig.sharding="full"`` is FSDP ``FULL_SHARD`` (:mod:`prefdyn.training.fsdp`). A
fully sharded process also holds the gathered weights of the layer it runs and of the
one it prefetches, and with FSDP's own mixed precision (``param_dtype=bf16``) gathers
bf16 weights instead of keeping autocast copies.

Activations follow Korthikanti et al. (2022), "Reducing Activation Recomputation in Large
Transformer Models", Section 4.1: "the total memory required to store the activations
for a single layer of a transformer network is: sbh(34 + 5as/h)" bytes (16-bit
activations, with 1-byte dropout masks, which Llama does not have: an upper bound); fp32
activations take twice that. ``s`` is the sequence length, ``b`` the micro-batch, ``h``
the hidden size and ``a`` the number of attention heads. The vocabulary logits are left
out: prefdyn computes them only at the answer or response positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    """What the memory depends on: parameter count and the transformer's dimensions."""

    name: str
    params: int
    layers: int
    hidden: int
    heads: int


# Parameter counts of the released checkpoints (embedding and lm_head included).
LLAMA2_7B = ModelShape("Llama-2-7B", 6_738_415_616, 32, 4096, 32)
MISTRAL_7B = ModelShape("Mistral-7B", 7_241_732_096, 32, 4096, 32)
SMOLLM2_135M = ModelShape("SmolLM2-135M", 134_515_008, 30, 576, 9)

Sharding = Literal["none", "optimizer", "grad_op", "full"]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one process holds at its peak, by kind."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def training_memory(model: ModelShape, *, trainable: int | None = None,
                    precision: Literal["fp32", "bf16"] = "fp32", processes: int = 1,
                    sharding: Sharding = "none", batch: int = 1, seq: int = 1) -> MemoryEstimate:
    """Peak memory of one of ``processes`` data-parallel processes (module docstring).

    ``trainable``: trained parameters (default all: full fine-tuning; LoRA: the adapters).
    ``batch`` is the global batch, split evenly over the processes; ``seq`` its tokens a row.
    """
    if sharding not in ("none", "optimizer", "grad_op", "full"):
        raise ValueError(f"sharding must be 'none', 'optimizer', 'grad_op' or 'full', got {sharding!r}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    trainable = model.params if trainable is None else trainable
    optimizer_share = 1 / processes if sharding != "none" else 1.0
    gradient_share = 1 / processes if sharding in ("grad_op", "full") else 1.0
    weights = 4.0 * model.params
    if sharding == "full":
        layer = model.params / model.layers
        # The running and the prefetched layer, gathered (FSDP mixed precision: in bf16).
        weights = weights / processes + 2 * (2.0 if precision == "bf16" else 4.0) * layer
    elif precision == "bf16":
        weights += 2.0 * model.params  # autocast's bf16 copies, saved for the backward
    micro = -(-batch // processes)
    s, h, a = seq, model.hidden, model.heads
    activations = model.layers * s * micro * h * (34 + 5 * a * s / h) * (1 if precision == "bf16" else 2)
    return MemoryEstimate(weights, 4.0 * trainable * gradient_share, 8.0 * trainable * optimizer_share,
                          activations)
