import json

import pytest
from typer.testing import CliRunner

from prefdyn.cli.app import app

COMMON = ["--behaviors", "kindness,curiosity,optimism", "--n", "12", "--steps", "2",
          "--batch-size", "4"]


@pytest.mark.parametrize("verb, extra, name", [
    ("distinguishability", [], "lm_distinguishability"),
    ("priority", ["--mode", "lora"], "lm_priority"),
    ("distribution", ["--projections", "pca"], "distribution_change"),
])
def test_lm_verbs_end_to_end(tiny_model_dir, tmp_path, verb, extra, name):
    result = CliRunner().invoke(app, ["lm", verb, "--preset", "quick", "--model", str(tiny_model_dir),
                                      "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
                                      *COMMON, *extra])
    assert result.exit_code == 0, result.output
    run = tmp_path / name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["experiment"] == name
    assert summary["mode"] == ("lora" if "lora" in extra else "full")
    assert (run / "report.html").is_file() and (run / "metrics.jsonl").stat().st_size > 0


def test_lm_bad_preset_and_mode_are_one_line_errors(tiny_model_dir, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["lm", "distinguishability", "--preset", "fast"])
    assert bad.exit_code == 2 and "choose from" in bad.output
    bad = runner.invoke(app, ["lm", "priority", "--mode", "half"])
    assert bad.exit_code == 2 and "--mode" in bad.output
    bad = runner.invoke(app, ["lm", "distribution", "--projections", "tsne"])
    assert bad.exit_code == 2 and "tsne" in bad.output
