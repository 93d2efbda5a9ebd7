"""The vanishing-gradient experiments' phases run through the resumable RL runner (the
same command run again restores them), and the ``hh`` RL task on an HH-format file."""

import json
import logging
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from prefdyn.experiments._rl_task import build_rl_task
from prefdyn.experiments.configure import resolve_config
from prefdyn.experiments.harness import run_spec
from prefdyn.experiments.registry import get_spec
from prefdyn.tracking.run_dir import read_metrics
from tests._tiny import tiny_tokenizer
from tests.data._helpers import write_lines
from tests.experiments.test_rl_experiments import TINY


def test_a_rerun_restores_the_finished_phase_and_gives_the_same_result(tiny_model_dir, tmp_path,
                                                                      caplog):
    spec = get_spec("rl gain")
    cfg = resolve_config(spec, preset="quick", sets=[f"model.name={tiny_model_dir}",
                                                     f"out={tmp_path}", *TINY, "experiment.n_bins=2"])
    first, out = run_spec(spec, cfg)
    (phase,) = (out / "runs").iterdir()
    assert phase.name.startswith("rft-")
    assert json.loads((phase / "summary.json").read_text())["status"] == "finished"
    assert (phase / "checkpoints" / "latest").read_text() == "step_00000002"
    kept = sorted(p.name for p in (phase / "checkpoints" / "step_00000002").iterdir())
    assert "model.safetensors" in kept and not any(n.startswith("optimizer") for n in kept)
    before = read_metrics(out / "metrics.jsonl")
    with caplog.at_level(logging.INFO, logger="prefdyn.training.lm_resume"):
        again, _ = run_spec(spec, cfg)
    assert any("resuming" in r.message for r in caplog.records)  # not trained a second time
    assert [p.name for p in (out / "runs").iterdir()] == [phase.name]
    drop = ("seconds",)  # the phase's wall time: a restored phase takes none
    assert ({k: v for k, v in again.summary.items() if k not in drop}
            == {k: v for k, v in first.summary.items() if k not in drop})
    assert read_metrics(out / "metrics.jsonl") == before  # steps 1-2 and the spreads at 0, 2
    assert {r["step"] for r in before if r["split"] == "test"} == {0, 2}


def test_a_changed_setting_trains_in_a_fresh_phase_folder(tiny_model_dir, tmp_path):
    spec = get_spec("rl gain")
    for lr in ("1e-3", "2e-3"):
        run_spec(spec, resolve_config(spec, preset="quick", sets=[
            f"model.name={tiny_model_dir}", f"out={tmp_path}", *TINY, f"train.lr={lr}"]))
    assert len(list((tmp_path / "rl_gain" / "runs").iterdir())) == 2


def _hh(i: int) -> str:
    head = f"\n\nHuman: What is {i} plus {i}?\n\nAssistant:"
    return json.dumps({"chosen": f"{head} It is {2 * i}.", "rejected": f"{head} No idea."})


@pytest.fixture
def hh_file(tmp_path):
    return write_lines(tmp_path / "hh.jsonl", [_hh(i) for i in range(15)])


def test_census_on_the_hh_task(tiny_model_dir, tmp_path, hh_file):
    from prefdyn.cli.app import app

    sets = [*TINY, f"data.path={hh_file}", "experiment.task=hh", "experiment.compare=",
            "experiment.group_size=2", "experiment.max_new_tokens=3"]
    result = CliRunner().invoke(app, ["rl", "census", "--model", str(tiny_model_dir), "--out",
                                      str(tmp_path / "runs"),
                                      *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs" / "rl_census" / "summary.json").read_text())
    (stats,) = summary["tasks"].values()
    assert list(summary["tasks"]) == ["hh / rouge_l"]
    # 15 dialogues, 3 held out (test_fraction 0.2), 8 train inputs drawn
    assert stats["train"]["inputs"] == 8 and stats["held-out"]["inputs"] == 3


def test_rft_on_the_hh_task_references_the_chosen_responses(tiny_model_dir, tmp_path, hh_file):
    spec = get_spec("rl gain")
    cfg = resolve_config(spec, preset="quick", sets=[
        f"model.name={tiny_model_dir}", f"out={tmp_path}", *TINY, f"data.path={hh_file}",
        "experiment.task=hh", "train.loss=rloo", "experiment.group_size=2",
        "experiment.max_new_tokens=3", "experiment.n_bins=2"])
    res, out = run_spec(spec, cfg)
    assert res.summary["steps"] == 2
    steps = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2] and all("frac_reward_zero_std" in r for r in steps)

    task = build_rl_task(cfg, SimpleNamespace(tokenizer=tiny_tokenizer()), cfg.experiment)
    row = int(task.train_rows[0])
    n = int(task.prompts[row].split()[3])
    assert task.references[row] == f"It is {2 * n}." and task.prompts[row].endswith("Assistant:")
