"""Baseline similarity scores for preference pairs, to compare with CHES (Razin et al., 2024).

Razin et al. (2024, Section 5) compare CHES with two simpler measures of how
alike the two responses are; higher values should mean more likelihood
displacement if these baselines were as good as CHES:

* :func:`edit_similarity`: 1 - Levenshtein(y+, y-) / max(|y+|, |y-|) on **token
  ids** (a small exact dynamic programme, not difflib's heuristic ratio);
* :func:`last_hidden_inner_products`: <g(x, y+), g(x, y-)>, the inner product of
  the final (normed) hidden states at the last token of prompt+chosen and
  prompt+rejected (:func:`prefdyn.embeddings.extract_embeddings`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefdyn.data.records import PreferencePair


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Edit distance (insert, delete, substitute; each cost 1) between two id sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def edit_similarity(tokenizer, pairs: Sequence[PreferencePair]) -> torch.Tensor:
    """1 - Levenshtein / max length on the responses' token ids, in [0, 1]. Returns (n,) float64.

    Responses are tokenized alone, without special tokens; two empty responses
    count as identical (1.0).
    """
    out = torch.empty(len(pairs), dtype=torch.float64)
    for i, pair in enumerate(pairs):
        chosen = tokenizer(pair.chosen, add_special_tokens=False)["input_ids"]
        rejected = tokenizer(pair.rejected, add_special_tokens=False)["input_ids"]
        longest = max(len(chosen), len(rejected))
        out[i] = 1.0 if longest == 0 else 1.0 - levenshtein(chosen, rejected) / longest
    return out


def hidden_inner_products(emb_chosen: torch.Tensor, emb_rejected: torch.Tensor) -> torch.Tensor:
    """Row-wise <g+, g-> of two (n, d) embedding matrices. Returns (n,) float64."""
    if emb_chosen.shape != emb_rejected.shape:
        raise ValueError(f"shapes differ: {tuple(emb_chosen.shape)} vs {tuple(emb_rejected.shape)}")
    return (emb_chosen.double() * emb_rejected.double()).sum(-1)


def last_hidden_inner_products(model, tokenizer, pairs: Sequence[PreferencePair], *,
                               batch_size: int = 16, device: str | torch.device | None = None,
                               progress: bool = False) -> torch.Tensor:
    """<g(prompt+chosen), g(prompt+rejected)> for every pair. Returns (n,) float64."""
    from prefdyn.embeddings import extract_embeddings

    def embed(texts: list[str]) -> torch.Tensor:
        return extract_embeddings(model, tokenizer, texts, batch_size=batch_size, device=device,
                                  progress=progress)

    return hidden_inner_products(embed([p.prompt + p.chosen for p in pairs]),
                                 embed([p.prompt + p.rejected for p in pairs]))
