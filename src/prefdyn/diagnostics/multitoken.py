"""Distinguishability and priority of concepts with multi-token responses (prefdyn's extension).

Im & Li (ICML 2024) define them for single-token answers: a behavior's preference
data is told apart along ``b = mu+ - mu-`` (Section 3), "we refer to
P_i = (b_bar . b_i) / (||b_bar|| ||b_i||) (5) as the priority level for behavior B_i"
(Section 4.2). prefdyn extends both to any (prompt, chosen, rejected) pairs by
reading them off the DPO gradient of the unembedding, which is what the paper's
quantities are in the single-token case. This generalization is prefdyn's, not the paper's.

*Derivation.* With ``h_t`` the lm_head input that predicts response token ``y_t``
and ``p_t = softmax(W_U h_t)``, ``grad_{W_U} log pi(y|x) = sum_t (e_{y_t} - p_t) h_t^T``.
DPO's loss on a pair has ``-grad_{W_U} L = beta sigma(-beta m) G``, with
``sigma(-beta m) = 1/2`` at the start (pi = pi_ref) and

    G = sum_t e_{y+_t} h+_t^T  -  sum_t e_{y-_t} h-_t^T  -  (sum_t p+_t h+_t^T - sum_t p-_t h-_t^T).

prefdyn keeps the first two terms, the *label part* ``G~`` (|V| x d, one row per
response token). The softmax part is left out: it cancels exactly wherever both
responses are read at the same hidden state (a single-token pair: ``h+ = h- = g(x)``)
and it needs the whole vocabulary distribution at every response position. A
concept's direction is the mean ``B_c = (1/n_c) sum_{i in c} G~_i`` and, in the
Frobenius inner product,

    D_c = sqrt(2) ||B_c||_F,   P_c = <B_bar, B_c> / (||B_bar|| ||B_c||),   B_bar = sum_c w_c B_c,

with ``w_c`` the concepts' shares of the pairs (as prefdyn's Eq. 5 weights).

*Single-token check.* With answers Yes/No, ``G~_i = +-(e_Yes - e_No) g(x_i)^T``, so for a
class-balanced behavior ``B = (e_Yes - e_No)(mu+ - mu-)^T / 2`` and
``||B||_F = ||mu+ - mu-|| / sqrt(2)``: ``D_c`` is Im & Li's ``D`` (hence the sqrt(2)),
and every inner product is the paper's ``b_i . b_j`` times one constant, so ``P``, the
projections and the pairwise gaps are Eq. 5's exactly.

Only inner products of the ``B_c`` are needed: :func:`concept_gram` accumulates the
label parts per concept over the tokens that occur in the responses and returns the
(m, m) Gram matrix (from the hidden states the CHES sums add up: one pass gives both,
:mod:`prefdyn.diagnostics.pair_pass`); :func:`concept_priority` factors it (``K = X X^T``) and hands ``X``
to :func:`~prefdyn.diagnostics.priority.priority_levels`, which depends on inner products only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn._hashing import hash_obj, hash_texts
from prefdyn._store import ArtifactKey, ArtifactStore, TensorSpec
from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics.ches import pair_hidden_sums, response_token_ids
from prefdyn.diagnostics.priority import PriorityGaps, PriorityResult, priority_gap_matrix, priority_levels
from prefdyn.errors import DataError

# Bump when the label part or the scaling changes.
STORE = ArtifactStore("concept_gram", version=1, label="concept Gram")


class LabelParts:
    """Each pair's label part, collected from the hidden states a CHES pass reads (a
    :func:`~prefdyn.diagnostics.ches.pair_hidden_sums` ``reader``): sequence j is pair
    j // 2's chosen (+1, j even) or rejected (-1) response; its part is the response's
    token ids and the signed lm_head inputs predicting them, kept in float32 (the model's
    own precision, so exact), from which :meth:`gram` builds any concepts' Gram."""

    def __init__(self, tokenizer, pairs: Sequence[PreferencePair], max_length: int | None):
        self.responses = []
        for pair in pairs:
            for field, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
                ids, n_prompt = response_token_ids(tokenizer, pair.prompt, response, source=pair.source,
                                                   field=field, max_length=max_length)
                self.responses.append(torch.tensor(ids[n_prompt:]))
        self.rows: list[Tensor | None] = [None] * len(self.responses)

    def __call__(self, j: int, hidden: Tensor) -> None:
        self.rows[j] = hidden.float() * (1.0 if j % 2 == 0 else -1.0)

    def gram(self, concepts: Tensor, k: int) -> Tensor:
        """``K[c, c'] = 2 <B_c, B_c'>_F`` (module docstring), (k, k) float64; ``concepts``
        (n,) holds each pair's concept in ``0..k-1``, or -1 for a pair outside every one."""
        members = [i for i in range(len(concepts)) if int(concepts[i]) >= 0]
        vocab = torch.unique(torch.cat([self.responses[2 * i + s] for i in members for s in (0, 1)]
                                       or [torch.zeros(0, dtype=torch.long)]))
        d = next((r.shape[1] for r in self.rows if r is not None), 0)
        counts = torch.bincount(concepts[members], minlength=k).double()
        buffers = torch.zeros(k, len(vocab), d, dtype=torch.float64)
        for i in members:
            c = int(concepts[i])
            for j in (2 * i, 2 * i + 1):
                rows = torch.searchsorted(vocab, self.responses[j])
                buffers[c].index_add_(0, rows, self.rows[j].double() / counts[c])
        flat = buffers.reshape(k, -1)
        return 2.0 * (flat @ flat.T)


