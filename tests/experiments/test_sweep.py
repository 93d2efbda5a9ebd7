import json

import pytest

from prefdyn.errors import PrefdynError
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.sweep import combine, parse_grid, point_folder, scalar_outcomes


def test_parse_grid():
    assert parse_grid(["train.beta=0.05,0.1, 0.5,0.1", "seed=0,1"]) == [
        ("train.beta", ["0.05", "0.1", "0.5"]), ("seed", ["0", "1"])]  # order kept, repeats dropped
    for bad, match in ((["train.beta"], "key=v1"), (["=1"], "key=v1"), (["train.beta="], "key=v1"),
                       ([], "at least one"), (["seed=1", "seed=2"], "given twice")):
        with pytest.raises(PrefdynError, match=match):
            parse_grid(bad)


def test_point_folder_names_the_field():
    assert point_folder({"train.beta": "0.1"}) == "beta_0.1"
    assert point_folder({"train.beta": "1", "seed": "2"}) == "beta_1_seed_2"


def _fake(beta: float) -> ExperimentResult:
    return ExperimentResult("fake", "Fake", "", {"beta": beta, "lr": 0.1, "mean_speedup": 2 * beta,
                                                 "flag": True, "per": {"a": 1.0}, "steps": 3})


def test_scalar_outcomes_skip_settings_and_non_scalars():
    assert scalar_outcomes(_fake(0.1).summary) == {"mean_speedup": 0.2}


def test_combine_table_plot_and_headline(tmp_path):
    points = [{"train.beta": "0.5"}, {"train.beta": "0.05"}]
    res = combine("lm misalignment", points, [_fake(0.5), _fake(0.05)])
    assert res.summary["metrics"]["mean_speedup"] == [1.0, 0.1]
    assert res.summary["key_metrics"] == ["mean_speedup"]
    assert [r["train.beta"] for r in res.tables[0][1]] == ["0.5", "0.05"]
    assert res.headlines[0][1] == "1.00 / 0.10"
    assert res.figures[0].png.startswith(b"\x89PNG")
    json.dumps(res.summary)


def test_unchanged_metric_gets_a_note():
    res = combine("x", [{"seed": "1"}, {"seed": "2"}], [ExperimentResult("x", "X", "", {"m": 1.0})] * 2)
    assert res.notes == ["m did not change over the grid."]
