"""The packed rollout forward (each group's prompt once) equals the plain padded one."""

import dataclasses

import pytest
import torch

from prefdyn.losses import get_loss
from prefdyn.models import segment_attention
from prefdyn.policies._packed_rollout import can_pack, packed_response_logps
from prefdyn.policies.rollout import RolloutPolicy, RolloutStream, response_token_logps
from prefdyn.rewards import get_reward
from tests._tiny import chat_prompts, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def batch_and_model():
    tok, model = tiny_tokenizer(), tiny_llama()
    prompts = chat_prompts(tok, ["I like cats", "I enjoy causing pain to others.", "Hi"])
    stream = RolloutStream(model, tok, prompts, get_reward("sentiment"), group_size=3,
                           prompts_per_batch=3, max_new_tokens=6, temperature=0.8, seed=4)
    batch = next(stream)
    # Responses that stopped early (at an EOS) after 1..6 tokens: the random model rarely does.
    lengths = torch.tensor([6, 2, 4, 1, 6, 3, 5, 6, 2])
    mask = (torch.arange(6) < lengths[:, None]).long()
    return dataclasses.replace(batch, response_mask=mask), model


def _plain_and_packed(batch, model, temperature=0.8):
    plain = response_token_logps(model, batch.input_ids, batch.attention_mask, batch.prompt_len,
                                 temperature) * batch.response_mask
    packed = packed_response_logps(model, batch.input_ids, batch.attention_mask,
                                   batch.response_mask, batch.groups, batch.prompt_len, temperature)
    return plain, packed


@pytest.mark.parametrize("blocks", [False, True], ids=["dense-mask", "attention-in-blocks"])
def test_packed_log_probs_and_gradients_equal_the_plain_forward(batch_and_model, blocks, monkeypatch):
    monkeypatch.setattr(segment_attention, "MIN_WIDTH", 1 if blocks else 10**6)
    batch, model = batch_and_model
    assert batch.attention_mask[:, :batch.prompt_len].sum(-1).unique().numel() > 1  # padded prompts
    assert batch.response_mask.sum(-1).unique().numel() > 1  # responses of several lengths
    assert can_pack(model, batch.groups, batch.input_ids, batch.attention_mask,
                    batch.response_mask, batch.prompt_len)
    plain, packed = _plain_and_packed(batch, model)
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-5)
    grads = []
    for logps in _plain_and_packed(batch, model):
        model.zero_grad()
        (logps * torch.linspace(-1, 1, logps.numel()).reshape(logps.shape)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-3, atol=1e-5)


def test_the_policy_packs_by_default_and_its_loss_is_the_plain_one(batch_and_model):
    batch, model = batch_and_model
    loss = get_loss("rloo")
    packed = loss(RolloutPolicy(model, temperature=0.8).logps(batch)).losses
    plain = loss(RolloutPolicy(model, temperature=0.8, pack=False).logps(batch)).losses
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-5)


def test_batches_it_cannot_pack_exactly_are_refused(batch_and_model):
    batch, model = batch_and_model
    args = (batch.input_ids, batch.attention_mask, batch.response_mask, batch.prompt_len)
    shuffled = batch.groups.flip(0)
    assert not can_pack(model, shuffled, *args)  # a group's samples not contiguous
    mixed = torch.zeros_like(batch.groups)  # one "group" of three different prompts
    assert not can_pack(model, mixed, *args)
    holed = batch.response_mask.clone()
    holed[0, 0] = 0
    assert not can_pack(model, batch.groups, batch.input_ids, batch.attention_mask, holed,
                        batch.prompt_len)
    model.config._attn_implementation = "flash_attention_2"
    try:
        assert not can_pack(model, batch.groups, *args)
    finally:
        model.config._attn_implementation = "sdpa"
