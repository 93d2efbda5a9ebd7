"""Per-input reward spread: exact on the bandit (hand-computed on a bigram model whose
next-token distribution is set by hand), Monte Carlo on generation, and the tracker."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prefdyn.losses import get_loss
from prefdyn.policies.bandit import BanditPolicy, BanditStream
from prefdyn.tracking.history import History
from prefdyn.tracking.reward_spread import (
    RewardSpreadTracker,
    _rloo_half_grad,
    bandit_spread,
    group_frac_zero_std,
    sampled_spread,
)
from prefdyn.training.loop import train
from tests._tiny import tiny_llama, tiny_tokenizer


class Bigram(nn.Module):
    """Next-token logits are a row of ``W`` chosen by the last token: pi(.|x) is set by hand."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.W = nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **kw):
        return SimpleNamespace(logits=self.W[input_ids])

    def get_output_embeddings(self):
        return SimpleNamespace(weight=self.W)


P = torch.tensor([[0.0, 0.0, 0.0],          # token 0: unused
                  [0.5, 0.25, 0.25],        # after token 1
                  [0.1, 0.9 - 1e-12, 1e-12]])  # after token 2: the target (0) at 0.1


def _bigram():
    return Bigram(P.clamp_min(1e-30).log())


def _stream():
    # prompt 0 ends in token 1, prompt 1 in token 2; both reward token 0 (+1), others -1
    return BanditStream([[2, 1], [2]], [0, 0], vocab_size=3, pad_id=0, batch_size=2)


