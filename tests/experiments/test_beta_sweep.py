import json

import pytest
import yaml

from prefdyn.data import TaskConfig
from prefdyn.errors import PrefdynError
from prefdyn.experiments import (
    DataConfig,
    ExperimentConfig,
    ExperimentResult,
    ModelConfig,
)
from prefdyn.experiments.beta_sweep import (
    beta_folder,
    combine,
    parse_betas,
    run_beta_sweep,
    scalar_outcomes,
    sweep_experiment,
)
from prefdyn.training import TrainConfig


def test_parse_betas():
    assert parse_betas("0.05,0.1,0.5") == [0.05, 0.1, 0.5]
    assert parse_betas("0.5, 0.1,0.5,") == [0.5, 0.1]  # order kept, repeats dropped
    for bad, match in (("0,0.1", "> 0"), ("-1", "> 0"), ("a", "not a number"), ("", "at least one"),
                       ("nan", "> 0")):
        with pytest.raises(PrefdynError, match=match):
            parse_betas(bad)


def _fake(beta: float) -> ExperimentResult:
    return ExperimentResult("fake", "Fake", "", {"beta": beta, "lr": 0.1, "mean_speedup": 2 * beta,
                                                 "flag": True, "per": {"a": 1.0}, "steps": 3})


def test_scalar_outcomes_skip_settings_and_non_scalars():
    assert scalar_outcomes(_fake(0.1).summary) == {"mean_speedup": 0.2}


def test_combine_and_run_folder(tmp_path):
    calls = []

    def run_one(beta, sub):
        calls.append((beta, sub))
        return _fake(beta)

    combined, _, out = run_beta_sweep("lm_misalignment", [0.5, 0.05], run_one, out=tmp_path / "s")
    assert [c[0] for c in calls] == [0.5, 0.05]
    assert [c[1].name for c in calls] == [beta_folder(0.5), beta_folder(0.05)] == ["beta_0.5", "beta_0.05"]
    assert combined.summary["metrics"]["mean_speedup"] == [1.0, 0.1]
    assert combined.summary["key_metrics"] == ["mean_speedup"]
    assert [r["beta"] for r in combined.tables[0][1]] == [0.5, 0.05]
    assert combined.headlines[0][1] == "1.00 / 0.10"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["betas"] == [0.5, 0.05]
    assert (out / "beta_sweep_lm_misalignment.png").read_bytes().startswith(b"\x89PNG")
    html = (out / "report.html").read_text()
    assert "Fake (beta 0.5)" in html and "Fake (beta 0.05)" in html


def test_unchanged_metric_gets_a_note():
    res = combine("x", [0.1, 0.2], [ExperimentResult("x", "X", "", {"m": 1.0})] * 2)
    assert res.notes == ["m did not change with beta."]


@pytest.fixture(scope="module")
def tiny_cfg(tiny_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("sweep-cache")
    return ExperimentConfig(model=ModelConfig(name=str(tiny_model_dir), cache_dir=str(cache)),
                            data=DataConfig(behaviors=["kindness", "patience", "optimism"]),
                            task=TaskConfig(n_per_behavior=12), train=TrainConfig(steps=15))


def test_sweep_last_layer_misalignment(tiny_cfg, tmp_path):
    res, out = sweep_experiment("misalignment", tiny_cfg, [0.05, 0.5], out=tmp_path / "sweep")
    for beta in (0.05, 0.5):
        sub = out / beta_folder(beta)
        assert yaml.safe_load((sub / "config.yaml").read_text())["config"]["train"]["beta"] == beta
        assert json.loads((sub / "summary.json").read_text())["beta"] == beta
    # Reference = start: last-layer misalignment is invariant, at every beta.
    assert res.summary["metrics"]["mean_speedup"] == pytest.approx([1.0, 1.0], abs=1e-4)


def test_sweep_last_layer_distinguishability_is_beta_invariant(tiny_cfg, tmp_path):
    # Gradient descent with the default lr = 1/lambda_max: at the start every margin is 0,
    # so lambda_max scales as beta^2 and lr * beta^2 is the same for every beta; the
    # curves depend on lr * beta^2 only, so the headline number does not move.
    res, _ = sweep_experiment("distinguishability", tiny_cfg, [0.05, 0.5], out=tmp_path / "d")
    a, b = res.summary["metrics"]["spearman_D_loss_decrease"]
    assert a == pytest.approx(b, abs=1e-6)


def test_sweep_rejects_unknown_and_incomplete(tiny_cfg, tmp_path):
    with pytest.raises(PrefdynError, match="unknown experiment 'nope'"):
        sweep_experiment("nope", tiny_cfg, [0.1], out=tmp_path)
    with pytest.raises(PrefdynError, match="LM experiment"):
        sweep_experiment("lm_misalignment", tiny_cfg, [0.1], out=tmp_path)
    with pytest.raises(PrefdynError, match="needs the pairs"):
        sweep_experiment("hh_rlhf", tiny_cfg, [0.1], out=tmp_path)
