import dataclasses
import math

import pytest
import torch

from prefdyn.diagnostics import priority_gap_matrix
from prefdyn.errors import PrefdynError
from prefdyn.experiments.distribution_change import run_distribution_change
from prefdyn.experiments.lm_common import LAST, LMParams
from prefdyn.experiments.lm_distinguishability import base_D, run_lm_distinguishability
from prefdyn.experiments.lm_priority import lowest_gap_pair, run_lm_priority
from prefdyn.experiments.priority import highest_gap_pair
from prefdyn.tracking import class_mean_difference
from prefdyn.training import TrainConfig
from tests._tiny import tiny_loaded

TINY = LMParams(eval_rows=4, probe_rows=8, n_behaviors=3, snapshot_steps=(0, LAST))
TRAIN = TrainConfig(steps=4, batch_size=4, lr=1e-2, eval_every=2, optimizer="adamw")


def test_lm_distinguishability(tiny_workspace):
    # every train row evaluated, a moderate lr: the measured loss decrease is not sampling noise
    preset = dataclasses.replace(TINY, eval_rows=None)
    res = run_lm_distinguishability(tiny_workspace, dataclasses.replace(TRAIN, lr=3e-3), loaded=tiny_loaded(),
                                    preset=preset)
    s = res.summary
    assert len(s["behaviors"]) == 3
    D = [s["D"][n] for n in s["behaviors"]]
    assert D == sorted(D)  # picked lowest D first, spread over the range
    assert -1 <= s["spearman_D_loss_decrease"] <= 1
    assert sum(s["loss_decrease"].values()) > 0  # the train rows are being learned
    assert {f.name for f in res.figures} >= {"fig6_loss_by_distinguishability",
                                             "layer_drift_by_distinguishability"}
    assert all(v > 0 for d in s["final_layer_drift"].values() for v in d.values())


def test_lowest_gap_pair_is_the_smallest_off_diagonal_gap(tiny_workspace):
    ws = tiny_workspace
    per = ws.problems()
    gaps = priority_gap_matrix(class_mean_difference(per).double(), per.mask.sum(1).double()).proj_gap
    i, j = lowest_gap_pair(ws)
    assert i != j
    off = [abs(float(gaps[a, b])) for a in range(len(ws.names)) for b in range(len(ws.names)) if a != b]
    assert abs(float(gaps[i, j])) == pytest.approx(min(off))
    hi = highest_gap_pair(ws)
    assert abs(float(gaps[hi[0], hi[1]])) > abs(float(gaps[i, j]))


def test_lm_priority_two_pairs(tiny_workspace):
    res = run_lm_priority(tiny_workspace, TRAIN, loaded=tiny_loaded(), preset=TINY)
    pairs = res.summary["pairs"]
    assert set(pairs) == {"high gap", "low gap"}
    assert pairs["high gap"]["projection_gap"] > pairs["low gap"]["projection_gap"]
    for p in pairs.values():
        assert p["higher_priority"] in p["behaviors"] and isinstance(p["prediction_holds"], bool)
    assert res.figures[0].name == "fig7_priority_pairs"


@pytest.mark.parametrize("per_behavior", [True, False])
def test_distribution_change_before_is_the_base_model(tiny_workspace, per_behavior):
    from prefdyn.experiments.distribution_change import DistributionParams

    ws = tiny_workspace
    preset = DistributionParams(**dataclasses.asdict(TINY), per_behavior=per_behavior)
    res = run_distribution_change(ws, TRAIN, loaded=tiny_loaded(), preset=preset,
                                  which=[0, 1], projections=("pca",))
    s, ch = res.summary, res.summary["change"]
    assert set(ch) == set(ws.names[:2]) and s["per_behavior"] is per_behavior
    # one run per behavior (the paper's protocol), or one joint run of both
    assert list(s["steps_per_run"]) == (ws.names[:2] if per_behavior else ["+".join(ws.names[:2])])
    assert set(s["final_train_loss"]) == set(ws.names[:2])
    for name in ch:
        assert ch[name]["D"]["before"] > 0 and ch[name]["D"]["after"] != ch[name]["D"]["before"]
        assert math.isfinite(ch[name]["spread_ratio"]["ratio"])
    names = {f.name for f in res.figures}
    assert {f"fig8_pca_{ws.names[0]}", "fig8_D_over_training"} <= names
    assert base_D(ws, 0) > 0


def test_exact_spearman_p_by_hand():
    from prefdyn.experiments.lm_distinguishability import exact_spearman_p
    # 3 points in perfect order: 2 of the 3! orderings reach |rho| = 1
    assert exact_spearman_p([1, 2, 3], [10, 20, 30]) == pytest.approx(1 / 3)
    # 4 points: |rho| = 1 for 2 of 24 orderings
    assert exact_spearman_p([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(2 / 24)
    assert math.isnan(exact_spearman_p([1, 2], [1, 2]))


def test_named_priority_pairs_are_trained_as_given(tiny_workspace):
    from prefdyn.errors import PrefdynError
    from prefdyn.experiments.lm_priority import LMPriorityParams, named_pairs

    a, b, c = tiny_workspace.names[:3]
    assert named_pairs(tiny_workspace, ((a, b), (c, b))) == [[0, 1], [2, 1]]
    assert named_pairs(tiny_workspace, ()) is None
    with pytest.raises(PrefdynError, match="not loaded"):
        named_pairs(tiny_workspace, ((a, "nope"),))
    with pytest.raises(PrefdynError, match="two different"):
        LMPriorityParams(pairs=((a, a),))


def test_lm_scaling_cells_on_a_tiny_model(tiny_workspace):
    from prefdyn.experiments.lm_scaling import LMScalingParams, cell_task, run_lm_scaling
    from prefdyn.training import TrainConfig

    loaded = tiny_loaded()
    task = cell_task(tiny_workspace, loaded, [2, 0, 1], 2, 3, torch.Generator().manual_seed(0))
    assert task.group_names == [tiny_workspace.names[2], tiny_workspace.names[0]]
    assert len(task.data.train_idx) == 2 * 2 * 3  # K behaviors x 2 classes x Q
    assert int(task.data.prefers_yes[task.data.train_idx].sum()) == 2 * 3
    preset = LMScalingParams(mode="lora", ks=(1, 2), qs=(2, 4), eval_rows=4, snapshot_steps=())
    res = run_lm_scaling(tiny_workspace, TrainConfig(steps=2, batch_size=4, lr=1e-2, eval_every=1, optimizer="adamw"),
                         loaded=loaded, preset=preset)
    s = res.summary
    assert [(c["K"], c["Q"]) for c in s["cells"]] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    assert set(s["q_gap_effect"]) == {"1", "2"} and s["steps"] == 2
    with pytest.raises(PrefdynError, match="lower experiment.qs"):
        cell_task(tiny_workspace, loaded, [0], 1, 999, torch.Generator())
