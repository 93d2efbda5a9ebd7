import copy

import pytest
import torch

from prefdyn.data import BehaviorData
from prefdyn.models import answer_token_ids
from prefdyn.policies.lm import LMPolicy
from prefdyn.tracking.displacement import DisplacementMonitor
from prefdyn.tracking.evaluate import answer_logprobs
from prefdyn.tracking.history import History
from prefdyn.training import TrainConfig
from prefdyn.training.lm_data import answer_batches, collate_prompts
from prefdyn.training.lm_runner import fit_lm
from tests._tiny import chat_prompts, tiny_llama, tiny_loaded, tiny_tokenizer

STATEMENTS = ["I like cats", "I enjoy causing pain to others and I say so often",
              "Kindness", "The quick brown fox jumps over the lazy dog, every day."]


def _behavior(tok):
    n = len(STATEMENTS)
    return BehaviorData(name="toy", statements=STATEMENTS, prompts=chat_prompts(tok, STATEMENTS),
                        prefers_yes=torch.tensor([i % 2 == 0 for i in range(n)]),
                        train_idx=torch.arange(n), test_idx=torch.arange(0), sources=["t"] * n)


def _probe(tok, behavior, yes_id, no_id):
    ids = tok(behavior.prompts, add_special_tokens=False)["input_ids"]
    return collate_prompts(ids, range(len(ids)), behavior.prefers_yes, yes_id, no_id,
                           tok.pad_token_id)


def _chosen_logps(model, tok, behavior, yes_id, no_id):
    """log pi(chosen|x) per prompt, from the plain model's full logits, one prompt at a time."""
    out = []
    with torch.no_grad():
        for prompt, yes in zip(behavior.prompts, behavior.prefers_yes.tolist()):
            ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            out.append(torch.log_softmax(model(ids).logits[0, -1], -1)[yes_id if yes else no_id])
    return torch.stack(out)


def test_monitor_in_full_mode_matches_hand_recomputation():
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    behavior = _behavior(tok)
    before = copy.deepcopy(loaded.model)
    monitor = DisplacementMonitor(_probe(tok, behavior, yes_id, no_id), answer_logprobs,
                                  history=History(), every=2, top_k=5, tokenizer=tok)
    batches = answer_batches(behavior, tok, yes_id, no_id, batch_size=2, seed=0)
    run = fit_lm(loaded, batches, TrainConfig(lr=1e-3), mode="full", steps=5, callbacks=[monitor])
    records = monitor.history.records
    assert [r["step"] for r in records] == [2, 4, 5]  # every 2 steps, and the end
    assert all(r["split"] == "displacement" for r in records)
    assert all(0.0 <= r["chosen_fell"] <= 1.0 for r in records)
    last = monitor.summary()
    assert last is records[-1]
    expected = _chosen_logps(run.policy.model, tok, behavior, yes_id, no_id) - \
        _chosen_logps(before, tok, behavior, yes_id, no_id)
    assert last["chosen_logp_change"] == pytest.approx(expected.mean().item(), abs=1e-4)
    assert last["chosen_fell"] == pytest.approx((expected < 0).float().mean().item())
    assert last["chosen_logp_change"] != 0.0 and last["rejected_logp_change"] != 0.0
    gains = last["top_gain"]
    assert len(gains) == len(last["top_gain_ids"]) == len(last["top_gain_tokens"]) == 5
    assert gains == sorted(gains, reverse=True)
    assert last["top_gain_tokens"] == [tok.decode([i]) for i in last["top_gain_ids"]]


def test_answer_logprobs_restores_train_mode_and_matches_answer_logps():
    tok = tiny_tokenizer()
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    probe = _probe(tok, _behavior(tok), yes_id, no_id)
    policy = LMPolicy(tiny_llama())
    policy.model.train()
    logprobs = answer_logprobs(policy, probe)
    assert policy.model.training and not logprobs.requires_grad
    assert logprobs.shape == (len(probe), len(tok))
    with torch.no_grad():
        yes, no = policy.answer_logps(probe)
    assert torch.allclose(logprobs[:, yes_id], yes, atol=1e-6)
    assert torch.allclose(logprobs[:, no_id], no, atol=1e-6)
    with pytest.raises(ValueError):
        DisplacementMonitor(probe, history=History(), every=0)
