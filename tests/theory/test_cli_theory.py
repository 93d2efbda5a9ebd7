"""``prefdyn theory ...``: every verb end to end, writing the usual run folder."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from prefdyn.cli.app import app

RUN_FILES = {"config.yaml", "environment.json", "metrics.jsonl", "summary.json", "report.html"}


def _invoke(*args: str):
    result = CliRunner().invoke(app, ["theory", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _check_run(folder, experiment: str) -> dict:
    names = {p.name for p in folder.iterdir()}
    assert RUN_FILES <= names and any(n.endswith(".png") for n in names)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["experiment"] == experiment
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["seed"] == 3 and config["preset"] == "default" and "train" in config
    assert "<img" in (folder / "report.html").read_text()
    return summary


def test_grid_command(tmp_path):
    _invoke("grid", "--ds", "8,16", "--deltas", "0.2,0.5", "--alphas", "2,1", "--samples", "200",
            "--test-samples", "100", "--steps", "20", "--paper-d", "0", "--seed", "3", "--out", str(tmp_path))
    summary = _check_run(tmp_path / "theory_grid", "theory_grid")
    assert "Theorem 4.1 bound, outside the theorem" in (tmp_path / "theory_grid" / "report.html").read_text()
    assert summary["points"] == 8 and summary["share_holds"]["4.1"] == 1.0
    assert summary["a3_max_abs_error"] < 1e-12
    assert summary["grid"]["ds"] == [8, 16]
    # The curvature step breaks beta'^2 eta c_n^2 <= 1/4: every verdict is outside the hypotheses.
    assert summary["step_rule"] == "curvature" and summary["theorem41_step_product"][0] > 0.25
    assert summary["theorem41_verdicts"]["holds outside the hypotheses"] == 8
    assert summary["paper_regime"] is None
    assert "not tested" in (tmp_path / "theory_grid" / "report.html").read_text()


def test_grid_paper_step_rule_and_paper_regime_point(tmp_path):
    _invoke("grid", "--ds", "16", "--deltas", "0.2,0.6", "--alphas", "2", "--samples", "200",
            "--test-samples", "100", "--steps", "20", "--step-rule", "paper", "--seed", "3", "--out", str(tmp_path))
    html = (tmp_path / "theory_grid" / "report.html").read_text()
    assert "holds at 1 / 1" in html and "Theorem 4.2 (paper)" in html
    summary = json.loads((tmp_path / "theory_grid" / "summary.json").read_text())
    assert summary["step_rule"] == "paper"
    # eta = min over the points of 1 / (4 beta'^2 c_n^2): the product is 1/4 at one point, below at the other.
    assert summary["theorem41_step_product"][1] == pytest.approx(0.25)
    # Delta = 0.2 meets every hypothesis, Delta = 0.6 > 1/2 does not: both verdict classes.
    verdicts = {r["Delta"]: r["4.1 verdict"] for r in summary["per_point"]}
    assert verdicts == {0.2: "holds, hypotheses met", 0.6: "holds outside the hypotheses"}
    paper = summary["paper_regime"]  # d = 4096, Delta < 0: the v-range is not empty
    assert paper["d"] == 4096 and paper["v_range"][0] <= paper["v"] <= paper["v_range"][1]
    assert all(paper["theorem42"]["conditions"].values())
    assert paper["theorem42"]["verdict"] == "holds, hypotheses met"
    assert paper["theorem42"]["final_cosine"] >= paper["theorem42"]["final_bound"]
    assert paper["theorem43"]["proof_eq36"]["verdict"] == "holds, hypotheses met"
    assert paper["theorem43"]["printed"]["p"] == 0.0  # vacuous as printed
    assert paper["step_product"] <= 0.25


def test_grid_rejects_an_unknown_step_rule(tmp_path):
    result = CliRunner().invoke(app, ["theory", "grid", "--step-rule", "adam", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "step_rule" in result.output


def test_grid_lr_is_one_eta_for_every_point(tmp_path):
    _invoke("grid", "--ds", "8,32", "--deltas", "0.3", "--alphas", "2", "--samples", "100", "--test-samples", "50",
            "--steps", "5", "--lr", "0.05", "--seed", "3", "--out", str(tmp_path))
    summary = json.loads((tmp_path / "theory_grid" / "summary.json").read_text())
    assert summary["lr_rule"] == "given"


def test_scaling_synthetic_command(tmp_path):
    _invoke("scaling", "--ks", "1,2,4", "--qs", "4,16", "--dim", "16", "--steps", "30", "--seed", "3",
            "--out", str(tmp_path))
    summary = _check_run(tmp_path / "theory_scaling_synthetic", "theory_scaling")
    assert summary["Ks"] == [1, 2, 4] and summary["Qs"] == [4, 16] and len(summary["cells"]) == 6
    config = yaml.safe_load((tmp_path / "theory_scaling_synthetic" / "config.yaml").read_text())
    assert config["train"]["lr_safety"] == 0.1  # the synthetic default
    assert config["experiment"]["ks"] == [1, 2, 4] and config["experiment"]["source"] == "synthetic"


@pytest.mark.parametrize("args", [["grid", "--alphas", "3"], ["grid", "--ds", "a,b"],
                                  ["scaling", "--source", "web"], ["scaling", "--ks", "0"]])
def test_bad_input_is_one_red_line(args, tmp_path):
    result = CliRunner().invoke(app, ["theory", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "error" in result.output


def test_through_the_main_entry_point(tmp_path):
    """By subprocess, the installed ``prefdyn`` script (or ``python -m prefdyn``)."""
    cmd = [shutil.which("prefdyn")] if shutil.which("prefdyn") else [sys.executable, "-m", "prefdyn"]
    done = subprocess.run([*cmd, "theory", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "grid" in done.stdout and "scaling" in done.stdout
    done = subprocess.run([*cmd, "theory", "grid", "--ds", "8", "--deltas", "0.3", "--alphas", "2", "--samples", "64",
                           "--test-samples", "32", "--steps", "5", "--seed", "3", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _check_run(tmp_path / "theory_grid", "theory_grid")


@pytest.mark.integration
def test_real_command_on_demo_data(tmp_path):
    _invoke("real", "--steps", "20", "--seed", "3", "--out", str(tmp_path))
    summary = _check_run(tmp_path / "theory_real", "theory_real")
    assert len(summary["behaviors"]) == 8 and summary["a3_max_abs_error"] < 1e-9
    assert set(summary["assumption_share"]) >= {"balanced", "centered", "subexponential_tails"}
    rows = summary["paper_quantities"]
    assert [r["behavior"] for r in rows] == summary["behaviors"]
    assert {"c_n (Tr(Sigma)^1/2)", "beta'^2 eta c_n^2", "Delta", "v-range empty", "4.2 horizon (c_n^2)",
            "4.2 horizon (c'_n)"} <= set(rows[0])
    assert sum(summary["theorem41_verdicts"].values()) == 8


@pytest.mark.integration
def test_scaling_persona_command_on_demo_data(tmp_path):
    _invoke("scaling", "--source", "persona", "--steps", "20", "--seed", "3", "--out", str(tmp_path))
    summary = _check_run(tmp_path / "theory_scaling_persona", "theory_scaling")
    assert summary["Ks"] == [1, 2, 4, 8]  # the demo data has 8 behaviors
    config = yaml.safe_load((tmp_path / "theory_scaling_persona" / "config.yaml").read_text())
    assert config["train"]["lr_safety"] == 1.0
    assert summary["cluster_structure"]["within_centered"] > summary["cluster_structure"]["between_centered"]
