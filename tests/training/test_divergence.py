"""Divergence stops a run like a NaN does: the rule, every mode's loop, the config field."""

import json
import math

import pytest
import torch

from prefdyn.errors import PrefdynError, TrainingError
from prefdyn.losses import LossOutput
from prefdyn.losses.types import preference_output
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.run_dir import read_metrics
from prefdyn.training import TrainConfig, fit_last_layer
from prefdyn.training.divergence import DivergenceGuard, peak_abs_margin
from prefdyn.training.lm_runner import fit_lm
from tests._tiny import tiny_loaded
from tests.training._synthetic import synthetic_data
from tests.training.test_lm_mechanics import _stream

LOSSES = ["dpo", "ipo", "hinge", "simpo", "cdpo", "robust", "dpo_sft"]


def _w0(d=8, rows=2, seed=1):
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_rule_measures_from_the_first_step_with_a_floor_of_one():
    guard = DivergenceGuard(factor=10.0)
    assert guard.check(loss=3.0, margin=0.0) is None  # step 1 sets the scales: 3 and max(0, 1)
    assert guard.check(loss=30.0, margin=10.0) is None  # equal to the thresholds: not above
    assert "loss 30.01 rose above 10 x its first-step value 3" in guard.check(loss=30.01, margin=0.0)
    assert "reward margin |10.5|" in guard.check(loss=1.0, margin=10.5)
    small = DivergenceGuard(factor=10.0)
    small.check(loss=0.01, margin=0.2)  # a start near zero is floored at 1
    assert small.check(loss=9.0, margin=9.0) is None


def test_peak_margin_ignores_padded_rows():
    out = preference_output(torch.zeros(2, 3), torch.tensor([[1.0, -4.0, 50.0], [0.5, 0.0, 0.0]]),
                            torch.zeros(2, 3))
    mask = torch.tensor([True, True, False])
    assert peak_abs_margin(out, mask).item() == 4.0
    assert peak_abs_margin(out).item() == 50.0


def test_objectives_without_a_margin_are_watched_by_their_loss_only():
    out = LossOutput(torch.tensor([1e9, 2.0]), {"reward": torch.tensor([1.0, -1.0])})
    assert peak_abs_margin(out).item() == 0.0


def test_config_validates_the_factor():
    assert TrainConfig(divergence_factor=None).divergence_factor is None
    for bad in (1.0, 0.5, -3.0):
        with pytest.raises(PrefdynError, match="divergence_factor"):
            TrainConfig(divergence_factor=bad)


def test_a_huge_step_stops_the_run_naming_the_step_and_keeps_the_metrics():
    data = synthetic_data(seps=(1.0,))
    recorded = []

    class Keep(Callback):
        def on_step_end(self, state, policy, out):
            recorded.append(policy.W.detach().clone())

    with pytest.raises(TrainingError) as info:
        fit_last_layer(_w0(), data, TrainConfig(steps=20, lr=1e12), names=["a"], callbacks=[Keep()])
    # Step 1 starts at log 2 and sets the scale; its update overshoots, step 2's loss shows it.
    assert info.value.step == 2
    message = str(info.value)
    assert message.startswith("step 2: loss ") and "1000 x its first-step value 0.6931" in message
    assert "learning rate 1e+12" in message and "SGD" in message and "weights left at step 1" in message
    assert len(recorded) == 1 and torch.isfinite(recorded[0]).all()


def test_the_check_can_be_disabled():
    data = synthetic_data(seps=(1.0,))
    run = fit_last_layer(_w0(), data, TrainConfig(steps=5, lr=1e12, divergence_factor=None), names=["a"])
    assert run.history.last("loss")["a"] > 1e6  # the same run goes on when asked to


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_healthy_runs_of_every_loss_never_meet_the_rule(loss, optimizer):
    # SGD at the edge of stability (twice the curvature step), AdamW at a large step, minibatches.
    lr = None if optimizer == "sgd" else 0.1
    cfg = TrainConfig(steps=200, loss=loss, optimizer=optimizer, lr=lr, lr_safety=2.0, batch_size=16,
                      log_every=100, eval_every=100)
    run = fit_last_layer(_w0(), synthetic_data(), cfg, names=["a", "b", "c"])
    assert run.state.step == 200 and run.state.error is None
    assert all(math.isfinite(v) for v in run.history.last("loss").values())


class BlowUpAfter(Callback):
    """Scale lm_head by 1e4 at the end of step ``step``: the next margins explode, finite."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state, policy, out):
        if state.step == self.step:
            with torch.no_grad():
                policy.model.get_output_embeddings().weight.mul_(1e4)


def test_lm_run_stops_like_a_nan_with_the_summary_naming_the_step(tmp_path):
    loaded = tiny_loaded()
    run_folder = tmp_path / "run"
    with pytest.raises(TrainingError, match="step 3: .*diverged"):
        fit_lm(loaded, _stream(loaded.tokenizer), TrainConfig(optimizer="adamw", lr=1e-3), mode="full",
               steps=6, run_folder=run_folder, checkpoint_every=1, callbacks=[BlowUpAfter(2)])
    summary = json.loads((run_folder / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_step"] == 3
    assert summary["last_checkpoint"] == 2 and "AdamW" in summary["error"]
    assert [r["step"] for r in read_metrics(run_folder / "metrics.jsonl")] == [1, 2]
