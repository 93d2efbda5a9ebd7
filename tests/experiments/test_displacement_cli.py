"""``prefdyn displacement tokens|predictors|mitigation`` through the real entry point."""

import json

import pytest
from typer.testing import CliRunner

from prefdyn.cli.app import app
from prefdyn.data import demo_data_dir

runner = CliRunner()
FILES = ("config.yaml", "environment.json", "metrics.jsonl", "summary.json", "report.html")


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def common(tiny_model_dir, tmp_path):
    return ["--model", tiny_model_dir, "--cache-dir", tmp_path / "cache", "--out", tmp_path, "--lr", "1e-3"]


def _folder(path):
    for name in FILES:
        assert (path / name).is_file(), name
    assert list(path.glob("*.png"))
    return json.loads((path / "summary.json").read_text())


def test_tokens_verb(common, tmp_path):
    syn = tmp_path / "syn.yaml"
    syn.write_text('"yes": ["sure"]\n')
    r = _invoke("displacement", "tokens", *common, "--pairs", "Yes:No", "--steps", "3", "--top-k", "4",
                "--synonyms", syn)
    assert r.exit_code == 0, r.output
    s = _folder(tmp_path / "displacement_tokens")
    assert list(s["pairs"]) == ["Yes>No"] and s["k"] == 4 and s["max_steps"] == 3
    config = (tmp_path / "displacement_tokens" / "config.yaml").read_text()
    assert "preset: quick" in config and "optimizer: adamw" in config  # the preset fills the optimizer
    assert s["lr"] == 1e-3  # ... and a flag wins over the preset's lr
    assert "report:" in r.output


def test_tokens_verb_names_a_multi_token_answer(common):
    r = _invoke("displacement", "tokens", *common, "--pairs", "Yes:Absolutely not", "--steps", "2")
    assert r.exit_code == 2 and "'Absolutely not' is not a single token" in r.output


def test_predictors_verb(common, tmp_path):
    r = _invoke("displacement", "predictors", *common, "--source", "persona", "--data", demo_data_dir(),
                "--behaviors", "kindness,patience", "--n-pairs", "6", "--max-tokens", "100", "--steps", "2",
                "--batch-size", "3")
    assert r.exit_code == 0, r.output
    s = _folder(tmp_path / "displacement_predictors")
    assert s["sources"]["persona"]["pairs"] == 6 and s["steps"] == 2 and s["batch_size"] == 3
    assert set(s["sources"]["persona"]["correlations"]) == {"ches", "ches_normalized", "edit", "hidden"}


def test_mitigation_verb_and_bad_records(common, tmp_path):
    r = _invoke("displacement", "mitigation", *common, "--source", "persona", "--data", demo_data_dir(),
                "--behaviors", "kindness,patience", "--n-train", "8", "--n-eval", "3", "--max-tokens", "100",
                "--top-percent", "25", "--steps", "2")
    assert r.exit_code == 0, r.output
    s = _folder(tmp_path / "displacement_mitigation")
    assert len(s["dropped_top_ches"]) == 2 and s["n_eval"] == 3
    # a pair whose prompt is not a token prefix of prompt+response: an error naming the record
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q: Y", "chosen": "es", "rejected": " No"}) + "\n")
    r = _invoke("displacement", "mitigation", *common, "--pairs-file", bad, "--n-train", "2", "--n-eval", "1")
    assert r.exit_code == 2 and "bad.jsonl:1" in r.output and "prefix" in r.output
