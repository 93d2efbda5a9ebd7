"""log softmax(logits / T)[target] of each row, without a (rows, V) log-softmax.

The plain expression ``torch.log_softmax(logits / T, -1).gather(-1, targets)`` makes
a new (rows, V) tensor for the division, one for the log-softmax (kept for the
backward), and in the backward one for the gathered gradient, one for the
log-softmax's and one for the division's. At RL scale (64 samples x 64 tokens, V =
49,152) each is 755 MB, and on CPU most of their cost is the first touch of fresh
pages (the profile of the 8 x 8 x 64 GRPO step: ~1.4 s for the division alone).
Here the forward walks the rows in chunks (the normalizer ``lse``, a few MB at a
time) and keeps only the logits the caller already holds; the backward writes
``(onehot - softmax) * grad / T`` chunk by chunk into one tensor. Same values and
gradients as the plain expression (tested); logits of any float dtype (bf16 under
autocast) are read in fp32 chunk by chunk, and the gradient has their dtype.

:func:`head_token_logps` goes one step further for a plain LM head (fp32, no bias, no
autocast): its backward turns the saved logits into their own gradient in place, chunk by
chunk, then multiplies that by the head and the hidden states, so the backward makes no
second (rows, V) tensor (at 64 x 64 response tokens, V = 49,152: 755 MB less, no more
work). A second backward through the same graph is refused: its logits are gone. Without
autograd (the reference's log-probs) it computes the logits a chunk of rows at a time and
holds no (rows, V) tensor at all.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_CHUNK_ELEMENTS = 1 << 22  # 16 MB of fp32 a chunk: stays in the last-level cache
_HEAD_CHUNK_ELEMENTS = 1 << 25  # 128 MB: rows enough for the head's product to run at speed


def _chunks(rows: int, width: int, elements: int = _CHUNK_ELEMENTS):
    step = max(1, elements // max(1, width))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def _normalizers(logits: Tensor, temperature: float) -> Tensor:
    """logsumexp(logits / T) of each row, fp32, a chunk of rows at a time."""
    lse = logits.new_empty(logits.shape[0], dtype=torch.float32)
    for c in _chunks(*logits.shape):
        lse[c] = torch.logsumexp(logits[c].float() / temperature, -1)
    return lse


def _picked_logps(logits: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(log softmax(logits / T)[targets], logsumexp(logits / T)) of each row, fp32."""
    lse = _normalizers(logits, temperature)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1).float() / temperature
    return picked - lse, lse


def _logit_grad(logits: Tensor, targets: Tensor, lse: Tensor, scale: Tensor, temperature: float,
                out: Tensor) -> Tensor:
    """``(onehot(target) - softmax(logits / T)) * scale`` of each row, written chunk by chunk
    into ``out`` (which may be ``logits`` itself)."""
    for c in _chunks(*logits.shape):
        p = (logits[c].float() / temperature).sub_(lse[c, None]).exp_()
        out[c] = p.mul_(-scale[c, None])
    return out.scatter_add_(-1, targets[:, None], scale[:, None].to(out.dtype))


class _TokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
        out, lse = _picked_logps(logits, targets, temperature)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        logits, targets, lse = ctx.saved_tensors
        T = ctx.temperature
        scale = grad.float() / T  # d out / d logit_v = ([v = target] - softmax_v) / T
        return _logit_grad(logits, targets, lse, scale, T, torch.empty_like(logits)), None, None


def token_logps(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """``log softmax(logits / temperature)[targets]`` of each row, fp32: ``logits (n, V)``,
    ``targets (n,)`` token ids -> ``(n,)``; differentiable in ``logits``."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"token_logps takes logits (n, V) and targets (n,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    return _TokenLogps.apply(logits, targets, float(temperature))


class _HeadTokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float) -> Tensor:
        logits = hidden @ weight.T
        out, lse = _picked_logps(logits, targets, temperature)
        ctx.save_for_backward(hidden, weight, targets, lse, logits)
        ctx.temperature, ctx.used = temperature, False
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        if ctx.used:
            raise RuntimeError("head_token_logps: a second backward through the same graph "
                               "(its logits became the first one's gradient)")
        ctx.used = True
        hidden, weight, targets, lse, logits = ctx.saved_tensors
        T = ctx.temperature
        # The logits become their own gradient, in place.
        d = _logit_grad(logits, targets, lse, grad / T, T, out=logits)
        g_hidden = d @ weight if ctx.needs_input_grad[0] else None
        g_weight = d.T @ hidden if ctx.needs_input_grad[1] else None
        return g_hidden, g_weight, None, None


def _chunked_head_token_logps(hidden: Tensor, weight: Tensor, targets: Tensor,
                              temperature: float) -> Tensor:
    """Without autograd (pi_ref's log-probs): the forward of :class:`_HeadTokenLogps` on
    128 MB of logits at a time, so no (n, V) tensor is ever whole (on an H200 the GRPO
    step's peak memory was pi_ref's logits, 0.76 GB at 64 x 64 response tokens, V =
    49,152). The same values; on CPU the same speed (smaller products ran slower)."""
    out = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
    for c in _chunks(hidden.shape[0], weight.shape[0], _HEAD_CHUNK_ELEMENTS):
        out[c] = _picked_logps(hidden[c] @ weight.T, targets[c], temperature)[0]
    return out


def head_token_logps(head: nn.Module, hidden: Tensor, targets: Tensor,
                     temperature: float = 1.0) -> Tensor:
    """``log softmax(head(hidden) / temperature)[targets]`` of each row, fp32: ``hidden
    (n, d)``, ``targets (n,)`` -> ``(n,)``. A plain fp32 ``nn.Linear`` head without a bias,
    outside autocast, holds one (n, V) tensor instead of two (module docstring); any other
    head (a LoRA wrapper, a sharded weight, bf16) is applied, then :func:`token_logps`."""
    weight = getattr(head, "weight", None)
    if (type(head) is nn.Linear and head.bias is None and type(weight.data) is Tensor
            and weight.dtype == hidden.dtype == torch.float32 and hidden.dim() == 2
            and targets.shape == hidden.shape[:1]
            and not torch.is_autocast_enabled(hidden.device.type)):
        if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
            return _chunked_head_token_logps(hidden, weight, targets, float(temperature))
        return _HeadTokenLogps.apply(hidden, weight, targets, float(temperature))
    return token_logps(head(hidden), targets, temperature)
