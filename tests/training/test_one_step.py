"""DPO, SFT and RL all run through the identical ``training_step`` and ``train``; an empty
shard reports the same metric names whatever the objective."""

import pytest
import torch

import prefdyn.training.loop as loop_module
from prefdyn.losses import get_loss
from prefdyn.policies.bandit import BanditPolicy, BanditStream
from prefdyn.policies import LastLayerPolicy
from prefdyn.training.batches import full_batches
from prefdyn.training.loop import train
from prefdyn.training.step import training_step
from tests._tiny import tiny_llama
from tests.training._synthetic import synthetic_data


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = loop_module.training_step

    def counting(*args, **kwargs):
        calls.append(kwargs["step"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "training_step", counting)
    return calls


@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_preference_and_sft_objectives_go_through_the_step(counted, loss):
    pol = LastLayerPolicy(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)) * 0.1, 1)
    ref = pol.reference_for(synthetic_data(seps=(2.0,)))
    before = pol.W.detach().clone()
    train(pol, get_loss(loss), full_batches(ref), torch.optim.SGD([pol.W], lr=0.1), steps=3)
    assert counted == [1, 2, 3] and not torch.equal(before, pol.W)


def test_rl_objective_goes_through_the_same_step(counted):
    model = tiny_llama(0, hidden=16, vocab=5)
    stream = BanditStream([[1, 2], [3]], [2, 4], vocab_size=5, pad_id=0, batch_size=2)
    train(BanditPolicy(model, group_size=2), get_loss("rloo"), stream,
          torch.optim.SGD(model.parameters(), lr=0.1), steps=2)
    assert counted == [1, 2]


@pytest.mark.parametrize("group_size,loss", [(None, "expected_reward"), (3, "grpo")])
def test_an_empty_shard_reports_the_objectives_metric_names(group_size, loss):
    model = tiny_llama(0, hidden=16, vocab=5)
    policy = BanditPolicy(model, group_size=group_size)
    batch = BanditStream([[1, 2], [3]], [2, 4], vocab_size=5, pad_id=0, batch_size=2).collate([0, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    full = training_step(policy, get_loss(loss), batch, opt, step=1)
    # a process whose shard is empty still joins the gradient sync and reports no examples
    empty = training_step(policy, get_loss(loss), [], opt, step=2,
                          grad_sync=lambda grads, finite, n: finite)
    assert set(empty.out.metrics) == set(full.out.metrics)
    assert all(v.shape[-1] == 0 for v in empty.out.metrics.values())


def test_the_step_frees_the_gradients_once_applied():
    """What runs between steps (an RL stream sampling the next batch) holds no gradients."""
    model = tiny_llama(0, hidden=16, vocab=5)
    stream = BanditStream([[1, 2], [3]], [2, 4], vocab_size=5, pad_id=0, batch_size=2)
    before = [p.detach().clone() for p in model.parameters()]
    out = training_step(BanditPolicy(model), get_loss("expected_reward"), next(stream),
                        torch.optim.SGD(model.parameters(), lr=0.1), step=1)
    assert out.grad_norm > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # updated
    assert all(p.grad is None for p in model.parameters())
