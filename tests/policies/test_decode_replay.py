"""The training forward taken from the decode: the packed forward's log-probs and gradients."""

import copy
import dataclasses

import pytest
import torch

from prefdyn.models import segment_attention
from prefdyn.policies import rollout
from prefdyn.policies._decode_replay import DecodeRecorder, replayed_response_logps
from prefdyn.policies.rollout import RolloutPolicy, RolloutStream, rollout_logps
from prefdyn.rewards import get_reward
from prefdyn.training import TrainConfig
from prefdyn.training.recompute import recomputed_activations
from prefdyn.training.rl_runner import fit_rl
from tests._tiny import TEST_DEVICE, chat_prompts, tiny_llama, tiny_tokenizer

TEMPERATURE = 0.8


def _model(tok):
    """The tiny model with its EOS logit raised, so that responses end at several lengths,
    on ``TEST_DEVICE``."""
    model = tiny_llama()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[tok.eos_token_id] = head.mean(0) + 8 * head[tok.eos_token_id]
    return model.to(TEST_DEVICE)


def _stream(tok, model, **kwargs):
    prompts = chat_prompts(tok, ["I like cats", "I enjoy causing pain to others.", "Hi"])
    return RolloutStream(model, tok, prompts, get_reward("sentiment"), group_size=3,
                         prompts_per_batch=3, max_new_tokens=6, temperature=TEMPERATURE, seed=4,
                         **kwargs)


def _logps_and_grads(model, batch):
    """Weighted log-probs back-propagated: (log-probs, {name: gradient})."""
    model.zero_grad(set_to_none=True)
    logps = RolloutPolicy(model, temperature=TEMPERATURE).logps(batch).logps
    weights = torch.linspace(-1, 1, logps.numel(), device=logps.device).reshape(logps.shape)
    (logps * weights).sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("share_prefill", [True, False], ids=["shared-prefill", "full-prefill"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["kept", "checkpointed"])
@pytest.mark.parametrize("blocks", [False, True], ids=["dense-mask", "attention-in-blocks"])
def test_replayed_log_probs_and_gradients_equal_the_packed_forward(share_prefill, checkpointing,
                                                                  blocks, monkeypatch):
    monkeypatch.setattr(segment_attention, "MIN_WIDTH", 1 if blocks else 10**6)
    tok = tiny_tokenizer()
    model = _model(tok)
    batch = next(_stream(tok, model, share_prefill=share_prefill))
    assert batch.response_mask.sum(-1).unique().numel() > 1  # responses of several lengths
    assert batch.attention_mask[:, :batch.prompt_len].sum(-1).unique().numel() > 1  # padded
    assert batch.activations is not None
    with recomputed_activations(model, on=checkpointing):
        replayed, replayed_grads = _logps_and_grads(model, dataclasses.replace(batch))
        forward, forward_grads = _logps_and_grads(model, dataclasses.replace(batch, activations=None))
    torch.testing.assert_close(replayed, forward, rtol=1e-4, atol=1e-5)
    assert forward.abs().sum() > 0
    for name, grad in forward_grads.items():
        assert grad.abs().sum() > 0, name  # every weight gets a gradient, both ways
        # Round-off, not a mismatch: the decode computes a token at a time.
        error = (replayed_grads[name] - grad).norm() / grad.norm()
        assert error < 1e-4, (name, float(error))


def test_changed_weights_fall_back_to_the_forward():
    tok = tiny_tokenizer()
    model = _model(tok)
    batch = next(_stream(tok, model))
    assert batch.activations.usable(model)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)  # as an optimizer step does
    assert not batch.activations.usable(model)
    logps = RolloutPolicy(model, temperature=TEMPERATURE).logps(batch).logps
    assert torch.equal(logps, rollout_logps(model, batch, TEMPERATURE))
    other = _model(tok)  # the same values in other tensors: not the model sampled with
    assert not next(_stream(tok, model)).activations.usable(other)


def test_the_recorded_inputs_are_used_by_one_backward_only():
    tok = tiny_tokenizer()
    model = _model(tok)
    batch = next(_stream(tok, model))
    policy = RolloutPolicy(model, temperature=TEMPERATURE)
    with torch.no_grad():
        policy.logps(batch)
    assert batch.activations is not None  # no backward to feed: kept
    policy.logps(batch).logps.sum().backward()
    assert batch.activations is None


def test_what_cannot_be_replayed_is_not_recorded():
    tok = tiny_tokenizer()
    model = _model(tok)
    assert next(_stream(tok, model, replay=False)).activations is None
    assert next(_stream(tok, model, pack=False)).activations is None
    model.config.model_type = "gemma"  # another decoder layout (its embeddings scaled)
    try:
        assert DecodeRecorder(model).decoder is None
        assert next(_stream(tok, model)).activations is None
    finally:
        model.config.model_type = "llama"


def test_a_run_with_replay_trains_as_one_without(monkeypatch):
    replays = []

    def counted(*args, **kwargs):
        replays.append(1)
        return replayed_response_logps(*args, **kwargs)

    monkeypatch.setattr(rollout, "replayed_response_logps", counted)
    tok = tiny_tokenizer()
    base = _model(tok)
    runs, models = [], []
    for replay in (True, False):
        model = copy.deepcopy(base)
        cfg = TrainConfig(loss="grpo", optimizer="adamw", lr=1e-2, steps=3,
                          activation_checkpointing=True)
        runs.append(fit_rl(model, RolloutPolicy(model, temperature=TEMPERATURE),
                           _stream(tok, model, replay=replay), cfg, loss_kwargs={"beta": 0.0}))
        models.append(model)
        assert len(replays) == 3  # every step of the first run replayed, none of the second
    for a, b in zip(*(r.history.records for r in runs)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
