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
(m, m) Gram matrix; :func:`concept_priority` factors it (``K = X X^T``) and hands ``X``
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
from prefdyn._store import ArtifactStore, TensorSpec
from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics.ches import response_token_ids
from prefdyn.diagnostics.priority import PriorityGaps, PriorityResult, priority_gap_matrix, priority_levels
from prefdyn.embeddings.extract import _length_sorted_batches, _progress_bar
from prefdyn.errors import DataError

# Bump when the label part or the scaling changes.
_STORE = ArtifactStore("concept_gram", version=1, label="concept Gram")


def _encoded(tokenizer, pairs: Sequence[PreferencePair], max_length: int | None):
    """(ids, P, pair index, sign) of every response: chosen +1, rejected -1."""
    out = []
    for i, pair in enumerate(pairs):
        for sign, field, response in ((1.0, "chosen", pair.chosen), (-1.0, "rejected", pair.rejected)):
            ids, n_prompt = response_token_ids(tokenizer, pair.prompt, response, source=pair.source,
                                               field=field, max_length=max_length)
            out.append((ids, n_prompt, i, sign))
    return out


def concept_gram(model, tokenizer, pairs: Sequence[PreferencePair], concepts: Tensor, k: int, *,
                 batch_size: int = 8, progress: bool = False) -> Tensor:
    """``K[c, c'] = 2 <B_c, B_c'>_F`` (module docstring), (k, k) float64.

    ``concepts`` (n,) holds each pair's concept in ``0..k-1``. One forward per response
    (left-padded, longest first), reading the lm_head inputs at the positions that
    predict the response tokens (as :mod:`prefdyn.diagnostics.ches`).
    """
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    d = model.get_output_embeddings().weight.shape[1]
    encoded = _encoded(tokenizer, pairs, getattr(model.config, "max_position_embeddings", None))
    vocab = sorted({t for ids, p, _, _ in encoded for t in ids[p:]})
    row_of = {t: r for r, t in enumerate(vocab)}
    counts = torch.bincount(concepts, minlength=k).double()
    buffers = torch.zeros(k, len(vocab), d, dtype=torch.float64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode(), _progress_bar(len(encoded), progress, "concept Gram") as advance:
        for batch in _length_sorted_batches([len(e[0]) for e in encoded], batch_size):
            width = max(len(encoded[j][0]) for j in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, j in enumerate(batch):
                ids = encoded[j][0]
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                mask[row, width - len(ids):] = 1
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                             position_ids=position_ids.to(device), use_cache=False).last_hidden_state
            hidden = hidden.to("cpu", torch.float64)
            for row, j in enumerate(batch):
                ids, n_prompt, pair, sign = encoded[j]
                start = width - len(ids) + n_prompt - 1  # predicts the first response token
                rows = torch.tensor([row_of[t] for t in ids[n_prompt:]])
                c = int(concepts[pair])
                buffers[c].index_add_(0, rows, hidden[row, start:width - 1] * (sign / counts[c]))
            advance(len(batch))
    flat = buffers.reshape(k, -1)
    return 2.0 * (flat @ flat.T)


def cached_concept_gram(loaded, pairs: Sequence[PreferencePair], concepts: Tensor, k: int, *,
                        cache_dir: str | os.PathLike | None = None, batch_size: int = 8,
                        progress: bool = False) -> Tensor:
    """:func:`concept_gram`, memoised in the ``concept_gram`` store (model, texts, concepts)."""
    from prefdyn.models.loading import tokenizer_fingerprint

    key = _STORE.key(model=loaded.fingerprint, tokenizer=tokenizer_fingerprint(loaded.tokenizer),
                     texts=hash_texts(t for p in pairs for t in (p.prompt, p.chosen, p.rejected)),
                     concepts=hash_obj(concepts.tolist()), k=k)
    expected = {"gram": TensorSpec((k, k), torch.float64)}

    def compute() -> dict[str, Tensor]:
        return {"gram": concept_gram(loaded.model, loaded.tokenizer, pairs, concepts, k,
                                     batch_size=batch_size, progress=progress)}

    return _STORE.get_or_compute(key, expected, compute, cache_dir=cache_dir,
                                 info={"model": loaded.name})["gram"]


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
