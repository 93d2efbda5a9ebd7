"""The one-pass last-layer path against the plain autograd path."""

import pytest
import torch

from prefdyn.losses import get_loss
from prefdyn.losses.types import compute_loss
from prefdyn.policies import LastLayerPolicy
from prefdyn.training import TrainConfig
from prefdyn.training.loop import train
from prefdyn.training.runner import setup_last_layer
from prefdyn.policies._fused_last_layer import one_pass_logps, supports

from tests.training._synthetic import synthetic_data


def _data(n=37, d=8, other_lse=False, ragged=True):
    data = synthetic_data(seps=(0.5, 2.0, 4.0), n=n, d=d)
    if ragged:  # problems of different sizes: padded rows must get no weight
        data.mask[1, n - 5:] = False
    if other_lse:
        data.other_lse = torch.randn(data.mask.shape, generator=torch.Generator().manual_seed(3)) + 2.0
    return data


def _policy(data, seed=1, one_pass=None):
    W = torch.randn(2, data.embeddings.shape[-1], generator=torch.Generator().manual_seed(seed)) * 0.1
    policy = LastLayerPolicy(W, data.n_problems)
    data = policy.reference_for(data)
    with torch.no_grad():  # move away from the reference so the loss is not at its start value
        policy.W.add_(torch.randn(policy.W.shape, generator=torch.Generator().manual_seed(seed + 1)) * 0.3)
    policy.one_pass = one_pass
    return policy, data


def _grad(policy, objective, data, scale=1.0):
    policy.W.grad = None
    loss, *_ = compute_loss(policy, objective, data)
    (loss * scale).backward()
    return loss.detach(), policy.W.grad.clone()


@pytest.mark.parametrize("loss_name", ["dpo", "ipo", "hinge"])
@pytest.mark.parametrize("other_lse", [False, True])
def test_one_pass_gradient_equals_autograd(loss_name, other_lse, monkeypatch):
    objective = get_loss(loss_name, beta=0.5)
    plain, data = _policy(_data(other_lse=other_lse))
    fused, _ = _policy(_data(other_lse=other_lse), one_pass=objective)
    want_loss, want = _grad(plain, objective, data)
    with monkeypatch.context() as m:  # the step's own reduction: G is not read a second time
        m.setattr(torch, "bmm", _no_second_read)
        got_loss, got = _grad(fused, objective, data)
    assert want.abs().max() > 1e-3  # a gradient worth comparing
    # Same formulas, other summation orders: equal to fp32 rounding.
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def _no_second_read(*args, **kwargs):
    raise AssertionError("the backward fell back to the plain product")


def test_other_objectives_and_dtypes_take_the_plain_path():
    policy, data = _policy(_data())
    assert supports(get_loss("dpo", beta=0.5), policy.W, data.embeddings)
    assert not supports(get_loss("cdpo", beta=0.5), policy.W, data.embeddings)
    assert not supports(get_loss("dpo", beta=0.5), policy.W.double(), data.embeddings.double())
    with pytest.raises(ValueError, match="margin loss"):
        one_pass_logps(policy.W, data.embeddings, data.prefers_yes, data.mask, None, data.ref_chosen,
                       data.ref_rejected, rows=(0, 1), objective=get_loss("cdpo", beta=0.5))
    # The policy falls back by itself: same gradient as without one_pass.
    objective = get_loss("cdpo", beta=0.5)
    plain, _ = _policy(_data())
    fused, _ = _policy(_data(), one_pass=objective)
    torch.testing.assert_close(_grad(fused, objective, data)[1], _grad(plain, objective, data)[1])


def test_nan_embeddings_give_nan_logps():
    objective = get_loss("dpo", beta=0.5)
    policy, data = _policy(_data(), one_pass=objective)
    data.embeddings[0, 3, 2] = float("nan")
    logps = policy.logps(data)
    assert logps.chosen[0, 3].isnan() and not logps.chosen[0, 2].isnan()


def test_scaled_loss_and_other_uses_of_the_logps_get_their_exact_gradient():
    objective = get_loss("dpo", beta=0.5)
    plain, data = _policy(_data())
    fused, _ = _policy(_data(), one_pass=objective)
    # A micro-batch weight scales the loss: the gradient summed in the forward is rescaled.
    torch.testing.assert_close(_grad(fused, objective, data, 0.25)[1],
                               _grad(plain, objective, data, 0.25)[1], rtol=1e-6, atol=1e-6)
    # Any other function of the log-probs: the backward falls back to the plain product.
    for policy in (plain, fused):
        policy.W.grad = None
        logps = policy.logps(data)
        (logps.chosen.square().sum() + 3 * logps.rejected[0].sum()).backward()
    torch.testing.assert_close(fused.W.grad, plain.W.grad, rtol=1e-5, atol=1e-6)  # |grad| ~ 10


def test_swapped_answer_rows_are_followed():
    objective = get_loss("dpo", beta=0.5)
    plain, data = _policy(_data())
    fused, _ = _policy(_data(), one_pass=objective)
    for policy in (plain, fused):
        policy.yes, policy.no = 1, 0
    torch.testing.assert_close(_grad(fused, objective, data)[1], _grad(plain, objective, data)[1],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_training_run_equals_the_plain_path(optimizer):
    data = _data(n=64, d=16)
    W0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(1)) * 0.1
    cfg = TrainConfig(steps=200, optimizer=optimizer, log_every=50, eval_every=200)
    runs = {}
    for one_pass in (True, False):
        run = setup_last_layer(W0, data, cfg, names=["a", "b", "c"])
        assert run.policy.one_pass is run.objective  # the runner's default
        if not one_pass:
            run.policy.one_pass = None
        train(run.policy, run.objective, run.batches, run.optimizer, steps=cfg.steps,
              callbacks=[run.tracker])
        runs[one_pass] = run
    fused, plain = runs[True], runs[False]
    assert (plain.policy.W - plain.policy.W0).abs().max() > 1e-2  # it moved
    # |W| grows to ~7: the two summation orders differ by fp32 rounding only
    torch.testing.assert_close(fused.policy.W, plain.policy.W, rtol=1e-6, atol=1e-6)
    assert fused.history.last("loss") == pytest.approx(plain.history.last("loss"), abs=1e-6)
