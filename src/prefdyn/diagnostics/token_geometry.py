"""Unembedding geometry of single-token preferences (Razin et al., 2024, Section 4).

Razin et al., "Unintentional Unalignment: Likelihood Displacement in Direct
Preference Optimization" (2024), Section 4 (the single-token theorem): when DPO
trains on a prompt whose preferred and dispreferred responses are single tokens
y+ and y- (unconstrained features, gradient flow on the unembeddings), the
first-order change in the log-probability of token z is proportional to

    < W_z, W_y+ - W_y- >,

so mass flows to the tokens most aligned with W_y+ - W_y-, which need not be
y+. The likelihood of y+ itself can fall (likelihood displacement) when
<W_y+, W_y-> is large relative to ||W_y+||^2, i.e. when the component of
W_y+ - W_y- orthogonal to W_y+ is large compared with its component along W_y+.

``W_U`` is the (V, d) unembedding (``prefdyn.models.unembedding``): row z is W_z.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenPairGeometry:
    """Geometry of one (y+, y-) token pair; all float64 scalars as Python floats.

    ``inner``: <W_y+, W_y->; ``norm_plus_sq``: ||W_y+||^2; ``along``:
    <W_y+ - W_y-, W_y+> / ||W_y+|| (the signed component along W_y+; negative
    means the difference points away from y+); ``orthogonal_norm``: the norm of
    the component of W_y+ - W_y- orthogonal to W_y+.
    """

    y_plus: int
    y_minus: int
    inner: float
    norm_plus_sq: float
    along: float
    orthogonal_norm: float


def _rows(W_U: torch.Tensor, y_plus: int, y_minus: int) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = W_U.shape[0]
    for name, token in (("y_plus", y_plus), ("y_minus", y_minus)):
        if not 0 <= int(token) < vocab:
            raise ValueError(f"{name}={token} is outside the vocabulary (0..{vocab - 1})")
    W = W_U.detach()
    return W[int(y_plus)].double(), W[int(y_minus)].double()


def token_pair_geometry(W_U: torch.Tensor, y_plus: int, y_minus: int) -> TokenPairGeometry:
    """<W_y+, W_y->, and the split of W_y+ - W_y- into parts along and orthogonal to W_y+."""
    w_plus, w_minus = _rows(W_U, y_plus, y_minus)
    diff = w_plus - w_minus
    norm_plus_sq = float(w_plus @ w_plus)
    if norm_plus_sq == 0.0:
        raise ValueError(f"W_y+ (token {y_plus}) is the zero vector: no direction to project on")
    coef = float(diff @ w_plus) / norm_plus_sq
    orthogonal = diff - coef * w_plus
    return TokenPairGeometry(
        y_plus=int(y_plus), y_minus=int(y_minus), inner=float(w_plus @ w_minus),
        norm_plus_sq=norm_plus_sq, along=coef * norm_plus_sq**0.5,
        orthogonal_norm=float(orthogonal.norm()),
    )


def displacement_scores(W_U: torch.Tensor, y_plus: int, y_minus: int) -> torch.Tensor:
    """<W_z, W_y+ - W_y-> for every token z. Returns (V,) float64.

    Proportional to the first-order change of log p(z) under DPO on (y+, y-)
    (Razin et al., 2024, Section 4), up to the softmax's shared normaliser.
    """
    w_plus, w_minus = _rows(W_U, y_plus, y_minus)
    return W_U.detach().double() @ (w_plus - w_minus)


def predicted_gainers(W_U: torch.Tensor, y_plus: int, y_minus: int, tokenizer=None,
                      k: int | None = 20) -> list[tuple[int, str, float]]:
    """The tokens predicted to gain the most probability: ``(token id, string, score)``.

    All tokens are ranked by <W_z, W_y+ - W_y-> (highest first, ties by id); the
    first ``k`` are returned (``k=None``: all). The string is the decoded token
    (``tokenizer.decode([id])``), or ``""`` without a tokenizer. If y+ is not
    first, DPO is predicted to push mass to other tokens more than to y+.
    """
    scores = displacement_scores(W_U, y_plus, y_minus)
    # Stable sort on -score keeps equal scores in id order (deterministic ranking).
    order = torch.sort(-scores, stable=True).indices
    if k is not None:
        order = order[: max(int(k), 0)]
    ids = order.tolist()
    return [(i, tokenizer.decode([i]) if tokenizer is not None else "", float(scores[i])) for i in ids]
