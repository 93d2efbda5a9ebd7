"""precision="bf16": bf16 matmuls under autocast, fp32 weights and losses, close to fp32."""

import pytest
import torch

from prefdyn.errors import PrefdynError
from prefdyn.policies.lm import LMPolicy
from prefdyn.tracking.callbacks import Callback
from prefdyn.training import TrainConfig
from prefdyn.training.lm_runner import fit_lm
from tests._tiny import tiny_llama, tiny_loaded
from tests.training.test_lm_mechanics import _stream


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_step_end(self, state, policy, out):
        self.losses.append(float(out.loss))


def _run(precision: str, steps: int = 4):
    loaded, record = tiny_loaded(init_std=0.02), Losses()
    fit_lm(loaded, _stream(loaded.tokenizer), TrainConfig(optimizer="adamw", lr=1e-2, precision=precision),
           mode="full", steps=steps, callbacks=[record])
    return loaded.model, record.losses


def test_bf16_run_stays_close_to_fp32_and_keeps_fp32_weights():
    _, fp32 = _run("fp32")
    bf16_model, bf16 = _run("bf16")
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]  # both learn
    rel = max(abs(a - b) / abs(b) for a, b in zip(bf16, fp32))
    assert 0 < rel < 2e-2  # bf16 round-off (8 mantissa bits), not another run


def test_policy_log_probs_are_fp32_under_autocast():
    loaded = tiny_loaded()
    batch = next(_stream(loaded.tokenizer))
    plain = LMPolicy(tiny_llama()).pair(batch)
    mixed = LMPolicy(tiny_llama(), autocast=torch.bfloat16).pair(batch)
    for got, want in zip(mixed, plain):
        assert got.dtype == torch.float32
        assert not torch.equal(got, want)
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2)


def test_config_validates_precision():
    assert TrainConfig(precision="bf16").autocast_dtype is torch.bfloat16
    assert TrainConfig().autocast_dtype is None
    with pytest.raises(PrefdynError, match="precision"):
        TrainConfig(precision="fp16")
