"""The policy's training forward of on-policy rollouts, taken from the decode that sampled them.

With activation checkpointing a GRPO step runs the policy over the sampled tokens three
times: the decode that samples them, the training forward (which keeps only each
layer's input) and, in the backward, each layer again from that input. The decode
already computed every layer's input at every token, with the same weights: on-policy,
nothing changes the weights between sampling a batch and its first gradient. Here the
decode's layer inputs are recorded (forward pre-hooks on the decoder layers and the final
norm, during :func:`shared_prefill` and ``generate``), laid out as the packed groups of
:mod:`prefdyn.policies._packed_rollout`, and the training forward is skipped:

* forward: the last layer's recorded outputs at the predicting positions go through the
  final norm, the LM head and the token log-softmax, as autograd sees them;
* backward (:class:`_Replay`): from the top down, each layer runs again on its recorded
  input (block attention over its packed rows, exactly as the checkpointed recomputation
  does) and is back-propagated; then the token embeddings.

The same FLOPs as the checkpointed backward, less one forward over the ~4,000-4,600
packed tokens of the benchmark's full-size step (8 prompts x 8 samples x 64 tokens):
measured there, the policy's forward took 2.2 s against 11.3-12.5 s and a whole step
65.9 s against 75.7 s, at +0.3 GB peak memory (README, "the policy's forward taken from
the decode"). The log-probs and gradients are those of the packed forward up to float round-off (the decode
computes a token at a time, in other product shapes): tested against it.

It runs only where that is exact and safe, else the plain packed forward runs:

* the weights are the ones sampled with: every parameter's identity and in-place
  ``_version`` are recorded before sampling and compared before the replay (an optimizer
  step, a loaded checkpoint or any in-place edit changes them);
* a decoder whose layers prefdyn calls as transformers' Llama family does
  (``_DECODERS``), whose first layer's input is the token embedding itself (checked on the
  recorded values: no embedding scale) and whose attention can be packed
  (:func:`can_pack`); no dropout, no autocast, no sharded (DTensor) parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from prefdyn.models.segment_attention import packed_attention_inputs, segmented_attention
from prefdyn.policies._packed_rollout import GroupPacking, _causal_lm, group_packing, logps_from_top
from prefdyn.policies._shared_prefix import _dropout_active, _token_embeddings

# model_type of decoders whose forward is embed -> layers(hidden, attention_mask=,
# position_ids=, position_embeddings=(cos, sin)) -> norm (transformers 5).
_DECODERS = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _decoder(model: nn.Module) -> nn.Module | None:
    """The decoder whose layers can be recorded and replayed, or None."""
    lm = _causal_lm(model)
    if getattr(getattr(lm, "config", None), "model_type", None) not in _DECODERS:
        return None
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    if decoder is None or not all(hasattr(decoder, a) for a in ("layers", "norm", "rotary_emb")):
        return None
    if any(hasattr(p, "placements") for p in model.parameters()):  # FSDP's DTensors
        return None
    return decoder


def _layers(decoder: nn.Module) -> list[nn.Module]:
    return list(decoder.layers[:decoder.config.num_hidden_layers])


def weights_version(model: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced or modified in place."""
    return tuple((id(p), p._version) for p in model.parameters())


