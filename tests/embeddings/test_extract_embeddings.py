"""extract_embeddings: g(x) is the lm_head input at the last token, batched exactly."""

from __future__ import annotations

import pytest
import torch

from prefdyn.embeddings import extract_embeddings
from prefdyn.errors import DataError
from tests._tiny import chat_prompts, tiny_llama, tiny_tokenizer

STATEMENTS = [
    "I like to help people.",
    "I enjoy causing pain to others.",
    "Yes",
    "It is important to treat other people with kindness and respect, always and everywhere.",
    "zebra",
    "The quick brown fox jumps over the lazy dog.",
    "No.",
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _one_at_a_time(model, tok, texts) -> torch.Tensor:
    return torch.cat([extract_embeddings(model, tok, [t], reuse_prefix=False, progress=False)
                      for t in texts])


@pytest.mark.parametrize("tied", [False, True])
def test_lm_head_of_g_is_the_logits_at_the_last_token(tied):
    tok, model = tiny_tokenizer(), tiny_llama(tie_word_embeddings=tied)
    texts = chat_prompts(tok, STATEMENTS) + STATEMENTS
    g = extract_embeddings(model, tok, texts, batch_size=4, progress=False)
    for text, g_x in zip(texts, g):
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
            # a second final norm (a common bug) would not match
            assert torch.allclose(model.lm_head(g_x), logits, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(model.lm_head(model.model.norm(g_x)), logits, atol=1e-3)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_padded_batches_equal_one_at_a_time(batch_size):
    tok, model = tiny_tokenizer(), tiny_llama()
    texts = STATEMENTS + chat_prompts(tok, STATEMENTS)
    batched = extract_embeddings(model, tok, texts, batch_size=batch_size, reuse_prefix=False,
                                 progress=False)
    assert batched.shape == (len(texts), 32) and batched.dtype == torch.float32
    assert _rel(batched, _one_at_a_time(model, tok, texts)) <= 1e-5


def test_output_keeps_input_order():
    tok, model = tiny_tokenizer(), tiny_llama()
    forward = extract_embeddings(model, tok, STATEMENTS, batch_size=2, progress=False)
    backward = extract_embeddings(model, tok, STATEMENTS[::-1], batch_size=2, progress=False)
    assert torch.allclose(forward, backward.flip(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(forward[0], forward[1])


def test_positions_matter_in_the_tiny_model():
    """Guards the tests above: a position-id bug must show up well above 1e-5.

    RoPE only sees relative positions, so the bug we guard against is a gap
    (e.g. suffix positions not continuing from the prefix), not a shift.
    """
    tok, model = tiny_tokenizer(), tiny_llama()
    ids = tok("I like to help people.", add_special_tokens=False)["input_ids"]
    gapped = torch.arange(len(ids))
    gapped[len(ids) // 2 :] += 3
    g = extract_embeddings(model, tok, ["I like to help people."], reuse_prefix=False)
    with torch.inference_mode():
        out = model.get_decoder()(input_ids=torch.tensor([ids]), position_ids=gapped[None])
    assert _rel(out.last_hidden_state[:, -1], g) > 1e-3


def test_bfloat16_model_returns_float32():
    tok, model = tiny_tokenizer(), tiny_llama().to(torch.bfloat16)
    g = extract_embeddings(model, tok, STATEMENTS, progress=False)
    assert g.dtype == torch.float32
    assert _rel(g, extract_embeddings(tiny_llama(), tok, STATEMENTS, progress=False)) < 0.05


def test_progress_bar_runs():
    tok, model = tiny_tokenizer(), tiny_llama()
    assert extract_embeddings(model, tok, STATEMENTS, batch_size=2, progress=True).shape == (7, 32)


def test_no_texts_and_empty_text():
    tok, model = tiny_tokenizer(), tiny_llama()
    assert extract_embeddings(model, tok, [], progress=False).shape == (0, 32)
    with pytest.raises(DataError, match="text 1 is empty"):
        extract_embeddings(model, tok, ["a", ""], progress=False)


def test_no_special_tokens_are_added():
    """Texts are final strings: a BOS is never prepended by us."""
    tok, model = tiny_tokenizer(), tiny_llama()
    text = "I like to help people."
    with_bos = extract_embeddings(model, tok, [tok.bos_token + text], progress=False)
    plain = extract_embeddings(model, tok, [text], progress=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.get_decoder()(input_ids=ids).last_hidden_state[0, -1]
    assert torch.allclose(plain[0], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(with_bos, plain, atol=1e-3)


@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_bf16_autocast_stays_close_to_fp32(reuse_prefix):
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per product); a few
    # layers of the tiny model must stay within a few percent of the fp32 g(x).
    tok, model = tiny_tokenizer(), tiny_llama()
    texts = chat_prompts(tok, STATEMENTS)
    fp32 = extract_embeddings(model, tok, texts, reuse_prefix=reuse_prefix)
    bf16 = extract_embeddings(model, tok, texts, reuse_prefix=reuse_prefix, autocast=torch.bfloat16)
    assert bf16.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32
    assert 0 < _rel(bf16, fp32) < 0.03  # different (bf16 was used), yet close
