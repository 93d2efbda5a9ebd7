"""Decoding on CPU with every linear layer's weight prepacked for oneDNN.

A decode step multiplies a few rows (one token per sample) by every weight matrix.
``F.linear`` hands that to MKL's GEMM, which re-packs the whole weight matrix on
each call; at 16 rows that costs more than the product. Measured on the 2 CPU cores
of the development machines (SmolLM2-135M shapes, fp32, ``torch 2.13``; reproduce
with ``python benchmarks/bench_prepacked_linear.py``): the MLP's 576 x 1536 products
at 16 rows run at ~90 GFLOP/s through ``F.linear`` and ~180 GFLOP/s through oneDNN
with the weight reordered once (``torch.ops.mkldnn._reorder_linear_weight``, the op
PyTorch's own CPU inference path uses), and the 49,152-row unembedding at ~38
against ~115 GFLOP/s.

:func:`prepacked_linears` reorders the weights once on entry (one pass over them,
so once per rollout batch, the weights having changed since) and routes each
``nn.Linear`` of the model through oneDNN until exit. The products are the same up
to float round-off (a different summation order: ~1e-6 relative), so samples drawn
inside are draws from the same distribution; log-probs for the loss are computed
outside, by the plain path. Outside a CPU fp32 model, or where the build has no
oneDNN, it changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def _packed_forward(layer: nn.Linear, packed: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    # The packed copy is detached: with autograd on, the layer's own weight (a LoRA
    # adapter's, say) would silently get no gradient.
    if torch.is_grad_enabled() and (x.requires_grad or any(
            p.requires_grad for p in (layer.weight, layer.bias) if p is not None)):
        raise RuntimeError("prepacked linears are for inference (no autograd through oneDNN's "
                           "op): run the block under torch.no_grad()")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def can_prepack(model: nn.Module) -> bool:
    """Whether :func:`prepacked_linears` would change ``model``: fp32 weights on the CPU
    and a torch built with oneDNN."""
    try:
        param = next(model.parameters())
    except StopIteration:
        return False
    return (param.device.type == "cpu" and param.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _fp32_linears(model: nn.Module) -> Iterator[nn.Linear]:
    for module in model.modules():
        # Only layers that run nn.Linear's own forward: a subclass with its own (PEFT's
        # LoRA layer adds its adapter there) keeps it, and its inner linears are routed.
        if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward \
                and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu":
            yield module


@contextmanager
def prepacked_linears(model: nn.Module, rows: int | None = None) -> Iterator[nn.Module]:
    """Within the block, every fp32 ``nn.Linear`` of ``model`` (LoRA's base and adapter
    layers included) runs oneDNN's linear on a copy of its weight reordered on entry.

    ``rows``: the number of rows a product will have (a hint for the layout; any
    number works). The copies are freed on exit; the model's own weights are untouched.
    Use it under ``torch.no_grad()``: the packed op has no backward.
    """
    if not can_prepack(model):
        yield model
        return
    patched: list[nn.Linear] = []
    try:
        for layer in _fp32_linears(model):
            packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), rows)
            bias = None if layer.bias is None else layer.bias.detach()
            layer.forward = partial(_packed_forward, layer, packed, bias)  # shadows the class method
            patched.append(layer)
    except RuntimeError as e:  # an op this build lacks: decode through F.linear
        log.warning("oneDNN weight prepacking failed (%s); decoding with F.linear", e)
        _unpatch(patched)
        yield model
        return
    try:
        yield model
    finally:
        _unpatch(patched)


def _unpatch(layers: list[nn.Linear]) -> None:
    for layer in layers:
        del layer.forward


__all__ = ["can_prepack", "prepacked_linears"]
