"""Weights, gradients and optimizer state sharded over processes (FSDP, ZeRO stage 3).

A full fine-tune of a 7B model keeps 16 bytes a parameter in fp32 with AdamW, about
110 GB on every data-parallel process (:mod:`prefdyn.training.memory`): more than an
80 GB GPU. With ``TrainConfig.sharding="full"`` a multi-process full fine-tuning run
shards all three over the processes through torch's FSDP2 (``fully_shard``, the engine
accelerate's FSDP plugin drives in its version 2): each decoder layer is one unit whose
weights are gathered for its forward and backward and freed after, the rest (the
embedding, the unembedding, tied to it in SmolLM2, the final norm) one unit at the
root, which is the :class:`~prefdyn.policies.lm.LMPolicy` itself.

What stays the same for the user:

* the step (:func:`prefdyn.training.step.training_step`): FSDP averages the processes'
  gradients into each one's shard during the backward (a reduce-scatter instead of the
  all-reduce of :mod:`prefdyn.training.distributed`), and :func:`sharded_grad_sync`
  rescales that to the mean over the global batch's examples, so the update is the
  one-process update of the global batch, uneven shards included;
* the policy's entry points (:data:`ENTRY_POINTS`) are registered with FSDP, so every
  forward (the step's, pi_ref's, the evaluation's, the hidden-state snapshots')
  gathers the weights it needs; LMPolicy never calls the model's own ``forward``;
* checkpoints stay whole and in the unsharded format (:class:`GatherBeforeSave`
  gathers the full weights and optimizer state on rank 0, in host memory, before it
  writes), so a sharded run resumes from any checkpoint, sharded or not, and the other
  way round (:func:`load_full_state`);
* the trackers: the weight drift subtracts W(0) shard by shard (:func:`squared_distance`),
  a scalar all-reduce a parameter instead of gathering the model at every logged step;
* what the run hands back: a plain policy over a whole copy of the trained weights on
  every process (:func:`plain_model`), so what follows training (an evaluation, a
  second phase from the trained weights) runs as after an unsharded run.

``precision="bf16"`` under FSDP uses FSDP's own mixed precision: the gathered weights
are bf16 copies of the fp32 shards (no autocast copies kept beside them), gradients
are reduced in fp32, and the optimizer updates the fp32 shards.

Every process must run the same forwards: each gathers weights with the others. The
callbacks prefdyn ships run on every process (only rank 0 writes), and the reference
log-probs are computed on every process; a callback that runs the model on rank 0
only would wait for the others for ever.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefdyn.errors import TrainingError
from prefdyn.training.checkpoint import BeforeSave

ENTRY_POINTS = ("pair", "answer_vocab_logps", "last_hidden")
"""The :class:`~prefdyn.policies.lm.LMPolicy` methods that run the model."""


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a sharded (distributed) tensor."""
    return hasattr(t, "full_tensor") and hasattr(t, "to_local")


def squared_distance(p: Tensor, start: Tensor) -> Tensor:
    """``||p - start||^2``, 0-d and the same on every process. For a sharded ``p`` each
    process subtracts its own rows of ``start`` (given whole, e.g. W(0) read from disk)
    and the partial sums are added over the processes: a scalar all-reduce instead of
    gathering ``p`` (the whole model, for the drift at every logged step)."""
    if not is_dtensor(p):
        return (p - start).pow(2).sum()
    from torch.distributed.tensor import distribute_tensor

    mine = distribute_tensor(start, p.device_mesh, p.placements, src_data_rank=None)  # no comms
    return (p.detach() - mine).pow(2).sum().full_tensor()