def concept_gram(model, tokenizer, pairs: Sequence[PreferencePair], concepts: Tensor, k: int, *,
                 batch_size: int = 8, progress: bool = False) -> Tensor:
    """``K[c, c'] = 2 <B_c, B_c'>_F`` (module docstring), (k, k) float64.

    ``concepts`` (n,) holds each pair's concept in ``0..k-1`` (-1: left out). The label
    parts are read in one pass of the CHES sums (each pair's prompt once where that is
    exact), at the positions that predict the response tokens.
    """
    parts = LabelParts(tokenizer, pairs, getattr(model.config, "max_position_embeddings", None))
    pair_hidden_sums(model, tokenizer, pairs, batch_size=batch_size, progress=progress, reader=parts)
    return parts.gram(concepts, k)


def concept_gram_key(loaded, pairs: Sequence[PreferencePair], concepts: Tensor, k: int) -> ArtifactKey:
    """Content key of the Gram of ``pairs`` in ``concepts`` under ``loaded``."""
    from prefdyn.models.loading import tokenizer_fingerprint

    return STORE.key(model=loaded.fingerprint, tokenizer=tokenizer_fingerprint(loaded.tokenizer),
                     texts=hash_texts(t for p in pairs for t in (p.prompt, p.chosen, p.rejected)),
                     concepts=hash_obj(concepts.tolist()), k=k)


def gram_spec(k: int) -> dict[str, TensorSpec]:
    return {"gram": TensorSpec((k, k), torch.float64)}


def cached_concept_gram(loaded, pairs: Sequence[PreferencePair], concepts: Tensor, k: int, *,
                        cache_dir: str | os.PathLike | None = None, batch_size: int = 8,
                        progress: bool = False) -> Tensor:
    """:func:`concept_gram`, memoised in the ``concept_gram`` store (model, texts, concepts)."""

    def compute() -> dict[str, Tensor]:
        return {"gram": concept_gram(loaded.model, loaded.tokenizer, pairs, concepts, k,
                                     batch_size=batch_size, progress=progress)}

    return STORE.get_or_compute(concept_gram_key(loaded, pairs, concepts, k), gram_spec(k), compute,
                                cache_dir=cache_dir, info={"model": loaded.name})["gram"]


@dataclass(frozen=True, eq=False)
class ConceptPriority:
    """Per concept (m,): ``D``, Eq. 5's ``P`` (cosine reading), ``projection`` on ``B_bar``,
    the predicted ``rank`` (1 = learned first, by projection) and the pairwise ``gaps``."""

    D: Tensor
    priority: PriorityResult
    gaps: PriorityGaps
    rank: list[int]


def gram_factor(gram: Tensor) -> Tensor:
    """``X`` (m, m) with ``X X^T = gram`` (symmetric PSD up to round-off)."""
    gram = (gram.double() + gram.double().T) / 2
    values, vectors = torch.linalg.eigh(gram)
    return vectors * values.clamp_min(0).sqrt()


def concept_priority(gram: Tensor, counts: Tensor) -> ConceptPriority:
    """D, priority levels, projections, gaps and predicted order from the concepts' Gram matrix.

    ``counts`` (m,) are the pairs per concept (the weights of ``B_bar``). A concept
    whose direction is zero (no usable pair) gets D = 0 and is ranked last.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] != counts.shape[0]:
        raise DataError(f"gram {tuple(gram.shape)} and counts {tuple(counts.shape)} do not fit")
    x = gram_factor(gram)
    result = priority_levels(x, weights=counts.double())
    gaps = priority_gap_matrix(x, weights=counts.double())
    proj = [(-math.inf if math.isnan(v) else v) for v in result.projection.tolist()]
    order = sorted(range(len(proj)), key=lambda c: (-proj[c], c))
    rank = [0] * len(order)
    for r, c in enumerate(order, start=1):
        rank[c] = r
    return ConceptPriority(D=result.D, priority=result, gaps=gaps, rank=rank)
