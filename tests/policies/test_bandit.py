"""The bandit: exact expected gradient, sampled estimators against it, and RL runs
through the one step and loop."""

import itertools
import math

import pytest
import torch

import prefdyn.training.loop as loop_module
from prefdyn.diagnostics.reward_spread import expected_reward_logit_grad
from prefdyn.losses import RolloutLogps, get_loss
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
    policy = BanditPolicy(model, group_size=k)
    proj = torch.stack([
        _flat_grad(loss(policy.logps(_stream().collate([0, 1], sample_seed=m))).losses.mean(), wparams) @ u
        for m in range(draws)]).double()
    se = proj.std() / math.sqrt(draws)
    assert abs(proj.mean() - target.norm()) < 4 * se, (proj.mean(), target.norm(), se)


def test_a_resumed_sampled_run_ends_where_an_unbroken_one_does():
    """The stream's state (JSON, as a checkpoint stores it) carries the sampling RNG."""
    import json

    def run(model, stream, steps, start=0):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        train(BanditPolicy(model, group_size=4), get_loss("rloo"), stream, opt, steps=steps,
              start_step=start)

    whole = _model()
    run(whole, _stream(batch_size=2, seed=3), 4)
    half, stream = _model(), _stream(batch_size=2, seed=3)
    run(half, stream, 2)
    saved = json.loads(json.dumps(stream.state()))
    resumed = _stream(batch_size=2, seed=3)
    resumed.load_state(saved)
    run(half, resumed, 4, start=2)  # plain SGD: no optimizer state to carry
    for a, b in zip(whole.parameters(), half.parameters()):
        torch.testing.assert_close(a, b)


def test_stream_resumes_mid_epoch():
    a = _stream(batch_size=2, seed=3)
    next(a)
    saved = a.state()
    want = [(b.rows.tolist(), b.sample_seed) for b in (next(a) for _ in range(3))]
    b = _stream(batch_size=2, seed=3)
    b.load_state(saved)
    assert [(x.rows.tolist(), x.sample_seed) for x in (next(b) for _ in range(3))] == want


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


def _rloo_run(model, steps=20):
    train(BanditPolicy(model, group_size=8), get_loss("rloo"), _stream(),
          torch.optim.Adam(model.parameters(), lr=0.01), steps=steps)


def test_a_short_rloo_run_learns_the_bandit():
    model = tiny_llama(0, hidden=32, vocab=VOCAB, init_std=0.3)
    start = _exact_reward(model)
    _rloo_run(model)
    end = _exact_reward(model)
    assert sum(start) / 3 < 0.2 and min(end) > 0.9, (start, end)


def test_inputs_with_tiny_reward_std_barely_move_while_the_others_learn():
    """Razin et al.'s Finding II on the bandit: "RFT has limited impact on the reward of
    inputs with small reward std"; sharp random logits (init std 1) give two prompts a
    reward std ~0.05 at V ~ -1."""
    model = tiny_llama(0, hidden=16, vocab=VOCAB, init_std=1.0)
    batch = _stream().collate([0, 1, 2])
    with torch.no_grad():
        std = get_loss("expected_reward")(BanditPolicy(model).logps(batch)).metrics["reward_std"]
    start = _exact_reward(model)
    _rloo_run(model)
    end = _exact_reward(model)
    small = std < 0.1
    assert small.sum() == 2 and (~small).sum() == 1, std
    for i in range(3):
        if small[i]:
            assert start[i] < -0.99 and end[i] < -0.95, (start, end)  # stuck near the worst reward
        else:
            assert end[i] > 0.95, (start, end)
