"""One read of the embeddings per last-layer training step.

The plain step reads the fixed embeddings ``G: (B, N, d)`` twice, once for the
logits (forward) and once for the weight gradient ``dlogits^T G`` (backward);
at 135 behaviors x 1000 statements (d = 576) that is 2 x 311 MB from main memory
per step, and the step is bound by it. Every preference loss is per example, so
the gradient of an example's logits depends on that example alone: going through
``G`` in blocks small enough to stay in cache, each block's logits, log-probs,
loss gradient and weight-gradient contribution are computed while it is there,
and the backward pass only hands out the gradient summed in the forward.

The forward must therefore know what the training step will do with the
log-probs: the objective, then the masked mean per problem summed over problems
(:func:`prefdyn.losses.types.compute_loss`). It predicts the gradient the step
will send back; the backward checks the gradient it receives against that
prediction (up to one scale factor, the micro-batch weight) and falls back to
the plain product (a second read of ``G``) when they differ, so any other use of
the log-probs still gets its exact gradient. Only the two answer rows are
handled (``rows="answers"``); the policy uses the plain path otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from prefdyn.losses.types import LossOutput, PreferenceLogps

Objective = Callable[[PreferenceLogps], LossOutput]

BLOCK_BYTES = 8 << 20
"""Bytes of ``G`` per block: well inside a 32 MB last-level cache, large enough that
the per-block Python overhead (about 20 small ops) stays a few percent of the step."""

_RTOL = 1e-6  # the received and the predicted gradients are computed by the same ops


def _block_problems(G: Tensor, block_bytes: int) -> int:
    B, N, d = G.shape
    return max(1, min(B, block_bytes // max(1, N * d * G.element_size())))


def _pair_grad(g_chosen: Tensor, g_rejected: Tensor, lp_yes: Tensor, lp_no: Tensor,
               prefers_yes: Tensor) -> Tensor:
    """d loss / d (logit_yes, logit_no), (B, 2, k), from d loss / d (chosen, rejected) log-probs.

    ``log p_a = l_a - lse`` with ``lse`` over every row, so ``d/dl_a = g_a - (sum_b g_b) p_a``.
    """
    g_yes = torch.where(prefers_yes, g_chosen, g_rejected)
    g_no = torch.where(prefers_yes, g_rejected, g_chosen)
    total = g_chosen + g_rejected
    return torch.stack((g_yes - total * lp_yes.exp(), g_no - total * lp_no.exp()), dim=1)


class _OnePassAnswerLogps(torch.autograd.Function):
    """(chosen, rejected) log-probs, (B, N) each, with the weight gradient of
    ``sum_b masked_mean_n(objective(logps))`` computed in the same pass over ``G``."""

    @staticmethod
    def forward(ctx, W: Tensor, G: Tensor, prefers_yes: Tensor, mask: Tensor,
                other_lse: Tensor | None, ref_chosen: Tensor, ref_rejected: Tensor,
                rows: tuple[int, int], objective: Objective, block_bytes: int):
        B, N, _ = G.shape
        W_pair = W[:, list(rows)].contiguous()  # (B, 2, d): rows yes, no
        # The step's reduction (masked_mean then sum), as a weight per example.
        maskf = mask.to(G.dtype)
        weight = maskf / maskf.sum(-1, keepdim=True).clamp_min(1.0)
        chosen, rejected = G.new_empty(B, N), G.new_empty(B, N)
        lp_yes, lp_no = G.new_empty(B, N), G.new_empty(B, N)
        g_chosen, g_rejected = G.new_empty(B, N), G.new_empty(B, N)
        grad_pair = torch.empty_like(W_pair)
        # Blocks of whole problems: each block of G is contiguous and its matrix
        # products have the plain path's shapes (a (2, d) x (d, N) product per problem;
        # splitting N instead multiplies the number of tiny GEMM calls).
        k = _block_problems(G, block_bytes)
        for b0 in range(0, B, k):
            sl = slice(b0, min(B, b0 + k))
            G_blk = G[sl]
            # (k, 2, d) x (k, d, N): G read along its rows, ~2.5x faster than G @ W^T on CPU.
            logits = torch.bmm(W_pair[sl], G_blk.transpose(1, 2))
            lse = torch.logaddexp(logits[:, 0], logits[:, 1])
            if other_lse is not None:
                lse = torch.logaddexp(lse, other_lse[sl])
            yes_blk, no_blk = logits[:, 0] - lse, logits[:, 1] - lse
            y = prefers_yes[sl]
            c = torch.where(y, yes_blk, no_blk).requires_grad_()
            r = torch.where(y, no_blk, yes_blk).requires_grad_()
            with torch.enable_grad():
                out = objective(PreferenceLogps(c, r, ref_chosen[sl], ref_rejected[sl]))
                gc, gr = torch.autograd.grad((out.losses * weight[sl]).sum(), (c, r),
                                             allow_unused=True)
            gc = torch.zeros_like(c) if gc is None else gc
            gr = torch.zeros_like(r) if gr is None else gr
            torch.bmm(_pair_grad(gc, gr, yes_blk, no_blk, y), G_blk, out=grad_pair[sl])
            chosen[sl], rejected[sl] = c.detach(), r.detach()
            lp_yes[sl], lp_no[sl] = yes_blk, no_blk
            g_chosen[sl], g_rejected[sl] = gc, gr
        ctx.save_for_backward(G, prefers_yes, lp_yes, lp_no, g_chosen, g_rejected, grad_pair)
        ctx.rows, ctx.W_shape = rows, W.shape
        return chosen, rejected

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_chosen: Tensor | None, grad_rejected: Tensor | None):
        G, prefers_yes, lp_yes, lp_no, g_chosen, g_rejected, grad_pair = ctx.saved_tensors
        grad_chosen = torch.zeros_like(g_chosen) if grad_chosen is None else grad_chosen
        grad_rejected = torch.zeros_like(g_rejected) if grad_rejected is None else grad_rejected
        scale = _scale_of(torch.stack((grad_chosen, grad_rejected)), torch.stack((g_chosen, g_rejected)))
        if scale is not None:
            grad_pair = grad_pair * scale if scale != 1.0 else grad_pair
        else:  # not the step's own reduction: the plain product, a second read of G
            grad_pair = torch.bmm(_pair_grad(grad_chosen, grad_rejected, lp_yes, lp_no, prefers_yes), G)
        grad_W = grad_pair.new_zeros(ctx.W_shape)
        grad_W[:, list(ctx.rows)] = grad_pair
        return grad_W, None, None, None, None, None, None, None, None, None


def _scale_of(received: Tensor, predicted: Tensor) -> float | None:
    """``s`` with ``received == s * predicted`` (to rounding), else None."""
    if torch.equal(received, predicted):
        return 1.0
    norm2 = (predicted * predicted).sum()
    if norm2 == 0:
        return 0.0 if not received.any() else None
    s = float((received * predicted).sum() / norm2)
    tol = _RTOL * float(predicted.abs().max()) * max(1.0, abs(s))
    return s if torch.allclose(received, s * predicted, rtol=_RTOL, atol=tol) else None


def one_pass_logps(W: Tensor, G: Tensor, prefers_yes: Tensor, mask: Tensor,
                   other_lse: Tensor | None, ref_chosen: Tensor, ref_rejected: Tensor, *,
                   rows: tuple[int, int], objective: Objective,
                   block_bytes: int = BLOCK_BYTES) -> PreferenceLogps:
    """Chosen/rejected log-probs of the answer rows ``rows = (yes, no)`` of ``W: (B, R, d)``
    whose backward reads ``G`` only if the step did not reduce them with ``objective``
    and the masked mean (see the module docstring)."""
    chosen, rejected = _OnePassAnswerLogps.apply(W, G, prefers_yes, mask, other_lse, ref_chosen,
                                                 ref_rejected, rows, objective, block_bytes)
    return PreferenceLogps(chosen=chosen, rejected=rejected, ref_chosen=ref_chosen,
                           ref_rejected=ref_rejected)
