"""``prefdyn lm misalignment | hh-rlhf`` and ``prefdyn sweep`` end to end on a tiny model."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from prefdyn.cli.app import app


@pytest.fixture(scope="module")
def common(tiny_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cli-cache")
    return ["--model", str(tiny_model_dir), "--cache-dir", str(cache)]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_lm_misalignment_lora_uses_the_lora_lr(common, tmp_path):
    r = invoke("lm", "misalignment", *common, "--mode", "lora", "--steps", "2", "--n", "12",
               "--behaviors", "kindness,patience", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    out = tmp_path / "misalignment_lora"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "lora" and summary["lr"] == 5e-4  # the LoRA preset's, not 5e-5
    assert sorted(summary["behaviors"]) == ["kindness", "patience"]
    assert (out / "report.html").is_file() and (out / "misalignment_lora_loss.png").is_file()
    runs = {json.loads(line).get("run") for line in (out / "metrics.jsonl").read_text().splitlines()}
    # each behavior aligned and misaligned in its own runs (Sec. 5.3: "for each behavior")
    assert runs == {f"{phase}_{b}" for b in ("kindness", "patience")
                    for phase in ("align", "flip_from_base", "flip_from_aligned")}


def test_lm_misalignment_explicit_lr_wins(common, tmp_path):
    r = invoke("lm", "misalignment", *common, "--mode", "lora", "--lr", "1e-3", "--steps", "1",
               "--n", "12", "--behaviors", "kindness,patience", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "misalignment_lora" / "summary.json").read_text())["lr"] == 1e-3


def _pairs_file(path):
    prompts = ["Is the following statement something you would say?", "I like to help people.",
               "The quick brown fox jumps over the lazy dog."]
    rows = [{"prompt": prompts[i % 3] + "\n", "chosen": " Yes, I like to help.",
             "rejected": " No." if i % 2 else " The lazy dog."} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lm_hh_rlhf(common, tmp_path):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    r = invoke("lm", "hh-rlhf", "--pairs", pairs, *common, "--n-train", "8", "--n-test", "4",
               "--align-steps", "2", "--flip-steps", "2", "--batch-size", "4", "--max-tokens", "200",
               "--out", tmp_path)
    assert r.exit_code == 0, r.output
    out = tmp_path / "hh_rlhf"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == 8 and summary["preset"]["align_steps"] == 2
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["experiment"]["pairs"] == str(pairs) and config["experiment"]["mode"] == "lora"
    assert config["preset"] == "quick" and config["train"]["batch_size"] == 4
    assert (out / "hh_logp_diff_test.png").is_file()


def test_lm_hh_rlhf_needs_pairs():
    r = invoke("lm", "hh-rlhf")
    assert r.exit_code == 2 and "--pairs" in r.output


def test_sweep_two_points_through_the_harness(common, tmp_path):
    r = invoke("sweep", "misalignment", "train.beta=0.1,1", *common, "--n", "12", "--lr", "0.5",
               "--steps", "5", "--behaviors", "kindness,patience", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    out = tmp_path / "sweep_misalignment"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["points"] == [{"train.beta": "0.1"}, {"train.beta": "1"}]
    for sub in ("beta_0.1", "beta_1"):
        point = json.loads((out / sub / "summary.json").read_text())
        assert point["lr"] == 0.5 and (out / sub / "report.html").is_file()
    assert [json.loads((out / s / "summary.json").read_text())["beta"] for s in ("beta_0.1", "beta_1")] == [0.1, 1.0]
    assert (out / "report.html").is_file() and (out / "sweep_misalignment.png").is_file()


def test_sweep_errors():
    r = invoke("sweep", "nope", "train.beta=0.1")
    assert r.exit_code == 2 and "unknown experiment" in r.output
    r = invoke("sweep", "misalignment", "train.beta=0.1,fast", "--lr", "0.1")
    assert r.exit_code == 2 and "expected float" in r.output
    r = invoke("sweep", "misalignment", "train.bta=0.1")
    assert r.exit_code == 2 and "unknown key train.bta" in r.output
    # last layer at the curvature step size: every beta gives the same curves
    r = invoke("sweep", "distinguishability", "train.beta=0.01,0.1")
    assert r.exit_code == 2 and "lr*beta^2" in r.output
