"""On-policy rollouts with generation: shapes, reproducibility, resume, log-probs, errors,
and an RL run through the one step and loop."""

import json

import pytest
import torch

import prefdyn.training.loop as loop_module
from prefdyn.errors import PrefdynError
from prefdyn.losses import get_loss
from prefdyn.policies.rollout import RolloutPolicy, RolloutStream, shared_prefill
from prefdyn.rewards import RewardError, get_reward
from prefdyn.training.loop import train
from tests._tiny import chat_prompts, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    prompts = chat_prompts(tok, ["I like cats", "I enjoy causing pain to others.", "Hi"])
    return tok, prompts


def _stream(model, tok, prompts, **kw):
    kw = {"group_size": 3, "prompts_per_batch": 2, "max_new_tokens": 5, "seed": 1} | kw
    return RolloutStream(model, tok, prompts, get_reward("sentiment"), **kw)


def test_a_batch_holds_k_scored_samples_per_prompt(setup):
    tok, prompts = setup
    batch = next(_stream(tiny_llama(), tok, prompts, top_k=20, top_p=0.9))
    assert len(batch) == 6 and batch.groups.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.response_mask.shape == (6, batch.input_ids.shape[1] - batch.prompt_len)
    assert batch.rewards.shape == (6,) and len(batch.responses) == 6
    # the mask stops after the first EOS
    for ids, m in zip(batch.input_ids[:, batch.prompt_len:], batch.response_mask):
        eos = (ids == tok.eos_token_id).nonzero()
        if len(eos):
            assert m.sum() == eos[0].item() + 1


def test_sampling_is_reproducible_and_resumes_with_the_generator_state(setup):
    tok, prompts = setup
    model = tiny_llama()
    a = _stream(model, tok, prompts)
    first = next(a).input_ids
    saved = a.state()
    want = [next(a).input_ids for _ in range(2)]  # crosses an epoch (3 prompts, 2 a batch)
    assert torch.equal(next(_stream(model, tok, prompts)).input_ids, first)
    b = _stream(model, tok, prompts)
    b.load_state(json.loads(json.dumps(saved)))  # as a checkpoint's state.json holds it
    for w in want:
        assert torch.equal(next(b).input_ids, w)


@pytest.mark.parametrize("lora", [False, True])
def test_prefilling_each_prompt_once_draws_the_samples_of_a_full_prefill(setup, lora):
    from prefdyn.policies.lm import apply_lora

    tok, prompts = setup  # prompts of different lengths: left padding in the shared cache
    model = tiny_llama()
    if lora:
        model = apply_lora(model, seed=0)
    for seed in range(3):
        shared = _stream(model, tok, prompts, prompts_per_batch=3, seed=seed)
        plain = _stream(model, tok, prompts, prompts_per_batch=3, seed=seed, share_prefill=False)
        a, b = next(shared), next(plain)
        assert torch.equal(a.input_ids, b.input_ids) and a.responses == b.responses
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left",
              add_special_tokens=False)
    cache = shared_prefill(model, enc["input_ids"], enc["attention_mask"], 3)
    assert cache.get_seq_length() == enc["input_ids"].shape[1] - 1
    assert cache.layers[0].keys.shape[0] == 3 * len(prompts)
    assert shared_prefill(model, enc["input_ids"], enc["attention_mask"], 1) is None


def test_policy_logps_match_a_plain_forward_of_each_unpadded_sample(setup):
    tok, prompts = setup
    model = tiny_llama()
    batch = next(_stream(model, tok, prompts, temperature=0.7))
    ro = RolloutPolicy(model, temperature=0.7).logps(batch)
    for i in range(len(batch)):
        keep = batch.attention_mask[i].bool()
        ids = batch.input_ids[i][keep][None]
        n_prompt = int(batch.attention_mask[i, :batch.prompt_len].sum())
        logits = model(input_ids=ids).logits[0, n_prompt - 1:-1] / 0.7
        want = torch.log_softmax(logits, -1).gather(-1, ids[0, n_prompt:, None]).squeeze(-1)
        got = ro.logps[i][batch.response_mask[i].bool()]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_temperature_zero_and_missing_references_are_clear_errors(setup):
    tok, prompts = setup
    with pytest.raises(PrefdynError, match="temperature 0 is greedy decoding"):
        _stream(tiny_llama(), tok, prompts, temperature=0.0)
    s = RolloutStream(tiny_llama(), tok, prompts, get_reward("rouge_l"), group_size=2,
                      max_new_tokens=2, references=["a", None, "c"], prompts_per_batch=3)
    with pytest.raises(RewardError, match="has none"):
        next(s)


def test_a_grpo_run_with_a_kl_penalty_goes_through_the_one_training_step(setup, monkeypatch):
    tok, prompts = setup
    calls = []
    real = loop_module.training_step
    monkeypatch.setattr(loop_module, "training_step",
                        lambda *a, **kw: calls.append(kw["step"]) or real(*a, **kw))
    model, ref = tiny_llama(), tiny_llama(seed=1)  # a different pi_ref: the KL term pulls
    stream = _stream(model, tok, prompts, reference=ref)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.lm_head.weight.detach().clone()
    seen = []
    from prefdyn.tracking.callbacks import Callback

    class Record(Callback):
        def on_step_end(self, state, policy, out):
            seen.append(sorted(out.out.metrics))

    train(RolloutPolicy(model), get_loss("grpo", beta=0.1), stream, opt, steps=2,
          callbacks=[Record()])
    assert calls == [1, 2]
    assert seen[0] == ["advantage", "clip_frac", "kl", "length", "reward"]
    assert not torch.equal(before, model.lm_head.weight)


def test_micro_batches_of_different_response_lengths_concatenate_in_the_step(setup):
    from prefdyn.training.step import training_step

    tok, prompts = setup
    model = tiny_llama()
    a = next(_stream(model, tok, prompts, max_new_tokens=2))
    b = next(_stream(model, tok, prompts, max_new_tokens=6, seed=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    out = training_step(RolloutPolicy(model), get_loss("rloo"), [a, b], opt, step=1)
    T = max(a.response_mask.shape[1], b.response_mask.shape[1])
    assert out.logps.logps.shape == out.logps.mask.shape == (12, T)
    assert out.logps.mask[:6, a.response_mask.shape[1]:].sum() == 0  # padded, masked out
    assert out.out.losses.shape == (12,)
