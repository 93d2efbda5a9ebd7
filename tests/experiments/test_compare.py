"""prefdyn compare: the measured order, the rank test and the risky-pair precision, by hand."""

import json
import math

import numpy as np
import pytest

from prefdyn.errors import PrefdynError
from prefdyn.experiments.compare import (
    compare_report,
    compare_run,
    learning_speed,
    measured_ranks,
    risk_precision,
)


def write_diagnosis(path, assignment, names, ranks, risky):
    """A diagnosis.json written by hand, following notes/diagnosis_schema.md."""
    path.write_text(json.dumps({
        "schema": "prefdyn.diagnosis/1",
        "data": {"source": "toy", "format": "trl", "n_pairs": len(assignment), "fingerprint": "x"},
        "model": "tiny",
        "concepts": {"source": "clusters", "k": len(names), "assignment": assignment,
                     "items": [{"name": n, "n": assignment.count(i), "distinguishability": 1.0,
                                "priority": 1.0, "predicted_rank": r, "starved": r == len(names)}
                               for i, (n, r) in enumerate(zip(names, ranks))]},
        "pairs": {"ches": [0.0] * len(assignment), "ches_norm": [0.0] * len(assignment),
                  "risk_threshold": 0.5, "risky": risky},
        "problems": [], "recommendations": []}))
    return path


def write_run(folder, curves, pairs):
    """concepts.jsonl ({concept: accuracies per step}, margins = accuracies) and pair_logps.json."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = [0, 2, 4]
    with open(folder / "concepts.jsonl", "w") as f:
        for i, step in enumerate(steps):
            f.write(json.dumps({"step": step, "concept": {
                c: {"loss": 0.7, "margin": acc[i], "accuracy": acc[i]} for c, acc in curves.items()}}) + "\n")
    (folder / "pair_logps.json").write_text(json.dumps(pairs))
    return folder


PAIRS = {"indices": [0, 1, 2, 3, 4], "chosen_start": [0.0] * 5, "chosen_end": [-1.0, 1.0, -1.0, 1.0, 1.0],
         "rejected_start": [0.0] * 5, "rejected_end": [-2.0] * 5}


def test_learning_speed_by_hand():
    steps = np.array([0, 2, 4])
    curve = {"accuracy": np.array([0.0, 0.5, 1.0]), "margin": np.array([0.0, 1.0, 4.0])}
    # trapezoids: (0 + 0.5) / 2 * 2 + (0.5 + 1) / 2 * 2 = 2, over a span of 4
    assert learning_speed(steps, curve, "accuracy_auc") == pytest.approx(0.5)
    assert learning_speed(steps, curve, "margin_half") == -4.0  # margin reaches 4 / 2 at step 4
    never = {"accuracy": np.zeros(3), "margin": np.array([0.0, -1.0, -0.5])}
    assert learning_speed(steps, never, "margin_half") == -math.inf
    assert measured_ranks({"a": 0.2, "b": 0.9, "c": 0.2, "d": -math.inf}) == {"a": 2.5, "b": 1.0, "c": 2.5, "d": 4.0}
    with pytest.raises(PrefdynError, match="unknown measure"):
        learning_speed(steps, curve, "fastest")


def test_risk_precision_by_hand():
    pl = {k: np.asarray(v) for k, v in PAIRS.items()}
    risk = risk_precision([0, 1, 7], pl)  # pair 7 was not probed
    assert risk["fell"] == [0, 2] and risk["hits"] == [0]
    assert risk["precision"] == 0.5 and risk["recall"] == 0.5 and risk["base_rate"] == 0.4
    assert risk["lift"] == pytest.approx(1.25)
    # P(at least 1 of 2 random probe pairs among the 2 of 5 that fell) = 1 - C(3,2)/C(5,2)
    assert risk["p"] == pytest.approx(0.7)
    assert math.isnan(risk_precision([], pl)["precision"])


def test_compare_a_perfect_prediction_and_a_reversed_one(tmp_path):
    run = write_run(tmp_path / "run", {"fast": [0.0, 1.0, 1.0], "mid": [0.0, 0.5, 1.0],
                                       "slow": [0.0, 0.0, 0.5]}, PAIRS)
    names = ["slow", "fast", "mid"]
    good = write_diagnosis(tmp_path / "good.json", [0, 1, 2, 0, 1], names, [3, 1, 2], [0, 1])
    cmp = compare_run(good, run)
    assert cmp.spearman == pytest.approx(1.0)
    assert cmp.p == pytest.approx(2 / 6) and cmp.p_kind == "exact permutation"  # identity and reversal of 3
    by_name = {r["name"]: r for r in cmp.concepts}
    assert by_name["fast"]["measured_rank"] == 1.0 and by_name["slow"]["n_probe"] == 2
    assert cmp.risk["precision"] == 0.5
    bad = write_diagnosis(tmp_path / "bad.json", [0, 1, 2, 0, 1], names, [1, 3, 2], [0, 2])
    cmp = compare_run(bad, run)
    assert cmp.spearman == pytest.approx(-1.0) and cmp.risk["precision"] == 1.0
    # margin_half: fast and mid both reach half their final margin at step 2, a tie
    halves = {r["name"]: r["measured_rank"] for r in compare_run(bad, run, measure="margin_half").concepts}
    assert halves == {"slow": 3.0, "fast": 1.5, "mid": 1.5}
    assert json.loads(json.dumps(cmp.to_dict()))["risk"]["hits"] == [0, 2]
    assert "Diagnosis vs run" in compare_report(cmp).render()


def test_compare_refuses_another_data_set_and_a_bad_diagnosis(tmp_path):
    run = write_run(tmp_path / "run", {"a": [0.0, 1.0, 1.0]}, PAIRS)
    small = write_diagnosis(tmp_path / "small.json", [0, 0, 0], ["a"], [1], [])
    with pytest.raises(PrefdynError, match="not the same data"):
        compare_run(small, run)
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something/2"}))
    with pytest.raises(PrefdynError, match="schema"):
        compare_run(tmp_path / "other.json", run)
