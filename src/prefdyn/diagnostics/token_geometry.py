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


@dataclass(frozen=True)
class DisplacementConditions:
    """The two conditions of Razin et al.'s single-token theorem for one (y+, y-) pair.

    The slides: "At any training step, ln π_θ(y+|x) decreases when the following are large:
    <W_y+, W_y-> [...] <W_z, W_y+ - W_y-> for tokens z ≠ y+, y-" (with the assumption "consider
    hidden embeddings as trainable parameters"). The first-order change of ln π(y+|x) through the
    hidden embedding h, whose DPO gradient points along d = W_y+ - W_y-, is proportional to
    ``h_term`` = <W_y+, d> - Σ_z π(z|x) <W_z, d> (prefdyn's derivation of the slide's statement):

    * ``condition1`` = <W_y+, d> = ||W_y+||^2 - <W_y+, W_y->: small or negative when <W_y+, W_y->
      is large (the first condition);
    * ``condition2`` = Σ_{z ≠ y+, y-} π(z|x) <W_z, d>: the mass-weighted pull of the other tokens
      (the second condition); ``answers_term`` = π(y+) <W_y+, d> + π(y-) <W_y-, d>, the rest of the sum.

    ``falls`` = ``h_term < 0``. The unembedding's own update adds η||h||^2 (1 - π(y+) + π(y-)) >= 0
    (only W_y+ and W_y- get a DPO gradient); it is left out, so ``falls`` says where the geometry
    pushes π(y+) down, not that the full update must lower it.
    """

    condition1: float
    condition2: float
    answers_term: float
    h_term: float
    falls: bool


def displacement_conditions(W_U: torch.Tensor, probs: torch.Tensor, y_plus: int,
                            y_minus: int) -> DisplacementConditions:
    """:class:`DisplacementConditions` from the unembedding ``W_U`` (V, d) and the model's
    next-token distribution ``probs`` (V,) at the prompt (before training)."""
    w_plus, w_minus = _rows(W_U, y_plus, y_minus)
    if probs.shape != (W_U.shape[0],):
        raise ValueError(f"probs must have one entry per token ({W_U.shape[0]}), got {tuple(probs.shape)}")
    scores = displacement_scores(W_U, y_plus, y_minus)
    p = probs.detach().double()
    answers = float(p[y_plus] * scores[y_plus] + p[y_minus] * scores[y_minus])
    others = float(p @ scores) - answers
    cond1 = float(scores[y_plus])
    h_term = cond1 - others - answers
    return DisplacementConditions(cond1, others, answers, h_term, h_term < 0)
