import json
import math

import numpy as np
import pytest
import torch

from prefdyn.data.records import PreferencePair
from prefdyn.errors import PrefdynError
from prefdyn.losses import get_loss
from prefdyn.losses.types import PreferenceLogps
from prefdyn.tracking.concepts import (
    ConceptFiles,
    ConceptTracker,
    concept_means,
    read_concepts,
    read_diagnosis,
    read_pair_logps,
)
from prefdyn.tracking.evaluate import PairScores, pair_metrics
from prefdyn.tracking.history import History
from prefdyn.training import TrainConfig
from prefdyn.training.lm_data import fixed_pair_batches, pair_batches
from prefdyn.training.lm_runner import fit_lm
from tests._tiny import tiny_loaded

NAMES = ["short", "long"]


def _pairs():
    return [PreferencePair(f"Q{i}: say it.", " Yes" * (1 + i % 2), " No", f"toy:{i}") for i in range(6)]


def test_concept_means_by_hand():
    values = {"loss": torch.tensor([1.0, 2.0, 4.0]), "margin": torch.tensor([0.5, -1.0, 2.0]),
              "reward_acc": torch.tensor([1.0, 0.0, 1.0]), "chosen_fell": torch.zeros(3)}
    per = concept_means(values, torch.tensor([1, 0, 1]), ["a", "b", "c"])
    assert per["a"] == {"loss": 2.0, "margin": -1.0, "accuracy": 0.0}
    assert per["b"] == {"loss": 2.5, "margin": 1.25, "accuracy": 1.0}
    assert math.isnan(per["c"]["loss"])  # no pair of concept c
    assert concept_means(values, torch.zeros(3, dtype=torch.long), ["all"])["all"]["loss"] == pytest.approx(7 / 3)
    # -1: no concept (prefdyn diagnose could not run the pair); in no concept's numbers
    assert concept_means(values, torch.tensor([-1, 0, 0]), ["all"])["all"]["loss"] == 3.0
    assert concept_means(values, torch.tensor([-1, 0, 1]), ["a", "b"])["a"]["loss"] == 2.0
    with pytest.raises(PrefdynError, match="objective"):
        concept_means({"loss": values["loss"]}, torch.tensor([0, 0, 1]), ["a", "b"])


def test_files_round_trip(tmp_path):
    logps = PreferenceLogps(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]),
                            torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.5]))
    scores = PairScores(logps, torch.tensor([4, 1]))
    files = ConceptFiles(tmp_path, torch.tensor([0, 1, 0, 0, 1]), ["a", "b"])
    values = pair_metrics(scores, get_loss("dpo", beta=1.0))
    files.write(0, scores, values)
    files.write(3, scores, values)
    steps, curves = read_concepts(tmp_path)
    assert steps.tolist() == [0, 3]
    # rows 4 and 1 are both concept b; concept a has no probe pair. beta = 1:
    # row 4: h = (-1 + 1.5) - (-2 + 2) = 0.5; row 1: h = (-3 + 2) - (-2 + 2.5) = -1.5
    assert np.isnan(curves["a"]["loss"]).all()
    assert curves["b"]["margin"][1] == pytest.approx((0.5 - 1.5) / 2)
    assert curves["b"]["accuracy"][0] == pytest.approx(0.5)
    pl = read_pair_logps(tmp_path)
    assert pl["indices"].tolist() == [4, 1]
    assert pl["chosen_start"].tolist() == [-1.5, -2.0] and pl["chosen_end"].tolist() == [-1.0, -3.0]
    ConceptFiles(tmp_path, torch.tensor([0, 1, 0, 0, 1]), ["a", "b"]).write(5, scores, values)
    assert read_concepts(tmp_path)[0].tolist() == [5]  # a new writer starts the file afresh


def test_read_diagnosis_takes_minus_one_as_no_concept(tmp_path):
    record = {"schema": "prefdyn.diagnosis/1", "data": {"n_pairs": 3},
              "concepts": {"assignment": [0, -1, 0], "items": [{"name": "a", "predicted_rank": 1}]},
              "pairs": {"risky": [2]}}
    path = tmp_path / "diagnosis.json"
    path.write_text(json.dumps(record))
    assert read_diagnosis(path)["concepts"]["assignment"] == [0, -1, 0]
    record["concepts"]["assignment"] = [0, -2, 0]
    path.write_text(json.dumps(record))
    with pytest.raises(PrefdynError, match="or -1"):
        read_diagnosis(path)


def test_readers_name_what_is_missing(tmp_path):
    with pytest.raises(PrefdynError, match="concepts.jsonl not found"):
        read_concepts(tmp_path)
    (tmp_path / "pair_logps.json").write_text(json.dumps({"indices": [1]}))
    with pytest.raises(PrefdynError, match="missing"):
        read_pair_logps(tmp_path)


def test_tracker_files_equal_the_per_group_records_of_the_same_run(tmp_path):
    """A few fit_lm steps on a tiny model: concepts.jsonl holds exactly the per-concept
    numbers of prefdyn's own evaluation tracker (its history records)."""
    loaded = tiny_loaded()
    pairs, tok = _pairs(), loaded.tokenizer
    concepts = torch.tensor([i % 2 for i in range(len(pairs))])
    probe = fixed_pair_batches(pairs[:4], tok, 2)
    history = History()
    tracker = ConceptTracker(get_loss("dpo", beta=0.5), probe, concepts=concepts, names=NAMES,
                             folder=tmp_path, history=history, every=2)
    fit_lm(loaded, pair_batches(pairs, tok, 2, seed=0), TrainConfig(optimizer="adamw", lr=1e-2),
           mode="full", steps=3, callbacks=[tracker])
    steps, curves = read_concepts(tmp_path)
    assert steps.tolist() == [0, 2, 3]
    for name in NAMES:
        for key, metric in (("loss", "loss"), ("margin", "margin"), ("accuracy", "reward_acc")):
            rec_steps, rec = history.curves(metric, split="probe", by="group")
            assert rec_steps.tolist() == steps.tolist()
            np.testing.assert_allclose(curves[name][key], rec[name], rtol=1e-6)
    assert curves["short"]["loss"][0] == pytest.approx(math.log(2))  # pi == pi_ref at step 0
    assert not np.allclose(curves["short"]["loss"][-1], math.log(2))  # and it learned
    pl = read_pair_logps(tmp_path)
    assert pl["indices"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(pl["chosen_end"] - pl["chosen_start"],
                               tracker.last_values["chosen_logp_change"].numpy(), rtol=1e-5, atol=1e-6)
