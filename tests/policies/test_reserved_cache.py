"""The reserved-capacity KV cache: the concatenating cache's values, written in place."""

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from prefdyn.policies._reserved_cache import ReservedLayer, reserve
from prefdyn.policies.rollout import shared_prefill
from tests._tiny import chat_prompts, tiny_llama, tiny_tokenizer


def _kv(g, b=4, n=1):
    return torch.randn(b, 2, n, 8, generator=g), torch.randn(b, 2, n, 8, generator=g)


def test_updates_hold_the_concatenated_values_in_one_buffer_written_in_place():
    g = torch.Generator().manual_seed(0)
    plain, reserved = DynamicLayer(), ReservedLayer(capacity=9)
    for step, n in enumerate([5, 1, 1, 1, 1]):  # a prefill, then decode steps
        k, v = _kv(g, n=n)
        want, got = plain.update(k, v), reserved.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        if step == 0:
            buffer = reserved._key_buffer
        assert reserved._key_buffer is buffer  # no new allocation, no copy of the past
        assert got[0].data_ptr() == buffer.data_ptr() and reserved.get_seq_length() == sum(
            [5, 1, 1, 1, 1][:step + 1])
    # Past the reserved room it grows, the contents kept.
    k, v = _kv(g, n=3)
    want, got = plain.update(k, v), reserved.update(k, v)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert reserved._key_buffer is not buffer


def test_batch_edits_and_crops_between_updates_keep_the_values():
    g = torch.Generator().manual_seed(1)
    plain, reserved = DynamicLayer(), ReservedLayer(capacity=16)
    for layer in (plain, reserved):
        layer.update(*_kv(torch.Generator().manual_seed(2), n=4))
    edits = [lambda x: x.batch_repeat_interleave(2), lambda x: x.batch_select_indices(
        torch.tensor([0, 3, 5])), lambda x: x.crop(-2)]
    for edit in edits:
        edit(plain), edit(reserved)
        k, v = _kv(g, b=plain.keys.shape[0])
        want, got = plain.update(k, v), reserved.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_reserve_turns_only_plain_dynamic_layers():
    cache = DynamicCache()
    cache.layers = [DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=4)]
    assert not reserve(cache, 8) and type(cache.layers[0]) is DynamicLayer
    cache.layers = [DynamicLayer(), DynamicLayer()]
    cache.layers[0].update(*_kv(torch.Generator().manual_seed(3), n=3))
    keys = cache.layers[0].keys
    assert reserve(cache, 8) and all(type(x) is ReservedLayer for x in cache.layers)
    assert torch.equal(cache.layers[0].keys, keys) and cache.get_seq_length() == 3


def test_generation_from_a_reserved_prefill_is_bit_identical():
    tok = tiny_tokenizer()
    model = tiny_llama().eval()
    enc = tok(chat_prompts(tok, ["I like cats", "Hi"]), return_tensors="pt", padding=True,
              padding_side="left", add_special_tokens=False)
    ids, mask = enc["input_ids"].repeat_interleave(3, 0), enc["attention_mask"].repeat_interleave(3, 0)
    outs = []
    for capacity in (None, ids.shape[1] + 6):
        cache = shared_prefill(model, enc["input_ids"], enc["attention_mask"], 3, capacity=capacity)
        assert all((type(x) is ReservedLayer) == (capacity is not None) for x in cache.layers)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, cache=cache, do_sample=False,
                                 max_new_tokens=8, pad_token_id=tok.pad_token_id,
                                 output_scores=True, return_dict_in_generate=True)
        outs.append(out)
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for a, b in zip(outs[0].scores, outs[1].scores):
        assert torch.equal(a, b)
