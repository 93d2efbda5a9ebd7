"""Packed rows' attention block by block equals SDPA under the dense block mask."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prefdyn.models import segment_attention as sa
from prefdyn.policies._shared_prefix import decoder_hidden, packed_hidden
from prefdyn.training.recompute import recomputed_activations
from tests._tiny import tiny_llama

# Two packed rows: prefixes of 3 and 2 tokens, segments of 1..4 tokens, pads at the end.
SEGMENT = torch.tensor([
    [-1, -1, -1, 0, 0, 0, 0, 1, 2, 2, -2, -2],
    [-1, -1, 3, 3, 4, 4, 4, 5, -2, -2, -2, -2],
])


class _Attention(nn.Module):
    """What transformers' SDPA reads from the attention module (GQA: 4 query heads, 2 kv)."""

    num_key_value_groups = 2
    is_causal = True


NO_PREFIX = torch.tensor([[0, 0, 1, 1, 1, -2, -2], [2, 3, 3, 3, 3, 3, 4]])
SDPA_DECODER = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))


def _dense(q, k, v, segment):
    mask = sa.segment_mask(SDPA_DECODER, segment)
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize(("segment", "prefix"), [(SEGMENT, 3), (NO_PREFIX, 0)],
                         ids=["prefix", "no-prefix"])
def test_values_and_gradients_equal_dense_masked_sdpa(segment, prefix):
    assert sa.build_layout(segment).prefix == prefix
    P, W = segment.shape
    g = torch.Generator().manual_seed(0)
    q = torch.randn(P, 4, W, 8, generator=g, requires_grad=True)
    k = torch.randn(P, 2, W, 8, generator=g, requires_grad=True)
    v = torch.randn(P, 2, W, 8, generator=g, requires_grad=True)
    real = (segment != -2)[:, :, None, None]  # pads are never read
    weights = torch.randn(P, W, 4, 8, generator=g) * real
    outs, grads = [], []
    for fn in (lambda: _dense(q, k, v, segment),
               lambda: sa.segment_attention_forward(_Attention(), q, k, v, None,
                                                    packed_layout=sa.build_layout(segment))[0]):
        out = fn()
        assert out.shape == (P, W, 4, 8)
        (out * weights).sum().backward()
        outs.append(out.detach() * real)
        grads.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_layout_writes_every_real_position_once_and_no_pad():
    layout = sa.build_layout(SEGMENT)
    W = SEGMENT.shape[1]
    written = sorted(layout.dest.tolist())
    assert written == [p * W + j for p in range(2) for j in range(W) if SEGMENT[p, j] != -2]
    assert layout.query_index.shape == (6, 4) and layout.key_index.shape == (6, 3 + 4)
    # Segment 4 (row 1, positions 4..6): its queries, then row 1's prefix keys (2 real + 1 masked).
    assert layout.query_index[4].tolist() == [W + 4, W + 5, W + 6, W + 6]
    assert layout.mask[4, 0, 0].tolist() == [True, True, False, True, False, False, False]


def test_a_prefix_that_is_not_leading_is_refused():
    with pytest.raises(ValueError, match="start with their prefix"):
        sa.build_layout(torch.tensor([[0, -1, -1, 1]]))


def _packed_inputs():
    tokens = torch.randint(1, 300, SEGMENT.shape, generator=torch.Generator().manual_seed(1))
    positions = torch.zeros_like(SEGMENT)
    for p in range(2):
        n_prefix = int((SEGMENT[p] == -1).sum())
        positions[p, :n_prefix] = torch.arange(n_prefix)
        for s in SEGMENT[p].unique():
            if s >= 0:
                at = (SEGMENT[p] == s).nonzero().flatten()
                positions[p, at] = n_prefix + torch.arange(len(at))
    return tokens, positions


def _hidden_and_grads(model, run):
    model.zero_grad()
    hidden = run()
    real = (SEGMENT != -2)[:, :, None]
    (hidden * real * torch.linspace(-1, 1, hidden.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.model.named_parameters()}  # the decoder: no head
    return hidden.detach() * real, grads


def test_a_packed_forward_runs_block_by_block_and_equals_the_dense_mask(monkeypatch):
    monkeypatch.setattr(sa, "MIN_WIDTH", SEGMENT.shape[1])
    model = tiny_llama(layers=2).train()
    decoder = model.model
    tokens, positions = _packed_inputs()
    dense = _hidden_and_grads(model, lambda: decoder_hidden(
        decoder, tokens, sa.segment_mask(decoder, SEGMENT), positions))
    masks = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        masks.append(None if attn_mask is None else tuple(attn_mask.shape))
        return real_sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    blocks = _hidden_and_grads(model, lambda: packed_hidden(decoder, tokens, SEGMENT, positions))
    # Per layer: the prefixes (causal, no mask) and the segments (6 of at most 4 queries).
    assert masks == [None, (6, 1, 4, 7)] * 2
    assert decoder.config._attn_implementation == "sdpa"  # restored after the forward
    torch.testing.assert_close(blocks[0], dense[0], rtol=1e-5, atol=1e-5)
    for name in dense[1]:
        torch.testing.assert_close(blocks[1][name], dense[1][name], rtol=1e-4, atol=1e-5)


def test_recomputed_layers_keep_the_block_attention_through_the_backward(monkeypatch):
    monkeypatch.setattr(sa, "MIN_WIDTH", SEGMENT.shape[1])
    model = tiny_llama(layers=2).train()
    tokens, positions = _packed_inputs()
    plain = _hidden_and_grads(model, lambda: packed_hidden(model.model, tokens, SEGMENT, positions))
    with recomputed_activations(model):
        assert model.config._attn_implementation == sa.NAME
        again = _hidden_and_grads(model, lambda: packed_hidden(model.model, tokens, SEGMENT, positions))
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(again[0], plain[0])
    for name in plain[1]:
        torch.testing.assert_close(again[1][name], plain[1][name])


def test_other_forwards_in_the_block_are_plain_sdpa_and_eager_models_keep_the_mask():
    model = tiny_llama(layers=2)
    ids = torch.randint(1, 300, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    before = model(input_ids=ids, attention_mask=mask).logits
    with sa.segmented_attention(model):
        during = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(during, before, rtol=0, atol=0)
    model.config._attn_implementation = "eager"
    try:
        with sa.segmented_attention(model):
            assert model.config._attn_implementation == "eager"
            assert "packed_layout" not in sa.packed_attention_inputs(model.model, SEGMENT)
    finally:
        model.config._attn_implementation = "sdpa"


def test_narrow_rows_keep_the_dense_mask(monkeypatch):
    model = tiny_llama(layers=2)
    with sa.segmented_attention(model):
        monkeypatch.setattr(sa, "MIN_WIDTH", SEGMENT.shape[1] + 1)
        assert "packed_layout" not in sa.packed_attention_inputs(model.model, SEGMENT)
        monkeypatch.setattr(sa, "MIN_WIDTH", SEGMENT.shape[1])
        assert "packed_layout" in sa.packed_attention_inputs(model.model, SEGMENT)
