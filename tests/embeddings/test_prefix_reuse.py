"""Shared-prefix key/value reuse equals the plain computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prefdyn.embeddings import extract_embeddings
from prefdyn.embeddings._prefix import common_prefix_length
from tests._tiny import chat_prompts, tiny_llama, tiny_tokenizer

DATA = Path(__file__).parents[2] / ".." / "shared" / "data"

STATEMENTS = [
    "I like to help people.",
    "I enjoy causing pain to others.",
    "Yes",
    "It is important to treat other people with kindness and respect, always and everywhere.",
    "zebra",
    "The quick brown fox jumps over the lazy dog.",
    "",
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


@pytest.mark.parametrize(("token_ids", "expected"), [
    ([[1, 2, 3, 4], [1, 2, 3, 5]], 3),
    ([[1, 2, 3], [1, 2, 3]], 2),            # identical: the last token stays a suffix
    ([[1, 2, 3, 4], [1, 2]], 1),            # the shortest keeps one suffix token
    ([[7, 2], [1, 2]], 0),
    ([[1, 2, 3]], 2),
    ([[5]], 0),
    ([], 0),
])
def test_common_prefix_length(token_ids, expected):
    assert common_prefix_length(token_ids) == expected


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_prefix_reuse_equals_plain_on_chat_prompts(batch_size):
    tok, model = tiny_tokenizer(), tiny_llama()
    texts = chat_prompts(tok, STATEMENTS)
    assert common_prefix_length(tok(texts, add_special_tokens=False)["input_ids"]) > 10
    plain = extract_embeddings(model, tok, texts, batch_size=batch_size, reuse_prefix=False,
                               progress=False)
    reused = extract_embeddings(model, tok, texts, batch_size=batch_size, reuse_prefix=True,
                                progress=False)
    assert _rel(reused, plain) <= 1e-5


def test_prefix_cut_inside_a_word_is_exact():
    """The prefix is cut in token space, so a shared *string* prefix that tokenizes
    differently ('kind' vs 'kindness') cannot leak into the result."""
    tok, model = tiny_tokenizer(), tiny_llama()
    texts = ["Treat people with kind", "Treat people with kindness", "Treat people with kindly"]
    plain = extract_embeddings(model, tok, texts, reuse_prefix=False, progress=False)
    reused = extract_embeddings(model, tok, texts, reuse_prefix=True, progress=False)
    assert _rel(reused, plain) <= 1e-5


def test_identical_texts_and_a_single_text():
    tok, model = tiny_tokenizer(), tiny_llama()
    texts = chat_prompts(tok, ["I like cats"] * 3)
    reused = extract_embeddings(model, tok, texts, reuse_prefix=True, progress=False)
    plain = extract_embeddings(model, tok, texts[:1], reuse_prefix=False, progress=False)
    assert _rel(reused, plain.expand(3, -1)) <= 1e-5
    assert _rel(extract_embeddings(model, tok, texts[:1], progress=False), plain) <= 1e-5


def test_the_prefix_cache_is_not_mutated_between_batches():
    """Each batch appends to its own copy: later batches match a fresh run."""
    tok, model = tiny_tokenizer(), tiny_llama()
    texts = chat_prompts(tok, STATEMENTS)
    reused = extract_embeddings(model, tok, texts, batch_size=2, progress=False)
    last = extract_embeddings(model, tok, texts[-2:], batch_size=2, reuse_prefix=False, progress=False)
    assert _rel(reused[-2:], last) <= 1e-5


@pytest.mark.integration
def test_prefix_reuse_equals_plain_on_smollm2_persona():
    path = DATA / "persona" / "agreeableness.jsonl"
    if not path.exists():
        pytest.skip(f"persona data not found at {path.resolve()} (expected ../shared/data)")
    from prefdyn.models import load_model

    loaded = load_model()
    tok, model = loaded.tokenizer, loaded.model
    statements = [json.loads(line)["statement"] for line in path.read_text().splitlines()[:20]]
    texts = chat_prompts(tok, statements)
    plain = extract_embeddings(model, tok, texts, batch_size=8, reuse_prefix=False, progress=False)
    reused = extract_embeddings(model, tok, texts, batch_size=8, reuse_prefix=True, progress=False)
    assert plain.shape == (20, 576)
    assert _rel(reused, plain) <= 1e-5
    ids = tok(texts[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(ids).logits[0, -1]
    assert torch.allclose(model.lm_head(plain[0]), logits, rtol=1e-4, atol=1e-4)
