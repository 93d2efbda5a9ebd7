"""Activation checkpointing: the same run, with the layers recomputed in the backward."""

import pytest
import torch
from torch import nn

from prefdyn.errors import PrefdynError, TrainingError
from prefdyn.tracking.callbacks import Callback
from prefdyn.training import TrainConfig
from prefdyn.training.lm_runner import fit_lm
from prefdyn.training.recompute import recomputed_activations
from prefdyn.training.rl_runner import fit_rl
from tests._tiny import tiny_loaded
from tests.training.test_lm_mechanics import _stream
from tests.training.test_rl_resume import _bandit_setup


class LayersRecompute(Callback):
    """Whether the decoder layers were set to checkpoint at every step."""

    def __init__(self, model: nn.Module):
        self.layers, self.seen = model.model.layers, []

    def on_step_end(self, state, policy, out):
        self.seen.append(all(layer.gradient_checkpointing for layer in self.layers))


def _lm_run(on: bool):
    loaded = tiny_loaded()
    probe = LayersRecompute(loaded.model)
    run = fit_lm(loaded, _stream(loaded.tokenizer), mode="full", steps=3, callbacks=[probe],
                 cfg=TrainConfig(optimizer="adamw", lr=1e-3, activation_checkpointing=on))
    return run, probe, loaded.model


def test_an_lm_run_recomputes_its_layers_and_trains_as_without():
    plain, plain_probe, _ = _lm_run(False)
    ckpt, ckpt_probe, model = _lm_run(True)
    assert plain_probe.seen == [False] * 3 and ckpt_probe.seen == [True] * 3
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)  # off after
    for a, b in zip(plain.history.records, ckpt.history.records):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7)
    for p, q in zip(plain.policy.model.parameters(), ckpt.policy.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_an_rl_run_recomputes_its_layers_and_trains_as_without():
    runs = []
    for on in (False, True):
        model, policy, stream = _bandit_setup()
        probe = LayersRecompute(model)
        cfg = TrainConfig(loss="rloo", optimizer="sgd", lr=0.1, steps=2, activation_checkpointing=on)
        runs.append(fit_rl(model, policy, stream, cfg, loss_kwargs={"beta": 0.0}, callbacks=[probe]))
        assert probe.seen == [on] * 2
    for a, b in zip(*(r.history.records for r in runs)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7)


def test_a_model_without_support_and_a_non_bool_setting_are_clear_errors():
    with pytest.raises(TrainingError, match="does not support"):
        with recomputed_activations(nn.Linear(2, 2)):
            pass
    with pytest.raises(PrefdynError, match="true or false"):
        TrainConfig(activation_checkpointing="yes")
