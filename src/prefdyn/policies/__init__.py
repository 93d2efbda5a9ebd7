"""Policies: how a model turns a batch into what an objective needs.

One module per policy, each giving its objective's typed container (e.g.
:class:`~prefdyn.losses.PreferenceLogps`) to the one training step
(:mod:`prefdyn.training.step`): ``last_layer`` trains the
unembedding on fixed hidden states (Im & Li, ICML 2024, Sections 3-4); ``lm``
trains a causal LM, fully or through LoRA adapters, on its batch types
(:class:`AnswerBatch`, :class:`PairBatch`); ``rollout`` samples groups of responses
from the current model for RL fine-tuning. ``_shared_prefix`` is the LM's packed
forward for prompts that share a token prefix. Below ``tracking`` and ``training``,
which both read policies.
"""

from prefdyn.policies._shared_prefix import last_token_hidden
from prefdyn.policies.last_layer import LastLayerData, LastLayerPolicy, stack_problems
from prefdyn.policies.lm import (
    AnswerBatch,
    LMBatch,
    LMPolicy,
    PairBatch,
    ReferenceCache,
    apply_lora,
    is_peft,
    left_padded,
    reference_logps,
    to_device,
)

__all__ = [
    "AnswerBatch",
    "LMBatch",
    "LMPolicy",
    "LastLayerData",
    "LastLayerPolicy",
    "PairBatch",
    "ReferenceCache",
    "apply_lora",
    "is_peft",
    "last_token_hidden",
    "left_padded",
    "reference_logps",
    "stack_problems",
    "to_device",
]
