"""CHES (Razin et al., 2024): batched == naive, hand-computed values, exact positions, errors, cache."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics.ches import (
    cached_pair_hidden_sums,
    ches_from_sums,
    ches_scores,
    pair_hidden_sums,
    pair_hidden_sums_naive,
    response_token_ids,
)
from prefdyn.errors import DataError
from tests._tiny import tiny_llama, tiny_loaded, tiny_tokenizer

HH_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def _pairs() -> list[PreferencePair]:
    return [
        PreferencePair("Is the following statement something you would say?", " Yes", " No", "t:1"),
        PreferencePair("You are a helpful assistant.", " I like to help people.",
                       " I enjoy causing pain to others.", "t:2"),
        PreferencePair("The quick brown fox", " jumps over the lazy dog.", " No.", "t:3"),
        PreferencePair("user", " It is important to treat other people with kindness.", " Yes.", "t:4"),
        PreferencePair("Hi", "!", " The quick brown fox jumps over the lazy dog. Yes", "t:5"),
    ]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(), tiny_tokenizer()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_equals_naive(tiny, batch_size):
    model, tok = tiny
    batched = pair_hidden_sums(model, tok, _pairs(), batch_size=batch_size)
    naive = pair_hidden_sums_naive(model, tok, _pairs())
    for got, want in zip(batched, naive):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert batched[0].dtype == torch.float64 and batched[0].shape == (5, model.config.hidden_size)


def test_ches_hand_computed():
    # S+ = (1, 2), S- = (3, 0): <S+, S-> - ||S+||^2 = 3 - 5 = -2.
    # Means with |y+| = 2, |y-| = 3: m+ = (0.5, 1), m- = (1, 0): 0.5 - 1.25 = -0.75.
    sum_chosen = torch.tensor([[1.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    sum_rejected = torch.tensor([[3.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    scores = ches_from_sums(sum_chosen, sum_rejected, torch.tensor([2, 1]), torch.tensor([3, 1]))
    torch.testing.assert_close(scores["ches"], torch.tensor([-2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(scores["ches_normalized"], torch.tensor([-0.75, 0.0], dtype=torch.float64))


def test_exact_predicting_positions(tiny):
    """S is the sum of h at P-1 .. L-2; the positions shifted by one (P .. L-1) give another S,
    and lm_head at our positions reproduces the model's log-probability of the response."""
    model, tok = tiny
    pair = _pairs()[1]
    ids, n_prompt = response_token_ids(tok, pair.prompt, pair.chosen)
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0].double()
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    sum_chosen = pair_hidden_sums(model, tok, [pair])[0][0]
    torch.testing.assert_close(sum_chosen, hidden[n_prompt - 1 : len(ids) - 1].sum(0), rtol=1e-5, atol=1e-5)
    shifted = hidden[n_prompt : len(ids)].sum(0)
    assert (sum_chosen - shifted).abs().max() > 1e-2
    # Each read position predicts the next (response) token: logits = lm_head(h) there.
    W_U = model.get_output_embeddings().weight.double()
    torch.testing.assert_close(hidden[n_prompt - 1 : len(ids) - 1] @ W_U.T,
                               logits[n_prompt - 1 : len(ids) - 1], rtol=1e-4, atol=1e-4)
    scores = ches_scores(model, tok, [pair])
    assert scores["ches"].shape == (1,)


def test_prefix_tokens_are_kept_exact():
    tok = tiny_tokenizer()
    # "Ye" + "s" merges into the single token "Yes" across the boundary: fall back to
    # separate tokenization so the prompt keeps exactly its own tokens.
    prompt_ids = tok("Ye", add_special_tokens=False)["input_ids"]
    ids, n_prompt = response_token_ids(tok, "Ye", "s")
    assert tok("Yes", add_special_tokens=False)["input_ids"] != prompt_ids[:1]  # the merge happens
    assert n_prompt == len(prompt_ids)
    assert ids == prompt_ids + tok("s", add_special_tokens=False)["input_ids"]
    ids2, n2 = response_token_ids(tok, "Hello", " Yes")
    assert ids2 == tok("Hello Yes", add_special_tokens=False)["input_ids"] and n2 == len(
        tok("Hello", add_special_tokens=False)["input_ids"])


def test_errors_name_the_record(tiny):
    model, tok = tiny
    with pytest.raises(DataError, match="bad:7.*chosen.*empty response"):
        pair_hidden_sums(model, tok, [PreferencePair("Hi", "", " No", "bad:7")])
    too_long = PreferencePair("Hi", " Yes" * (model.config.max_position_embeddings + 1), " No", "long:3")
    with pytest.raises(DataError, match="long:3.*longer than the model's context"):
        pair_hidden_sums(model, tok, [too_long])


def test_cache_roundtrip_and_corrupt_file(tmp_path):
    loaded = tiny_loaded()
    first = cached_pair_hidden_sums(loaded, _pairs(), cache_dir=tmp_path)
    files = list((tmp_path / "ches").glob("*.safetensors"))
    assert len(files) == 1
    again = cached_pair_hidden_sums(loaded, _pairs(), cache_dir=tmp_path)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    files[0].write_bytes(b"not safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        redone = cached_pair_hidden_sums(loaded, _pairs(), cache_dir=tmp_path)
    assert any("corrupt CHES cache" in str(w.message) for w in caught)
    assert torch.equal(redone[0], first[0])


@pytest.mark.integration
def test_embedded_model_on_hh_pairs():
    if not HH_DATA.exists():
        pytest.skip(f"{HH_DATA} missing")
    from prefdyn.data import load_pairs
    from prefdyn.models import load_model

    pairs = load_pairs(HH_DATA, on_error="skip")[:16]
    loaded = load_model()
    batched = pair_hidden_sums(loaded.model, loaded.tokenizer, pairs, batch_size=8)
    naive = pair_hidden_sums_naive(loaded.model, loaded.tokenizer, pairs)
    for got, want in zip(batched, naive):
        if not want.is_floating_point():  # token counts
            assert torch.equal(got, want)
            continue
        # Sums over up to hundreds of tokens reach |x| ~ 5e3: the packed rows (prompt once)
        # change the summation order, so they agree to float32 round-off relative to each
        # pair's norm (measured 5e-7), not to a fixed absolute 1e-4.
        rel = (got - want).norm(dim=-1) / want.norm(dim=-1)
        assert rel.max() < 1e-5, rel.max()
    scores = ches_from_sums(*batched)
    assert torch.isfinite(scores["ches"]).all() and torch.isfinite(scores["ches_normalized"]).all()


def test_similarity_baselines(tiny):
    from prefdyn.diagnostics.similarity import (
        edit_similarity,
        last_hidden_inner_products,
        levenshtein,
    )

    assert levenshtein([1, 2, 3], [1, 3]) == 1 and levenshtein([], [4, 5]) == 2
    assert levenshtein([1, 2, 3, 4], [2, 1, 3, 5]) == 3
    model, tok = tiny
    same = PreferencePair("Hi", " Yes", " Yes", "s:1")
    sims = edit_similarity(tok, [same, _pairs()[0]])
    torch.testing.assert_close(sims, torch.tensor([1.0, 0.0], dtype=torch.float64))
    pair = _pairs()[1]
    inner = last_hidden_inner_products(model, tok, [pair])
    with torch.no_grad():
        def last(text: str) -> torch.Tensor:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            return model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].double()
        want = last(pair.prompt + pair.chosen) @ last(pair.prompt + pair.rejected)
    torch.testing.assert_close(inner[0], want, rtol=1e-5, atol=1e-5)
