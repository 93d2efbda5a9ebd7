"""One read of the embeddings per last-layer training step.

The plain step reads the fixed embeddings ``G: (B, N, d)`` twice, once for the
logits (forward) and once for the weight gradient ``dlogits^T G`` (backward);
at 135 behaviors x 1000 statements (d = 576) that is 2 x 311 MB from main memory
per step, and the step is bound by it. Every preference loss is per example, so
the gradient of an example's logits depends on that example alone: for the
margin losses (DPO, IPO, hinge) the forward computes each row's log-probs, loss
gradient and weight-gradient contribution while the row is in cache
(:mod:`prefdyn.policies._margin_kernel`), and the backward pass only hands out the
gradient summed in the forward.

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
from prefdyn.policies import _margin_kernel

Objective = Callable[[PreferenceLogps], LossOutput]

_RTOL = 1e-6  # the received gradient is autograd's fp32 value of the same formula


def supports(objective: Objective, W: Tensor, G: Tensor) -> bool:
    """Whether the one-read step handles this objective and these tensors (a margin
    loss on fp32 CPU tensors); otherwise the policy takes the plain path."""
    return _margin_kernel.supports(objective, W, G)


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
                rows: tuple[int, int], objective: Objective):
        W_pair = W[:, list(rows)]  # (B, 2, d): rows yes, no
        # The step's reduction (masked_mean then sum), as a weight per example.
        maskf = mask.to(G.dtype)
        weight = maskf / maskf.sum(-1, keepdim=True).clamp_min(1.0)
        chosen, rejected, g_chosen, grad_pair = _margin_kernel.one_read_step(
            objective, W_pair, G, prefers_yes, weight, other_lse, ref_chosen, ref_rejected)
        ctx.save_for_backward(G, prefers_yes, chosen, rejected, g_chosen, grad_pair)
        ctx.rows, ctx.W_shape = rows, W.shape
        return chosen, rejected

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_chosen: Tensor | None, grad_rejected: Tensor | None):
        G, prefers_yes, chosen, rejected, g_chosen, grad_pair = ctx.saved_tensors
        grad_chosen = torch.zeros_like(g_chosen) if grad_chosen is None else grad_chosen
        grad_rejected = torch.zeros_like(g_chosen) if grad_rejected is None else grad_rejected
        scale = _scale_of(grad_chosen, grad_rejected, g_chosen)
        if scale is not None:
            grad_pair = grad_pair * scale if scale != 1.0 else grad_pair
        else:  # not the step's own reduction: the plain product, a second read of G
            lp_yes = torch.where(prefers_yes, chosen, rejected)
            lp_no = torch.where(prefers_yes, rejected, chosen)
            grad_pair = torch.bmm(_pair_grad(grad_chosen, grad_rejected, lp_yes, lp_no, prefers_yes), G)
        grad_W = grad_pair.new_zeros(ctx.W_shape)
        grad_W[:, list(ctx.rows)] = grad_pair
        return grad_W, None, None, None, None, None, None, None, None


def _scale_of(grad_chosen: Tensor, grad_rejected: Tensor, g_chosen: Tensor) -> float | None:
    """``s`` with ``(grad_chosen, grad_rejected) == s * (g_chosen, -g_chosen)`` (to
    rounding), else None: a margin loss's rejected gradient is minus its chosen one."""
    if torch.equal(grad_chosen, g_chosen) and torch.equal(grad_rejected, g_chosen.neg()):
        return 1.0
    g, gc, gr = g_chosen.reshape(-1), grad_chosen.reshape(-1), grad_rejected.reshape(-1)
    norm2 = float(torch.dot(g, g))
    if norm2 == 0:
        return 0.0 if not (gc.any() or gr.any()) else None
    s = (float(torch.dot(gc, g)) - float(torch.dot(gr, g))) / (2 * norm2)
    # |received - s * predicted| <= rtol * (|s| max|predicted|), elementwise, both halves
    tol = _RTOL * float(g.abs().max()) * max(1.0, abs(s))
    err = max(float(torch.sub(gc, g, alpha=s).abs_().max()), float(torch.add(gr, g, alpha=s).abs_().max()))
    return s if err <= tol else None


def one_pass_logps(W: Tensor, G: Tensor, prefers_yes: Tensor, mask: Tensor,
                   other_lse: Tensor | None, ref_chosen: Tensor, ref_rejected: Tensor, *,
                   rows: tuple[int, int], objective: Objective) -> PreferenceLogps:
    """Chosen/rejected log-probs of the answer rows ``rows = (yes, no)`` of ``W: (B, R, d)``
    whose backward reads ``G`` only if the step did not reduce them with ``objective``
    and the masked mean (see the module docstring). Needs :func:`supports`."""
    if not supports(objective, W, G):
        raise ValueError("the one-read last-layer step takes a margin loss (dpo, ipo, hinge) "
                         "on fp32 CPU tensors")
    chosen, rejected = _OnePassAnswerLogps.apply(W, G, prefers_yes, mask, other_lse, ref_chosen,
                                                 ref_rejected, rows, objective)
    return PreferenceLogps(chosen=chosen, rejected=rejected, ref_chosen=ref_chosen,
                           ref_rejected=ref_rejected)