def shard_policy(policy: nn.Module, *, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard ``policy`` (an :class:`~prefdyn.policies.lm.LMPolicy` in full mode) over the
    processes of the initialised default process group, in place: one FSDP unit per
    decoder layer and one for the rest, at the policy. FSDP averages the gradients over
    the processes (:func:`sharded_grad_sync` rescales them). ``param_dtype``:
    FSDP mixed precision (module docstring). Build the optimizer after this call."""
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    if policy.lora:
        raise TrainingError("sharding='full' shards a full fine-tune; a LoRA run trains a few "
                            "million adapter parameters, which sharding would not shrink: use "
                            "sharding 'none' or 'optimizer'")
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    decoder, _ = policy._parts(policy.model)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise TrainingError(f"sharding='full' needs a decoder with .layers; "
                            f"{type(decoder).__name__} has none")
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    for name in ENTRY_POINTS:
        register_fsdp_forward_method(policy, name)
    return policy


def sharded_grad_sync(grads: list[Tensor], finite: bool, n_examples: int) -> bool:
    """The :data:`~prefdyn.training.step.GradSync` of a sharded run: FSDP has already
    averaged every process's gradient of its summed example losses into this process's
    shards (its reduce-scatter); turn the average over processes into the sum over
    examples divided by the global number of examples, and say whether every process
    had a finite loss (one collective of two numbers)."""
    import torch.distributed as dist

    device = grads[0].device
    counts = torch.tensor([float(n_examples), 0.0 if finite else 1.0], device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    total, bad = counts.tolist()
    scale = dist.get_world_size() / max(total, 1.0)
    for g in grads:
        (g.to_local() if is_dtensor(g) else g).mul_(scale)
    return bad == 0


def _names(optimizer: torch.optim.Optimizer, policy: nn.Module) -> list[str]:
    """The name of each parameter the optimizer updates, in its order (the index the
    unsharded optimizer's state dict uses)."""
    by_id = {id(p): n for n, p in policy.named_parameters()}
    return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_state(policy: nn.Module, optimizer: torch.optim.Optimizer
               ) -> tuple[dict[str, Tensor], dict]:
    """The whole trainable weights and optimizer state of a sharded run, on rank 0 in host
    memory (empty elsewhere), in the unsharded format: weights by parameter name,
    optimizer state by parameter index. A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights, optim = get_state_dict(policy, optimizer, options=options)
    names = _names(optimizer, policy)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    weights = {k: v for k, v in weights.items() if k in trainable}
    if not optim:
        return weights, {}
    index = {n: i for i, n in enumerate(names)}
    state = {index[n]: s for n, s in optim["state"].items()}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in optim["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def load_full_state(policy: nn.Module, optimizer: torch.optim.Optimizer | None,
                    weights: dict[str, Tensor], optimizer_state: dict | None) -> None:
    """Put whole (unsharded-format) weights and optimizer state into a sharded run, each
    process keeping its shards. Every process calls it with the same checkpoint."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(policy, weights, options=options)
    if optimizer is None or optimizer_state is None:
        return
    names = _names(optimizer, policy)
    state = {names[int(i)]: s for i, s in optimizer_state["state"].items()}
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]}
              for g in optimizer_state["param_groups"]]
    set_optimizer_state_dict(policy, optimizer, {"state": state, "param_groups": groups},
                             options=options)


def plain_model(policy: nn.Module) -> nn.Module:
    """A plain (unsharded) copy of a sharded policy's model with the trained weights, on
    every process and on the model's device: what the run hands back, so code after
    training (evaluation, a second phase from the trained weights) runs as after an
    unsharded run. A collective: every process calls it. The copy is built without
    initialising weights (on the meta device) and takes the gathered ones; buffers
    (rotary frequencies), which FSDP does not shard, are shared with the sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    lm = policy.model
    weights = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True))
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    with torch.device("meta"):
        plain = type(lm)(lm.config)
    plain.load_state_dict(weights, strict=False, assign=True)
    for name, buffer in lm.named_buffers():
        owner, _, leaf = name.rpartition(".")
        plain.get_submodule(owner)._buffers[leaf] = buffer
    if getattr(lm.config, "tie_word_embeddings", False):
        plain.tie_weights()
    missing = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if missing:
        raise TrainingError(f"the gathered weights lack {missing[:3]}")
    return plain.train(lm.training)


class GatherBeforeSave(BeforeSave):
    """On every process: gather the whole weights and optimizer state on rank 0
    (:func:`full_state`) before each save; the writer reads them with :meth:`take`."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int):
        super().__init__(every)
        self.optimizer = optimizer
        self._gathered: tuple[dict[str, Tensor], dict] | None = None

    def collect(self, policy) -> None:
        self._gathered = full_state(policy, self.optimizer)

    def take(self) -> tuple[dict[str, Tensor], dict]:
        """The state gathered for this save (once: it holds a whole model in host memory)."""
        if self._gathered is None:
            raise TrainingError("the checkpoint writer ran before GatherBeforeSave gathered")
        gathered, self._gathered = self._gathered, None
        return gathered

