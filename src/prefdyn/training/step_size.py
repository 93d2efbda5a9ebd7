"""A stable default step size from the curvature at the start of training.

Real last hidden states share one dominant mean direction m, so the second
moment E[g g^T] has an eigenvalue near ||m||^2 that is orders of magnitude above
the rest; a hand-picked learning rate easily diverges along it. For last-layer
DPO the Hessian in W_U at W0 is

    H = beta^2 * sigma'(0) * E[(e_{y+} - e_{y-})(e_{y+} - e_{y-})^T (x) g g^T],

so lambda_max(H) = beta^2 / 2 * lambda_max(E[g g^T]) (sigma'(0) = 1/4, ||e_{y+} - e_{y-}||^2 = 2),
and since sigma'(z) <= 1/4 everywhere this is the largest curvature DPO ever
sees: gradient descent with lr < 2 / lambda_max(H) never diverges. We measure
lambda_max of the actual loss by power iteration on Hessian-vector products
(any loss, any policy), and take lr = safety / max_b lambda_max_b so that all
problems trained together share one step size (comparable speeds).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from prefdyn.losses import get_loss
from prefdyn.training.step import Objective, compute_loss

log = logging.getLogger(__name__)

ADAM_LOGIT_STEP = 0.1
"""AdamW moves every weight by about lr per step (sign-like); we pick lr so that the
first step changes beta * (reward margin) of a typical example by about this much."""


def hessian_lambda_max(policy, objective: Objective, data, *, iters: int = 50,
                       tol: float = 1e-4, seed: int = 0) -> Tensor:
    """Largest Hessian eigenvalue of each problem's loss at the current weights: (B,).

    Power iteration with Hessian-vector products (double backward). The loss is a
    sum of independent per-problem losses, so the Hessian is block diagonal and
    one iteration normalizes each block separately. Stops early once every
    estimate moved by less than ``tol`` (relative): the dominant mean direction of
    real embeddings makes the top eigenvalue well separated, so few iterations do.
    """
    W = policy.W
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(W.shape, generator=gen, dtype=W.dtype)
    v = v / v.flatten(1).norm(dim=1).view(-1, *[1] * (W.dim() - 1))
    lam = torch.zeros(W.shape[0], dtype=W.dtype)
    for _ in range(iters):
        with policy.twice_differentiable():
            loss, *_ = compute_loss(policy, objective, data)
        (grad,) = torch.autograd.grad(loss, W, create_graph=True)
        (hv,) = torch.autograd.grad((grad * v).sum(), W)
        new = (hv * v).flatten(1).sum(1).detach()
        norm = hv.flatten(1).norm(dim=1).clamp_min(1e-30)
        v = hv / norm.view(-1, *[1] * (W.dim() - 1))
        converged = bool(((new - lam).abs() <= tol * new.abs().clamp_min(1e-30)).all())
        lam = new
        if converged:
            break
    return lam


def default_lr(policy, objective: Objective, data, *, optimizer: str, beta: float,
               safety: float = 1.0) -> tuple[float, dict]:
    """The default learning rate and how it was derived (printed by the CLI)."""
    if optimizer == "adamw":
        l1 = (data.embeddings.abs().sum(-1) * data.mask).sum() / data.mask.sum()
        lr = ADAM_LOGIT_STEP / (2.0 * beta * float(l1))
        return lr, {"rule": f"adamw: lr = {ADAM_LOGIT_STEP} / (2 beta E||g||_1)",
                    "mean_l1_norm": float(l1)}
    lam = hessian_lambda_max(policy, objective, data)
    source = "hessian of the loss"
    if float(lam.max()) <= 1e-12:
        # Piecewise-linear losses (hinge) have no curvature at the start; their
        # geometry is DPO's, so use DPO's curvature.
        lam = hessian_lambda_max(policy, get_loss("dpo", beta=beta), data)
        source = "hessian of the DPO loss (the chosen loss has none at the start)"
    lam_max = float(lam.max())
    lr = safety / lam_max
    return lr, {"rule": f"sgd: lr = {safety} / lambda_max(H) ({source})",
                "lambda_max": lam_max, "lambda_max_per_problem": lam.tolist()}
