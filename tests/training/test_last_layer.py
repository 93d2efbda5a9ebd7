import math

import pytest
import torch

from prefdyn.errors import TrainingError
from prefdyn.losses import get_loss
from prefdyn.policies import LastLayerPolicy, stack_problems
from prefdyn.training import TrainConfig, fit_last_layer, hessian_lambda_max
from prefdyn.training.loop import train
from prefdyn.training.batches import full_batches

from tests.training._synthetic import synthetic_data, synthetic_problem


def _w0(d=8, rows=2, seed=1):
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_loss_starts_at_log2_and_falls_for_every_problem():
    data = synthetic_data()
    run = fit_last_layer(_w0(), data, TrainConfig(steps=50), names=["a", "b", "c"])
    _, loss = run.history.curves("loss")
    for name, curve in loss.items():
        assert curve[0] == pytest.approx(math.log(2), abs=1e-6)
        assert curve[-1] < curve[0] - 0.05, name


def test_more_distinguishable_problem_learns_faster():
    data = synthetic_data(seps=(0.5, 2.0, 4.0))
    run = fit_last_layer(_w0(), data, TrainConfig(steps=30), names=["low", "mid", "high"])
    last = run.history.last("loss")
    assert last["high"] < last["mid"] < last["low"]


def test_vectorized_problems_equal_independent_runs():
    data = synthetic_data()
    cfg = TrainConfig(steps=20, lr=0.05)
    joint = fit_last_layer(_w0(), data, cfg, names=["a", "b", "c"])
    for b, name in enumerate(["a", "b", "c"]):
        x, y = synthetic_problem(40, 8, (0.5, 2.0, 4.0)[b], seed=b)
        alone = fit_last_layer(_w0(), stack_problems([x], [y]), cfg, names=[name])
        torch.testing.assert_close(joint.policy.W[b], alone.policy.W[0])


def test_only_answer_rows_change_when_all_rows_are_trained():
    # DPO's log-partition cancels, so non-answer rows get no gradient and the
    # answer rows follow exactly the answers-only dynamics.
    data = synthetic_data(seps=(2.0,))
    W_all = _w0(rows=5)
    cfg = TrainConfig(steps=15, lr=0.05)
    full = fit_last_layer(W_all, data, cfg, names=["a"], yes=3, no=1)
    ans = fit_last_layer(W_all[[3, 1]], data, cfg, names=["a"], yes=0, no=1)
    delta = full.policy.delta()[0]
    assert torch.count_nonzero(delta[[0, 2, 4]]) == 0
    assert delta[[3, 1]].abs().sum() > 0
    torch.testing.assert_close(full.policy.W[0, [3, 1]], ans.policy.W[0])


def test_default_lr_comes_from_the_closed_form_curvature():
    # lambda_max(H) = beta^2 / 2 * lambda_max(E[g g^T]) for last-layer DPO at W0.
    data = synthetic_data(seps=(2.0,), n=60)
    beta = 0.3
    pol = LastLayerPolicy(_w0(), 1)
    ref = pol.reference_for(data)
    lam = hessian_lambda_max(pol, get_loss("dpo", beta=beta), ref, iters=100)
    g = data.embeddings[0]
    expected = beta**2 / 2 * torch.linalg.eigvalsh(g.T @ g / g.shape[0]).max()
    assert lam.item() == pytest.approx(expected.item(), rel=1e-3)
    run = fit_last_layer(_w0(), data, TrainConfig(steps=1, beta=beta), names=["a"])
    assert run.lr == pytest.approx(1.0 / expected.item(), rel=1e-3)


def test_derived_lr_is_stable_where_a_hand_picked_one_diverges():
    data = synthetic_data(seps=(1.0,), mean_norm=60.0)
    safe = fit_last_layer(_w0(), data, TrainConfig(steps=40), names=["a"])
    losses = safe.history.curves("loss")[1]["a"]
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:]))  # monotone
    wild = fit_last_layer(_w0(), data, TrainConfig(steps=40, lr=safe.lr * 8), names=["a"])
    wild_losses = wild.history.curves("loss")[1]["a"]
    assert wild_losses.max() > wild_losses[0]  # oscillates / overshoots


def test_minibatch_and_adamw_train():
    data = synthetic_data()
    for cfg in (TrainConfig(steps=40, batch_size=8), TrainConfig(steps=40, optimizer="adamw")):
        run = fit_last_layer(_w0(), data, cfg, names=["a", "b", "c"])
        last = run.history.last("loss")
        assert all(v < math.log(2) for v in last.values()), cfg


def test_nan_stops_with_the_step_named_and_metrics_kept():
    data = synthetic_data(seps=(1.0,))
    pol = LastLayerPolicy(_w0(), 1)
    ref = pol.reference_for(data)
    calls = {"n": 0}

    def exploding(logps):
        calls["n"] += 1
        out = get_loss("dpo", beta=0.1)(logps)
        if calls["n"] == 4:
            out.losses = out.losses * float("nan")
        return out

    from prefdyn.tracking import History, LastLayerTracker
    hist = History()
    tracker = LastLayerTracker(get_loss("dpo", beta=0.1), ref, names=["a"], history=hist)
    opt = torch.optim.SGD([pol.W], lr=0.01)
    with pytest.raises(TrainingError, match="step 4"):
        train(pol, exploding, full_batches(ref), opt, steps=10, callbacks=[tracker])
    steps, _ = hist.curves("loss")
    assert list(steps) == [0, 1, 2, 3]
    assert torch.isfinite(pol.W).all()


def test_mixture_records_per_group_curves():
    xa, ya = synthetic_problem(30, 8, 4.0, seed=0)
    xb, yb = synthetic_problem(30, 8, 0.5, seed=1)
    groups = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(30, dtype=torch.long)])
    data = stack_problems([torch.cat([xa, xb])], [torch.cat([ya, yb])], groups=[groups])
    run = fit_last_layer(_w0(), data, TrainConfig(steps=20), names=["mix"], group_names=["easy", "hard"])
    last = run.history.last("loss", by="group")
    assert set(last) == {"easy", "hard"}
    assert last["easy"] < last["hard"]


def test_weight_change_and_boundary_cosine_are_tracked():
    data = synthetic_data(seps=(3.0,))
    run = fit_last_layer(_w0(), data, TrainConfig(steps=10), names=["a"])
    _, fro = run.history.curves("dW_fro", split="weights")
    _, cos = run.history.curves("cos_boundary", split="weights")
    assert fro["a"][0] == 0 and all(b >= a for a, b in zip(fro["a"], fro["a"][1:]))
    assert cos["a"][-1] > 0.5


def test_operator_norm_matches_svd():
    from prefdyn.tracking.last_layer import operator_norm
    M = torch.randn(3, 2, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(operator_norm(M), torch.linalg.matrix_norm(M, ord=2))
    tall = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(operator_norm(tall), torch.linalg.matrix_norm(tall, ord=2))


def test_the_runner_trains_with_sft_which_takes_no_beta():
    """--loss sft used to fail with "loss 'sft' takes no parameter(s) ['beta']"."""
    run = fit_last_layer(_w0(), synthetic_data(seps=(2.0,)), TrainConfig(steps=5, lr=0.05, loss="sft"),
                         names=["a"])
    _, loss = run.history.curves("loss")
    assert loss["a"][-1] < loss["a"][0]