def test_bandit_spread_is_exact():
    k = 3
    s = bandit_spread(_bigram(), _stream().collate([0, 1]), k=k, grad_inputs=2)
    # V = 2p - 1, std = 2 sqrt(p (1 - p)) for a +1/-1 reward with target probability p
    torch.testing.assert_close(s.mean, torch.tensor([0.0, -0.8]))
    torch.testing.assert_close(s.std, torch.tensor([1.0, 0.6]))
    torch.testing.assert_close(s.success, torch.tensor([0.5, 0.1]))
    assert s.predicted_frac_zero_std == pytest.approx(((0.5**3 + 0.5**3) + (0.1**3 + 0.9**3)) / 2)
    # grad_W V_x is p * (r - V) in the row of the prompt's last token, zero elsewhere
    g0 = math.sqrt(0.5**2 + 0.25**2 + 0.25**2)  # p = (.5, .25, .25), r - V = (1, -1, -1)
    g1 = math.sqrt((0.1 * 1.8)**2 + (0.9 * 0.2)**2)  # r - V = (1.8, -0.2, -0.2)
    torch.testing.assert_close(s.grad_norm, torch.tensor([g0, g1]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.logit_grad_norm, s.grad_norm, rtol=1e-5, atol=1e-6)
    assert (s.logit_grad_norm <= s.logit_bound + 1e-6).all()
    assert s.exact and s.k == k and s.rows.tolist() == [0, 1]


def test_bandit_spread_grad_only_for_the_first_inputs_and_model_left_as_it_was():
    model = _bigram().train()
    model.W.requires_grad_(False)  # a frozen base model is measured all the same
    s = bandit_spread(model, _stream().collate([0, 1]), k=2, grad_inputs=1)
    assert not math.isnan(s.grad_norm[0]) and math.isnan(s.grad_norm[1])
    assert model.training and not model.W.requires_grad


def test_a_certain_answer_has_zero_std_and_every_sample_agrees():
    logits = torch.full((3, 3), -50.0)
    logits[:, 0] = 50.0  # every prompt answers token 0, the target
    s = bandit_spread(Bigram(logits), _stream().collate([0, 1]), k=8)
    assert s.zero_std.all() and s.frac_reward_zero_std == 1.0
    assert s.predicted_frac_zero_std == pytest.approx(1.0)
    torch.testing.assert_close(s.std, torch.zeros(2), atol=1e-10, rtol=0)
    summary = s.summary(small_std=0.1)
    assert summary["frac_small_std"] == 1.0 and summary["reward_mean"] == pytest.approx(1.0)


def test_rloo_half_gradient_by_hand():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    seq = x @ w  # log pi(y_i) linear in w: grad_w = x_i
    r = torch.tensor([1.0, 0.0, 2.0])
    # RLOO advantages: r_i - mean of the others = (1 - 1, 0 - 1.5, 2 - 0.5)
    expected = (0.0 * x[0] - 1.5 * x[1] + 1.5 * x[2]) / 3
    torch.testing.assert_close(_rloo_half_grad(seq, r, [w]).float(), expected)


def _yes_reward(prompts, responses, references):
    return torch.tensor([1.0 if y == " Yes" else -1.0 for y in responses])


def test_monte_carlo_spread_of_one_token_covers_the_exact_bandit_value():
    tok, model = tiny_tokenizer(), tiny_llama(0, hidden=16, init_std=0.02)
    prompts = ["I like cats", "Yes"]
    k = 64
    mc = sampled_spread(model, tok, prompts, _yes_reward, rows=[0, 1], k=k, max_new_tokens=1,
                        temperature=1.0, seed=1)
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    exact = bandit_spread(model, BanditStream(ids, [tok.convert_tokens_to_ids("ĠYes")] * 2,
                                              vocab_size=len(tok), pad_id=tok.pad_token_id,
                                              batch_size=2).collate([0, 1]), k=k)
    assert not mc.exact and mc.k == k
    # a +-1 reward: the sample mean is within 4 standard errors of the exact mean
    se = exact.std / math.sqrt(k)
    assert ((mc.mean - exact.mean).abs() <= 4 * se + 1e-6).all()
    assert (mc.ci_low <= mc.mean).all() and (mc.mean <= mc.ci_high).all()


def test_constant_reward_gives_zero_std_and_a_zero_gradient_estimate():
    tok, model = tiny_tokenizer(), tiny_llama(0, hidden=16)
    const = lambda p, y, r: torch.ones(len(p))
    s = sampled_spread(model, tok, ["I like cats", "No"], const, rows=[0, 1], k=4,
                       max_new_tokens=3, grad_inputs=2)
    assert s.frac_reward_zero_std == 1.0 and s.predicted_frac_zero_std == pytest.approx(1.0)
    torch.testing.assert_close(s.std, torch.zeros(2))
    torch.testing.assert_close(s.grad_norm_sq, torch.zeros(2))  # every advantage is 0


def test_tracker_records_step_zero_every_and_last_into_the_history():
    model = _bigram()
    stream = _stream()
    batch = stream.collate([0, 1])
    sink = []
    history = History(SimpleNamespace(log=sink.append))
    tracker = RewardSpreadTracker({"probe": lambda m: bandit_spread(m, batch, k=2)},
                                  history=history, every=2, name="bandit")
    train(BanditPolicy(model), get_loss("expected_reward"), stream,
          torch.optim.SGD(model.parameters(), lr=0.5), steps=3, callbacks=[tracker])
    steps = [r["step"] for r in sink if r["split"] == "probe"]
    assert steps == [0, 2, 3] and sorted(tracker.spreads["probe"]) == [0, 2, 3]
    first, last = tracker.first("probe"), tracker.last("probe")
    torch.testing.assert_close(first.mean, torch.tensor([0.0, -0.8]))
    assert (last.mean > first.mean).all()  # gradient ascent on the exact expected reward
    record = sink[-1]
    assert record["problem"] == "bandit" and record["per_input"]["rows"] == [0, 1]
    assert record["reward_mean"] == pytest.approx(float(last.mean.mean()))


def test_group_frac_zero_std_by_hand():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, -1.0, -1.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    assert group_frac_zero_std(rewards, groups) == pytest.approx(2 / 3)  # groups 0 and 2 agree


def test_a_resumed_tracker_takes_back_the_spreads_its_history_holds(tmp_path):
    from prefdyn.tracking.run_dir import RunDir, read_metrics

    batch = _stream().collate([0, 1])
    with RunDir(tmp_path) as run:  # the records go through metrics.jsonl (NaN as "nan")
        tracker = RewardSpreadTracker({"probe": lambda m: bandit_spread(m, batch, k=2)},
                                      history=History(run), every=2, name="bandit")
        tracker.record(0, _bigram())
    resumed = History()
    resumed.records = read_metrics(tmp_path / "metrics.jsonl")
    again = RewardSpreadTracker({"probe": lambda m: pytest.fail("measured again")},
                                history=resumed, every=2, name="bandit")
    again.on_train_start(SimpleNamespace(step=0), SimpleNamespace(model=_bigram()))
    got, want = again.first("probe"), tracker.first("probe")
    torch.testing.assert_close(got.mean, torch.tensor([0.0, -0.8]))
    assert got.rows.tolist() == [0, 1] and got.k == 2 and got.exact
    assert got.zero_std.dtype == torch.bool and got.zero_std.tolist() == want.zero_std.tolist()
    torch.testing.assert_close(got.std, want.std.float())

