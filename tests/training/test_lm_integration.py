"""A few DPO steps of each LM mode on the real embedded model (SmolLM2-135M-Instruct)."""

import json

import pytest
import torch

from prefdyn.data import TaskConfig, build_behavior, load_demo
from prefdyn.models import answer_token_ids
from prefdyn.training import TrainConfig
from prefdyn.training.lm_data import answer_batches
from prefdyn.training.lm_runner import fit_lm

pytestmark = pytest.mark.integration


def _stream(loaded, batch_size=4):
    behavior = build_behavior("kindness", load_demo(["kindness"])["kindness"], loaded.tokenizer,
                              TaskConfig(n_per_behavior=4, test_fraction=0.0))
    yes_id, no_id = answer_token_ids(loaded.tokenizer, behavior.answers)
    return answer_batches(behavior, loaded.tokenizer, yes_id, no_id, batch_size=batch_size, seed=0)


def test_full_mode_steps_on_the_embedded_model(tmp_path):
    from prefdyn.models import load_model

    loaded = load_model()
    run = fit_lm(loaded, _stream(loaded, batch_size=2), TrainConfig(optimizer="adamw", lr=1e-5, grad_accum=2),
                 mode="full", steps=1, run_folder=tmp_path)
    records = run.history.records
    assert [r["step"] for r in records] == [1]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # pi = pi_ref at step 1
    # SmolLM2 ties W_U to the input embedding; full mode moves it
    assert records[-1]["delta_W_U"] > 0 and records[-1]["drift/layer_00"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def test_lora_mode_resumes_on_the_embedded_model(tmp_path):
    from prefdyn.models import load_model

    cfg = TrainConfig(optimizer="adamw", lr=1e-4, log_every=1)
    loaded = load_model()
    fit_lm(loaded, _stream(loaded, batch_size=2), cfg, mode="lora", steps=1, run_folder=tmp_path)
    loaded = load_model()  # a fresh process would load it again
    run = fit_lm(loaded, _stream(loaded, batch_size=2), cfg, mode="lora", steps=2, run_folder=tmp_path)
    assert [r["step"] for r in run.history.records] == [1, 2]  # step 1 read back, step 2 new
    assert run.history.records[-1]["delta_W_U"] == 0.0  # LoRA leaves W_U alone
    lora_B = [p for n, p in run.policy.model.named_parameters() if "lora_B" in n]
    assert lora_B and any(p.abs().sum() > 0 for p in lora_B)
