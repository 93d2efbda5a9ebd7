"""check_every > 1: the step's checks read every N steps, the bad step still named and skipped."""

import json
import math

import pytest
import torch

from prefdyn.errors import PrefdynError, TrainingError
from prefdyn.tracking.callbacks import Callback
from prefdyn.training import TrainConfig
from prefdyn.training._checks import DeferredChecks, can_skip_on_device
from prefdyn.training.divergence import DivergenceGuard
from prefdyn.training.lm_runner import fit_lm
from tests._tiny import tiny_loaded
from tests.training.test_divergence import BlowUpAfter
from tests.training.test_lm_mechanics import _stream


class Keep(Callback):
    """Every step's trainable weights (a copy) and loss, as the callbacks see them."""

    def __init__(self):
        self.weights, self.losses = [], []

    def on_step_end(self, state, policy, out):
        self.weights.append([p.detach().clone() for p in policy.model.parameters() if p.requires_grad])
        self.losses.append(float(out.loss))


def _fit(check_every: int, blow_up_after: int | None, tmp_path, steps: int = 5):
    loaded, keep = tiny_loaded(), Keep()
    callbacks = ([BlowUpAfter(blow_up_after)] if blow_up_after else []) + [keep]
    error = None
    try:
        fit_lm(loaded, _stream(loaded.tokenizer),
               TrainConfig(optimizer="adamw", lr=1e-3, check_every=check_every), mode="full",
               steps=steps, run_folder=tmp_path / f"every{check_every}", checkpoint_every=100,
               callbacks=callbacks)
    except TrainingError as e:
        error = e
    return keep, error


def test_healthy_run_is_the_same_run(tmp_path):
    every_step, none = _fit(1, None, tmp_path)
    deferred, none2 = _fit(3, None, tmp_path)
    assert none is None and none2 is None
    assert every_step.losses == deferred.losses
    for a, b in zip(every_step.weights[-1], deferred.weights[-1]):
        assert torch.equal(a, b)


def test_divergence_is_named_at_its_step_and_later_updates_are_skipped(tmp_path):
    every_step, error = _fit(1, 2, tmp_path)
    deferred, late = _fit(4, 2, tmp_path)
    assert error.step == 3 and late.step == 3  # the same step, read at step 4
    assert str(late).startswith(str(error)[: str(error).index("weights left")])
    assert "weights left at step 2" in str(late) and "updates of steps 3..4 were skipped" in str(late)
    # The callbacks saw step 3 (skipped); step 4's read raised before they saw it.
    assert len(deferred.weights) == 3 and len(every_step.weights) == 2
    # BlowUpAfter scaled lm_head at the end of step 2 (before Keep copied it): step 3 moved nothing.
    for w2, w3 in zip(*deferred.weights[1:3]):
        assert torch.equal(w2, w3)


def test_a_nan_loss_is_named_and_the_run_summary_says_so(tmp_path):
    class NanAfter(Callback):
        def on_step_end(self, state, policy, out):
            if state.step == 1:
                with torch.no_grad():
                    policy.model.get_output_embeddings().weight.fill_(math.nan)

    loaded = tiny_loaded()
    with pytest.raises(TrainingError, match=r"step 2: loss is nan \(not finite\); weights left at step 1") as info:
        fit_lm(loaded, _stream(loaded.tokenizer), TrainConfig(optimizer="adamw", lr=1e-3, check_every=5),
               mode="full", steps=3, run_folder=tmp_path / "run", checkpoint_every=100, callbacks=[NanAfter()])
    assert "updates of steps 2..3 were skipped" in str(info.value)  # read at the run's end
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["failed_step"] == 2


def test_a_checkpoint_is_never_written_past_a_bad_step(tmp_path):
    loaded = tiny_loaded()
    run_folder = tmp_path / "run"
    with pytest.raises(TrainingError, match="step 3: "):
        fit_lm(loaded, _stream(loaded.tokenizer), TrainConfig(optimizer="adamw", lr=1e-3, check_every=10),
               mode="full", steps=8, run_folder=run_folder, checkpoint_every=2, callbacks=[BlowUpAfter(2)])
    assert json.loads((run_folder / "summary.json").read_text())["last_checkpoint"] == 2


def test_needs_an_optimizer_that_skips_on_the_device():
    param = torch.nn.Parameter(torch.zeros(2))
    assert can_skip_on_device(torch.optim.AdamW([param], fused=True))
    assert not can_skip_on_device(torch.optim.AdamW([param]))
    with pytest.raises(PrefdynError, match="check_every 4 needs an optimizer"):
        DeferredChecks(4, DivergenceGuard(10.0), torch.optim.SGD([param], lr=0.1))
    with pytest.raises(PrefdynError, match="check_every"):
        TrainConfig(check_every=0)


def test_device_rule_equals_the_host_rule():
    host, device = DivergenceGuard(10.0), DivergenceGuard(10.0)
    for loss, margin in [(3.0, 0.0), (30.0, 10.0), (30.01, 0.0), (1.0, 10.5), (0.5, 0.2)]:
        expected = host.check(loss, margin) is not None
        assert bool(device.diverged(torch.tensor(loss), torch.tensor(margin))) == expected
    device.settle()
    assert (device.start_loss, device.start_margin) == (3.0, 0.0)
