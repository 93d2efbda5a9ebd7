"""Activation checkpointing: each decoder layer's forward recomputed in the backward.

A training forward keeps every layer's activations for the backward; at RL scale
(64 sampled sequences of ~130 tokens on SmolLM2-135M) they are most of the step's
memory. With ``TrainConfig(activation_checkpointing=True)`` the model's own
mechanism (transformers' activation checkpointing, non-reentrant
``torch.utils.checkpoint``) keeps only each layer's input and runs the layer again
in the backward: the same gradients, about one forward more of compute. TRL's
``GRPOConfig`` turns it on by default (``gradient_checkpointing=True``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from prefdyn.errors import TrainingError
from prefdyn.models.segment_attention import segmented_attention


def _causal_lm(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def recomputed_activations(model: nn.Module, on: bool = True) -> Iterator[None]:
    """Within the block, ``model``'s decoder layers recompute their activations in the
    backward (``on``); as before on exit. A model without transformers' support is a
    clear error, not a silent full-memory run."""
    if not on:
        yield
        return
    lm = _causal_lm(model)
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise TrainingError(f"activation_checkpointing: {type(lm).__name__} does not support "
                            "it (transformers' supports_gradient_checkpointing is False)")
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        disable = lm.activation_checkpointing_disable
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        disable = lm.gradient_checkpointing_disable
    try:
        # The recomputation calls the attention again: packed forwards' block-by-block
        # attention must stay selected until the last backward (see its module).
        with segmented_attention(model):
            yield
    finally:
        disable()
