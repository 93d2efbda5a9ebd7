"""CHES filtering vs random filtering vs SFT (Razin et al. 2024, Sec. 6), on a tiny model."""

import pytest
import torch

from prefdyn.data import demo_data_dir
from prefdyn.diagnostics.ches import ches_scores
from prefdyn.errors import PrefdynError
from prefdyn.experiments._displacement import load_source
from prefdyn.experiments.displacement_mitigation import (
    RUNS,
    MitigationConfig,
    run_mitigation,
    split_runs,
)
from prefdyn.training import TrainConfig
from tests._tiny import tiny_loaded


def test_split_runs_drops_the_top_ches_rows_and_as_many_random_ones():
    ches = torch.tensor([0.1, 5.0, 0.3, 9.0, 0.2, 0.0, 1.0, 2.0])
    rows = split_runs(ches, 25.0, seed=0)
    assert rows["all"] == rows["all + SFT"] == list(range(8))
    assert rows["drop top CHES"] == [0, 2, 4, 5, 6, 7]  # 9.0 and 5.0 are gone
    assert len(rows["drop random"]) == 6
    assert rows["drop random"] == split_runs(ches, 25.0, seed=0)["drop random"]  # seeded
    with pytest.raises(PrefdynError, match="drops none"):
        split_runs(ches, 5.0, seed=0)


def test_mitigation_runs_drop_exactly_the_top_ches_training_pairs():
    loaded = tiny_loaded()
    cfg = MitigationConfig(source="persona", persona_path=str(demo_data_dir()),
                           behaviors=["kindness", "patience"], n_train=8, n_eval=4, max_tokens=100,
                           top_percent=25.0)
    res = run_mitigation(loaded, cfg, TrainConfig(steps=2, lr=1e-3, optimizer="adamw", batch_size=4))
    pairs, _ = load_source("persona", loaded.tokenizer, hh_path="", persona_path=cfg.persona_path,
                           behaviors=cfg.behaviors, n=12, max_tokens=100, seed=0)
    train = pairs[4:]
    ches = ches_scores(loaded.model, loaded.tokenizer, train)["ches"]
    top = {train[i].source for i in torch.topk(ches, 2).indices.tolist()}
    assert set(res.summary["dropped_top_ches"]) == top
    assert len(res.summary["dropped_random"]) == 2
    assert set(res.summary["runs"]) == set(RUNS)
    shared = res.summary["n_shared"]
    assert 4 <= shared <= 6  # 8 minus the two dropped sets (which may overlap)
    rows = res.tables[0][1]
    assert len(rows) == 8 and {r["evaluated on"] for r in rows} == {"held-out", "shared train"}
    for r in rows:
        assert 0 <= r["chosen_fell"] <= 1 and 0 <= r["reward_acc"] <= 1
    # the runs differ in what they trained on, so their outcomes differ
    held = [res.summary["runs"][r]["held-out"]["chosen_logp_change"] for r in RUNS]
    assert len(set(held)) == 4


def test_config_checks():
    with pytest.raises(PrefdynError):
        MitigationConfig(source="web")
    with pytest.raises(PrefdynError):
        MitigationConfig(top_percent=0)