class DecodeRecorder:
    """Records the input of every decoder layer and of the final norm at each forward
    call in the block (prefill, then each decode step)."""

    def __init__(self, model: nn.Module):
        self.model, self.decoder = model, _decoder(model)
        self.calls: list[list[Tensor]] = []  # per site (layers..., norm): one entry a call
        self.version = weights_version(model)

    @contextmanager
    def recording(self) -> Iterator[DecodeRecorder]:
        if self.decoder is None:
            yield self
            return
        sites = [*_layers(self.decoder), self.decoder.norm]
        self.calls = [[] for _ in sites]

        def hook(calls):
            def pre_hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                calls.append(hidden)
            return pre_hook

        handles = [s.register_forward_pre_hook(hook(c), with_kwargs=True)
                   for s, c in zip(sites, self.calls)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def activations(self, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
                    groups: Tensor, prompt_len: int, prefilled: bool) -> DecodeActivations | None:
        """The recorded inputs laid out as packed groups, or None where they do not cover
        the batch as expected (then the policy runs its own forward). ``prefilled``: the
        first call was :func:`shared_prefill` (one row a prompt, all but the last prompt
        token); the calls after it are ``generate``'s (all rows)."""
        if self.decoder is None or not self.calls or not self.calls[0]:
            return None
        if weights_version(self.model) != self.version:
            return None
        N, full = input_ids.shape
        packing = group_packing(input_ids, attention_mask, response_mask, groups, prompt_len)
        calls = self.calls[0]
        start = calls[0].shape[1] if prefilled else 0
        decoded = calls[1:] if prefilled else calls
        if (prefilled and (calls[0].shape[0] != int(groups.max()) + 1 or start != prompt_len - 1)
                or not decoded or any(c.shape[0] != N for c in decoded)):
            return None
        width = sum(c.shape[1] for c in decoded)  # columns start .. start + width - 1
        if width != full - start - 1:  # every token fed back but the last sampled one
            return None
        index, zero = _gather_index(packing.origin, full, groups, start, width, prefilled)
        inputs = []
        for site in self.calls:
            d = site[0].shape[-1]
            parts = [site[0].reshape(-1, d)] if prefilled else []
            parts.append(torch.cat(site[1:] if prefilled else site, 1).reshape(-1, d))
            flat = torch.cat([*parts, parts[0].new_zeros(1, d)])
            inputs.append(flat[index].view(*packing.tokens.shape, d))
            site.clear()
        recorded = index != zero
        first = inputs[0].reshape(-1, inputs[0].shape[-1])[recorded]
        if not torch.equal(first, self.decoder.get_input_embeddings()(
                packing.tokens.reshape(-1)[recorded])):
            return None  # the first layer's input is not the plain token embedding
        return DecodeActivations(packing, inputs[:-1], inputs[-1], self.version)


def _gather_index(origin: Tensor, full: int, groups: Tensor, start: int, width: int,
                  prefilled: bool) -> tuple[Tensor, int]:
    """For each packed position, its row in ``[prefill (prompts * start) | decode (N *
    width) | a zero row]``: the prefill's row of its prompt before column ``start``, the
    decode's after; the zero row for pads and for the one token never fed back (the last
    sampled one), and the zero row's index."""
    row, col = origin.clamp(min=0) // full, origin.clamp(min=0) % full
    N = len(groups)
    prefill = (int(groups.max()) + 1) * start if prefilled else 0
    zero = prefill + N * width
    decoded = (col - start).clamp(min=0)
    index = torch.where(col < start, groups[row] * start + col, prefill + row * width + decoded)
    return torch.where((origin < 0) | (decoded >= width), zero, index), zero


@dataclass
class DecodeActivations:
    """The decode's layer inputs of a rollout batch, packed: ``layer_inputs`` one
    (P, W, d) a layer, ``top`` (P, W, d) the last layer's outputs; ``version`` the
    weights they were computed with (:func:`weights_version`)."""

    packing: GroupPacking
    layer_inputs: list[Tensor]
    top: Tensor
    version: tuple

    def usable(self, model: nn.Module) -> bool:
        """Whether replaying them gives ``model``'s forward and gradient now."""
        decoder = _decoder(model)
        return (decoder is not None and len(self.layer_inputs) == len(_layers(decoder))
                and weights_version(model) == self.version
                and not torch.is_autocast_enabled(self.top.device.type)
                and not _dropout_active(decoder))


def replayed_response_logps(model: nn.Module, activations: DecodeActivations, input_ids: Tensor,
                            response_mask: Tensor, prompt_len: int, temperature: float) -> Tensor:
    """:func:`~prefdyn.policies._packed_rollout.packed_response_logps` from the decode's
    recorded layer inputs (module docstring): ``(N, T)``, 0 where ``response_mask`` is 0.
    ``activations`` must be :meth:`~DecodeActivations.usable` with ``model``."""
    mask = response_mask.bool()
    where = activations.packing.source[mask]
    top = activations.top.reshape(-1, activations.top.shape[-1])[where]     # (K, d)
    decoder = _decoder(model)
    replayed = [*_layers(decoder), decoder.get_input_embeddings()]
    anchor = next((p for m in replayed for p in m.parameters() if p.requires_grad), None)
    if torch.is_grad_enabled() and anchor is not None:
        top = _Replay.apply(top, (model, decoder, activations, where), anchor)
    logps = logps_from_top(model, top, input_ids[:, prompt_len:][mask], temperature)
    out = logps.new_zeros(mask.shape)
    out[mask] = logps
    return out


@contextmanager
def _no_layer_checkpointing(layers: list[nn.Module]) -> Iterator[None]:
    """The replay is the recomputation: transformers' own checkpointing off for it."""
    saved = [getattr(layer, "gradient_checkpointing", False) for layer in layers]
    for layer in layers:
        layer.gradient_checkpointing = False
    try:
        yield
    finally:
        for layer, on in zip(layers, saved):
            layer.gradient_checkpointing = on


class _Replay(torch.autograd.Function):
    """Identity on the last layer's recorded outputs; its backward back-propagates through
    every layer, recomputed from its recorded input, and the token embeddings.
    ``anchor`` (a trainable decoder parameter) only makes autograd call the backward."""

    @staticmethod
    def forward(ctx, top: Tensor, replay: tuple, anchor: Tensor) -> Tensor:
        ctx.replay = replay
        return top.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_top: Tensor):
        model, decoder, activations, where = ctx.replay
        del ctx.replay  # the recorded inputs are freed as the backward goes down
        packing, inputs = activations.packing, activations.layer_inputs
        grad = grad_top.new_zeros(activations.top.shape).view(-1, grad_top.shape[-1])
        grad.index_add_(0, where, grad_top)
        grad = grad.view(activations.top.shape)
        layers = _layers(decoder)
        with torch.enable_grad(), segmented_attention(model), _no_layer_checkpointing(layers):
            attention = packed_attention_inputs(decoder, packing.segment)
            with torch.no_grad():
                rotary = decoder.rotary_emb(inputs[0], position_ids=packing.positions)
            for i in reversed(range(len(layers))):
                x = inputs.pop(i).detach().requires_grad_(True)
                y = layers[i](x, position_ids=packing.positions, position_embeddings=rotary,
                              **attention)
                torch.autograd.backward(y[0] if isinstance(y, tuple) else y, grad)
                grad = x.grad
            embeds = _token_embeddings(decoder, packing.tokens)
            if embeds is None and decoder.get_input_embeddings().weight.requires_grad:
                embeds = decoder.get_input_embeddings()(packing.tokens)
            if embeds is not None:
                torch.autograd.backward(embeds, grad)
        return None, None, None
