import json
import math

import pytest
import torch

from prefdyn.experiments import (ExperimentConfig, Resources, get_spec, run_diagnostics,
                                 run_distinguishability, run_misalignment, run_priority, run_spec)
from prefdyn.experiments.priority import highest_gap_pair
from prefdyn.training import TrainConfig

CFG = TrainConfig(steps=30, log_every=1, eval_every=5)


def test_workspace_shapes_and_true_log_probs(tiny_workspace):
    ws = tiny_workspace
    assert len(ws.names) >= 6
    for b, e, lse in zip(ws.behaviors, ws.embeddings, ws.other_lse):
        assert e.shape == (b.n, ws.d) and lse.shape == (b.n,)
    # With the frozen rows' logsumexp, the policy's log-probs are the model's own.
    data = ws.problems([0], split="all")
    from prefdyn.policies import LastLayerPolicy
    yes, _ = LastLayerPolicy(ws.W_answers, 1).answer_logps(data)
    assert torch.all(yes < 0) and torch.isfinite(yes).all()


def test_distinguishability_reports_rank_correlations(tiny_workspace):
    res = run_distinguishability(tiny_workspace, CFG)
    s = res.summary
    assert set(s["D"]) == set(tiny_workspace.names)
    assert -1 <= s["spearman_D_loss_decrease"] <= 1
    assert all(v > 0 for v in s["loss_decrease"].values())
    assert {f.name for f in res.figures} >= {"fig3_loss_by_distinguishability", "fig4_weight_change_vs_bound"}
    # The bound is a line through the origin in t; the measured change starts at 0.
    assert all(f.png.startswith(b"\x89PNG") for f in res.figures)


def test_priority_pair_names_a_winner(tiny_workspace):
    pair = highest_gap_pair(tiny_workspace)
    res = run_priority(tiny_workspace, CFG, which=pair)
    assert res.summary["higher_priority"] in res.summary["behaviors"]
    assert isinstance(res.summary["prediction_holds"], bool)
    full = run_priority(tiny_workspace, CFG)
    assert "spearman_projection_auc" in full.summary


def test_misalignment_with_start_reference_is_invariant(tiny_workspace):
    # Last-layer DPO depends on W only through W - W_ref: from the base or from the
    # aligned start, the flipped-label runs coincide (speed-up 1).
    res = run_misalignment(tiny_workspace, CFG, which=[0, 1])
    for v in res.summary["speedup"].values():
        assert v == pytest.approx(1.0, abs=1e-4)


def test_diagnostics_rank_every_behavior(tiny_workspace):
    res = run_diagnostics(tiny_workspace, CFG)
    rows = res.tables[0][1]
    assert [r["rank"] for r in rows] == list(range(1, len(tiny_workspace.names) + 1))
    assert res.summary["lr"] > 0


def _run(name, cfg, ws):
    """``name`` through the harness on the test's workspace."""
    resources = Resources()
    resources.add_workspace(cfg, ws)
    return run_spec(get_spec(name), cfg, resources=resources)


def test_run_folder_has_everything(tiny_workspace, tmp_path):
    cfg = ExperimentConfig(train=CFG, out=str(tmp_path))
    res, out = _run("distinguishability", cfg, tiny_workspace)
    for name in ("config.yaml", "environment.json", "metrics.jsonl", "summary.json", "report.html",
                 "fig3_loss_by_distinguishability.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "distinguishability"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["step"] == 0 and math.isclose(first["loss"], math.log(2), rel_tol=1e-5)
    env = json.loads((out / "environment.json").read_text())
    assert env["packages"]["torch"]


def test_training_all_rows_gives_the_answer_rows_dynamics(tiny_workspace):
    which = [0, 1]
    cfg = TrainConfig(steps=10, lr=0.05)
    answers = tiny_workspace.fit(tiny_workspace.problems(which), cfg, names=["a", "b"])
    all_rows = tiny_workspace.fit(tiny_workspace.problems(which),
                                  TrainConfig(steps=10, lr=0.05, rows="all"), names=["a", "b"])
    for name in ("a", "b"):
        assert answers.history.curves("loss")[1][name] == pytest.approx(
            all_rows.history.curves("loss")[1][name], abs=1e-5)
    yes, no = tiny_workspace.answer_ids
    torch.testing.assert_close(all_rows.policy.W[:, [yes, no]], answers.policy.W, atol=1e-5, rtol=1e-5)


def test_nan_keeps_metrics_and_names_the_step(tiny_workspace, tmp_path):
    from prefdyn.errors import TrainingError
    cfg = ExperimentConfig(train=TrainConfig(steps=50, lr=float("inf")), out=str(tmp_path))
    with pytest.raises(TrainingError, match=r"step \d+"):
        _run("distinguishability", cfg, tiny_workspace)
    out = tmp_path / "distinguishability"
    assert json.loads((out / "summary.json").read_text())["failed_at_step"] >= 1
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["step"] == 0
