"""The bandit: exact expected gradient, sampled estimators against it, and RL runs
through the one step and loop."""

import itertools
import math

import pytest
import torch

import prefdyn.training.loop as loop_module
from prefdyn.diagnostics.reward_spread import expected_reward_logit_grad
from prefdyn.losses import BanditLogps, RolloutLogps, get_loss
from prefdyn.policies.bandit import BanditPolicy, BanditStream, answer_logits
from prefdyn.training.loop import train
from tests._tiny import tiny_llama

VOCAB = 5
PROMPTS = [[1, 2, 3], [2, 4], [3, 3, 1]]  # distinct last tokens: no prompt fights another
TARGETS = [2, 4, 0]


def _stream(batch_size=3, **kw):
    return BanditStream(PROMPTS, TARGETS, vocab_size=VOCAB, pad_id=0, batch_size=batch_size, **kw)


def _model(seed=0):
    return tiny_llama(seed, hidden=16, vocab=VOCAB, init_std=0.3)


def _flat_grad(value, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)])


def test_exact_expected_gradient_is_autograd_of_the_expected_reward():
    model, batch = _model(), _stream().collate([0, 1, 2])
    params = list(model.parameters())
    logits = answer_logits(model, batch.input_ids, batch.attention_mask)
    # grad_theta V_x = J^T (p * (r - V)), summed over the inputs
    formula = torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        logits, params, grad_outputs=expected_reward_logit_grad(logits.detach(), batch.rewards))])
    bandit = BanditPolicy(model).logps(batch)
    autograd = _flat_grad(-get_loss("expected_reward")(bandit).losses.sum(), params)
    torch.testing.assert_close(formula, autograd, atol=1e-6, rtol=1e-4)


def _enumerated_logit_expectation(loss, logits, rewards, k):
    """E over all V^k groups of answers of d loss / d logits, per prompt (exact, by enumeration)."""
    out = torch.zeros_like(logits, dtype=torch.float64)
    for x in range(len(logits)):
        p = torch.softmax(logits[x].double(), -1)
        for ys in itertools.product(range(VOCAB), repeat=k):
            z = logits[x].double().clone().requires_grad_(True)
            y = torch.tensor(ys)
            lp = torch.log_softmax(z, -1)[y][:, None]
            ro = RolloutLogps(lp, torch.ones_like(lp), rewards[x, y].double(), torch.zeros(k, dtype=torch.long))
            (g,) = torch.autograd.grad(loss(ro).losses.mean(), z)
            out[x] += p[y].prod() * g
    return out / len(logits)  # the step averages over the batch


@pytest.mark.parametrize("name,params,factor", [
    ("reinforce", {}, 1.0), ("reinforce", {"baseline": 0.3}, 1.0), ("rloo", {}, 1.0),
    ("grpo", {"scale": "none"}, 1 / 2), ("grpo", {"scale": "group"}, None)])
def test_sampled_estimators_average_to_their_exact_expectation(name, params, factor):
    k, draws = 2, 150
    model, batch = _model(), _stream().collate([0, 1])
    wparams = list(model.parameters())
    logits = answer_logits(model, batch.input_ids, batch.attention_mask)
    loss = get_loss(name, **params)
    exact = -expected_reward_logit_grad(logits.detach().double(), batch.rewards.double()) / len(logits)
    expected = _enumerated_logit_expectation(loss, logits.detach(), batch.rewards, k)
    # Enumerated over all V^k answer groups (exact); then sampled draws, projected on it.
    if factor is not None:  # REINFORCE and RLOO are unbiased; GRPO without scaling is (k-1)/k
        torch.testing.assert_close(expected, factor * exact, atol=1e-9, rtol=1e-6)
    else:  # group scaling: a positive multiple of the exact gradient, per prompt
        cos = torch.nn.functional.cosine_similarity(expected, exact, dim=-1)
        assert (cos > 1 - 1e-9).all()
    target = torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        logits, wparams, grad_outputs=expected.float())])
    u = target / target.norm()
    policy = BanditPolicy(model, group_size=k, generator=torch.Generator().manual_seed(1))
    proj = torch.stack([_flat_grad(loss(policy.logps(batch)).losses.mean(), wparams) @ u
                        for _ in range(draws)]).double()
    se = proj.std() / math.sqrt(draws)
    assert abs(proj.mean() - target.norm()) < 4 * se, (proj.mean(), target.norm(), se)


def test_sampling_is_reproducible_and_resumable_from_the_generator_state():
    model, batch = _model(), _stream().collate([0, 1, 2])
    a = BanditPolicy(model, group_size=4, generator=torch.Generator().manual_seed(7))
    a.logps(batch)
    saved = a.state()
    want = a.logps(batch).rewards
    b = BanditPolicy(model, group_size=4)
    b.load_state(saved)
    assert torch.equal(b.logps(batch).rewards, want)


def test_stream_resumes_mid_epoch():
    a = _stream(batch_size=2, seed=3)
    next(a)
    saved = a.state()
    want = [next(a).rows.tolist() for _ in range(3)]
    b = _stream(batch_size=2, seed=3)
    b.load_state(saved)
    assert [next(b).rows.tolist() for _ in range(3)] == want


@pytest.mark.parametrize("group_size,name", [(None, "expected_reward"), (4, "rloo"),
                                             (4, "grpo"), (4, "reinforce")])
def test_rl_runs_go_through_the_one_training_step(monkeypatch, group_size, name):
    calls = []
    real = loop_module.training_step

    def counting(*args, **kwargs):
        calls.append(kwargs["step"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "training_step", counting)
    model = _model()
    policy = BanditPolicy(model, group_size=group_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.lm_head.weight.detach().clone()
    train(policy, get_loss(name), _stream(), opt, steps=3)
    assert calls == [1, 2, 3]
    assert not torch.equal(before, model.lm_head.weight)


def _exact_reward(model) -> list[float]:
    """V_x of every prompt, exact."""
    with torch.no_grad():
        batch = _stream().collate([0, 1, 2])
        out = get_loss("expected_reward")(BanditPolicy(model).logps(batch))
    return out.metrics["reward"].tolist()


def test_a_short_rloo_run_learns_the_bandit():
    model = _model()
    start = _exact_reward(model)
    policy = BanditPolicy(model, group_size=8, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train(policy, get_loss("rloo"), _stream(), opt, steps=20)
    end = _exact_reward(model)
    assert max(start) < -0.3 and min(end) > 0.8, (start, end)


def test_persona_bandit_rewards_the_preferred_answer_token():
    from prefdyn.data.tasks import BehaviorData
    from prefdyn.policies.bandit import persona_bandit_stream
    from tests._tiny import chat_prompts, tiny_tokenizer

    tok = tiny_tokenizer()
    statements = ["I like cats", "I enjoy causing pain to others."]
    data = BehaviorData("b", statements, chat_prompts(tok, statements), torch.tensor([True, False]),
                        torch.tensor([0, 1]), torch.tensor([], dtype=torch.long), ["s:1", "s:2"])
    stream = persona_bandit_stream(data, tiny_llama(), tok, batch_size=2)
    batch = stream.collate([0, 1])
    yes, no = tok("Yes", add_special_tokens=False)["input_ids"][0], tok("No", add_special_tokens=False)["input_ids"][0]
    assert batch.rewards[0, yes] == 1 and batch.rewards[0, no] == -1
    assert batch.rewards[1, no] == 1 and batch.rewards[1].sum() == 2 - batch.rewards.shape[1]
