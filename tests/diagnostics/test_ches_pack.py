"""CHES with each pair's prompt run once (one packed row a pair) equals the plain paths."""

from __future__ import annotations

import pytest
import torch

from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics import _ches_pack
from prefdyn.diagnostics._ches_pack import packed_row, packed_tokens
from prefdyn.diagnostics.ches import _encode_pairs, pair_hidden_sums, pair_hidden_sums_naive
from tests._tiny import tiny_llama, tiny_tokenizer
from tests.diagnostics.test_ches import _pairs


def test_packed_row_hand_computed():
    # Prompt [5, 6, 7] (P = 3), chosen response [8, 9], rejected response [10, 11, 12]:
    # each response but its last token, at the positions it has alone (3.. for both).
    tokens, positions, segments = packed_row(([5, 6, 7, 8, 9], 3), ([5, 6, 7, 10, 11, 12], 3))
    assert tokens == [5, 6, 7, 8, 10, 11]
    assert positions == [0, 1, 2, 3, 3, 4]
    assert segments == [-1, -1, -1, 0, 1, 1]
    # One-token responses: only the prompt runs (its last position predicts both).
    assert packed_row(([5, 6, 8], 2), ([5, 6, 9], 2)) == ([5, 6], [0, 1], [-1, -1])
    assert packed_tokens([([5, 6, 7, 8, 9], 3), ([5, 6, 7, 10, 11, 12], 3), ([5, 6, 8], 2), ([5, 6, 9], 2)]) == 8
    with pytest.raises(ValueError, match="share their prompt"):
        packed_row(([5, 6, 8], 2), ([5, 7, 9], 2))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch_size", [1, 2, 5, 16])
def test_packed_equals_padded_and_naive(attn, batch_size, monkeypatch):
    model, tok = tiny_llama(), tiny_tokenizer()
    model.config._attn_implementation = attn
    calls = []
    real = _ches_pack.packed_pair_sums
    monkeypatch.setattr("prefdyn.diagnostics.ches.packed_pair_sums",
                        lambda *a, **k: calls.append(k["pairs_per_forward"]) or real(*a, **k))
    packed = pair_hidden_sums(model, tok, _pairs(), batch_size=batch_size)
    assert calls == [max(1, batch_size // 2)]  # the packed path ran
    padded = pair_hidden_sums(model, tok, _pairs(), batch_size=batch_size, share_prompt=False)
    naive = pair_hidden_sums_naive(model, tok, _pairs())
    assert len(calls) == 1
    for got, plain, want in zip(packed, padded, naive):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain, want, rtol=1e-5, atol=1e-5)


def test_runs_each_prompt_once():
    model, tok = tiny_llama(), tiny_tokenizer()
    seen = []
    handle = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(int(kwargs["position_ids"].numel())), with_kwargs=True)
    try:
        pair_hidden_sums(model, tok, _pairs(), batch_size=100)
    finally:
        handle.remove()
    encoded = _encode_pairs(model, tok, _pairs())
    widest = max(len(packed_row(encoded[i], encoded[i + 1])[0]) for i in range(0, len(encoded), 2))
    assert seen == [len(_pairs()) * widest]  # one forward, one row a pair
    assert packed_tokens(encoded) == sum(len(ids) for ids, _ in encoded) - sum(
        p for ids, p in encoded[0::2]) - len(encoded)


def test_window_shorter_than_a_row_falls_back(monkeypatch):
    model, tok = tiny_llama(), tiny_tokenizer()
    model.config.sliding_window = 2
    monkeypatch.setattr("prefdyn.diagnostics.ches.packed_pair_sums",
                        lambda *a, **k: pytest.fail("packed path used under a sliding window"))
    pair_hidden_sums(model, tok, _pairs())


def test_bf16_autocast_is_close_to_fp32():
    model, tok = tiny_llama(init_std=0.02), tiny_tokenizer()
    pairs = [PreferencePair("You are a helpful assistant.", " I like to help people.", " No.", "t:1")]
    fp32 = pair_hidden_sums(model, tok, pairs)
    bf16 = pair_hidden_sums(model, tok, pairs, autocast=torch.bfloat16)
    assert bf16[0].dtype == torch.float64
    for got, want in zip(bf16[:2], fp32[:2]):
        rel = float((got - want).abs().max() / want.abs().max())
        assert 0 < rel < 5e-2  # bf16 has 8 mantissa bits: off by round-off, not equal
