"""The six vanishing-gradient experiments end to end on a tiny model (seconds), through the
one harness (run folder, metrics.jsonl, report), and their helpers by hand."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from prefdyn.errors import PrefdynError
from prefdyn.experiments._rl_runs import RLParams, std_bins
from prefdyn.experiments._rl_task import available_rl_tasks
from prefdyn.experiments.configure import resolve_config
from prefdyn.experiments.harness import run_spec
from prefdyn.experiments.registry import get_spec
from prefdyn.experiments.rl_prevalence import split_by_std
from prefdyn.experiments.rl_theorem import envelope_constant, loglog_fit
from prefdyn.experiments.rl_warm_start import WarmStartParams, variants
from prefdyn.tracking.run_dir import read_metrics

TINY = ["task.n_per_behavior=4", "data.behaviors=kindness,patience,optimism,curiosity",
        "train.steps=2", "train.eval_every=2", "train.lr=1e-3", "train.batch_size=4",
        "experiment.train_inputs=8", "experiment.test_inputs=4"]


def _run(name, tiny_model_dir, tmp_path, *sets):
    spec = get_spec(name)
    cfg = resolve_config(spec, preset="quick",
                         sets=[f"model.name={tiny_model_dir}", f"out={tmp_path}", *TINY, *sets])
    result, out = run_spec(spec, cfg)
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    assert all((out / f"{f.name}.png").is_file() for f in result.figures) and result.figures
    return result, out


def test_census_flags_match_the_per_input_records(tiny_model_dir, tmp_path):
    res, out = _run("rl census", tiny_model_dir, tmp_path, "experiment.max_new_tokens=3",
                    "experiment.group_size=4", "experiment.compare=persona_completion:rouge_l")
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert {r["problem"] for r in records} == set(res.summary["tasks"])
    for r in records:
        std, mean = np.array(r["per_input"]["std"]), np.array(r["per_input"]["mean"])
        stats = res.summary["tasks"][r["problem"]]["train"]
        low = 0.0 if r["exact"] else 0.5  # the middle of +-1 and of ROUGE-L's [0, 1]
        assert stats["small_std_and_low_reward"] == int(((std < 0.1) & (mean < low)).sum())
        assert stats["inputs"] == 8 and len(std) == 8
    bandit = res.summary["tasks"]["persona_bandit / persona"]["train"]
    assert bandit["exact"] and bandit["pred_frac_reward_zero_std"] is not None


def test_gain_bins_are_the_initial_std_quantiles(tiny_model_dir, tmp_path):
    res, out = _run("rl gain", tiny_model_dir, tmp_path, "experiment.n_bins=2")
    train = res.summary["splits"]["train"]
    assert len(train["bins"]) == 2 and train["bin_std"][0] <= train["bin_std"][1]
    steps = sorted({r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "test"})
    assert steps == [0, 2]
    assert isinstance(res.summary["finding_ii_holds_held_out"], bool)


def test_theorem_checks_the_derived_logit_bound(tiny_model_dir, tmp_path):
    res, _ = _run("rl theorem", tiny_model_dir, tmp_path, "experiment.grad_inputs=3")
    s = res.summary
    assert s["points"] == 2 * 2 * 3  # 2 splits x 2 checkpoints (steps 0, 2) x 3 inputs
    assert s["logit_bound_violations"] == 0 and s["logit_bound_above_std"] == 0
    assert np.isfinite(s["slope"]) and s["theorem_exponent"] == pytest.approx(2 / 3)


def test_prevalence_mixes_have_the_asked_share(tiny_model_dir, tmp_path):
    res, _ = _run("rl prevalence", tiny_model_dir, tmp_path, "experiment.mix_size=2")
    mixes = res.summary["mixes"]
    assert [mixes[f"share_{s:g}"]["small_std_inputs"] for s in (0.0, 0.5, 1.0)] == [0, 1, 2]
    assert all(m["inputs"] == 2 for m in mixes.values())


def test_heuristics_runs_each_change_once(tiny_model_dir, tmp_path):
    res, out = _run("rl heuristics", tiny_model_dir, tmp_path)
    assert set(res.summary["runs"]) == {"baseline", "lr x10", "temperature 2", "entropy 0.01"}
    problems = {r["problem"] for r in read_metrics(out / "metrics.jsonl")}
    assert {"baseline", "lr_x10", "temperature_2", "entropy_0.01"} <= problems


def test_warm_start_variants_and_small_std_counts(tiny_model_dir, tmp_path):
    res, _ = _run("rl warm-start", tiny_model_dir, tmp_path, "experiment.sft_steps=2",
                  "experiment.step_fractions=0.5,1.0")
    v = res.summary["variants"]
    assert list(v) == ["no SFT", "full SFT", "1% labels, 50% steps", "1% labels, 100% steps"]
    assert v["full SFT"]["labels"] == 8 and v["1% labels, 50% steps"]["labels"] == 1
    assert v["no SFT"]["small_std_train_after_sft"] == v["no SFT"]["small_std_train_before_sft"]
    assert len({x["small_std_train_before_sft"] for x in v.values()}) == 1  # one base model


def test_sampled_rft_on_the_completion_task(tiny_model_dir, tmp_path):
    res, out = _run("rl gain", tiny_model_dir, tmp_path, "experiment.task=persona_completion",
                    "train.loss=rloo", "experiment.group_size=2", "experiment.max_new_tokens=3",
                    "experiment.n_bins=2")
    assert res.summary["steps"] == 2
    steps = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(0 <= r["frac_reward_zero_std"] <= 1 for r in steps)  # what GRPO trainers log


def test_the_cli_verb_runs_a_spec(tiny_model_dir, tmp_path):
    from prefdyn.cli.app import app

    result = CliRunner().invoke(app, ["rl", "census", "--model", str(tiny_model_dir), "--out",
                                      str(tmp_path), "--set", "experiment.compare=",
                                      *[a for s in TINY for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "rl_census" / "summary.json").read_text())
    assert list(summary["tasks"]) == ["persona_bandit / persona"]


def test_std_bins_by_hand():
    idx, labels = std_bins(torch.tensor([0.4, 0.1, 0.3, 0.2]), 2)
    assert idx.tolist() == [1, 0, 1, 0] and labels == ["0.1-0.2", "0.3-0.4"]


def test_loglog_fit_and_envelope_by_hand():
    std = np.array([0.01, 0.1, 1.0])
    slope, intercept, n = loglog_fit(std, 3 * std ** 2)
    assert slope == pytest.approx(2) and np.exp(intercept) == pytest.approx(3) and n == 3
    # max of 3 std^2 / std^(2/3) = 3 std^(4/3) is at std = 1
    assert envelope_constant(std, 3 * std ** 2) == pytest.approx(3)


def test_split_by_std_falls_back_to_the_median():
    rows, std = torch.arange(4), torch.tensor([0.01, 0.02, 0.03, 0.04])
    small, rest, threshold, how = split_by_std(rows, std, 0.1)
    assert small.tolist() == [0, 1] and rest.tolist() == [2, 3] and "median" in how
    small, rest, threshold, _ = split_by_std(rows, std, 0.025)
    assert small.tolist() == [0, 1] and threshold == 0.025


def test_warm_start_variant_steps():
    v = variants(WarmStartParams(sft_steps=10, step_fractions=(0.1, 0.4)))
    assert v == {"no SFT": (0.0, 0), "full SFT": (1.0, 10), "1% labels, 10% steps": (0.01, 1),
                 "1% labels, 40% steps": (0.01, 4)}


def test_params_and_tasks_fail_clearly():
    with pytest.raises(PrefdynError, match="group_size"):
        RLParams(group_size=1)
    assert {"persona_bandit", "persona_bandit_formats", "persona_completion"} <= set(available_rl_tasks())


def test_diagnose_gains_a_reward_spread_table(tiny_model_dir, tmp_path):
    spec = get_spec("diagnose")
    cfg = resolve_config(spec, sets=[f"model.name={tiny_model_dir}", f"model.cache_dir={tmp_path}",
                                     f"out={tmp_path}", "task.n_per_behavior=8", "task.test_fraction=0.0",
                                     "data.behaviors=kindness,patience", "experiment.reward=persona",
                                     "experiment.reward_k=3"])
    result, _ = run_spec(spec, cfg)
    spread = result.summary["reward_spread"]
    assert spread["reward"] == "persona" and set(spread["behaviors"]) == {"kindness", "patience"}
    for stats in spread["behaviors"].values():
        assert stats["prompts"] == 8 and -1 <= stats["mean reward"] <= 1
        assert 0 <= stats["p^k+(1-p)^k"] <= 1  # the exact bandit's success rate gives a prediction
    assert any("Reward spread per behavior" in caption for caption, _ in result.tables)
    plain, _ = run_spec(spec, resolve_config(spec, sets=[f"model.name={tiny_model_dir}",
                                                         f"model.cache_dir={tmp_path}", f"out={tmp_path / 'p'}",
                                                         "task.n_per_behavior=8", "task.test_fraction=0.0",
                                                         "data.behaviors=kindness,patience"]))
    assert "reward_spread" not in plain.summary
