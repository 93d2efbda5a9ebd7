"""A CLI LM experiment launched on two gloo processes with sharded weights (the paper
presets' launch, at a tiny size) records what one process records: rank 0 alone writes
the run folder, no record twice, and the second phase starts from the trained weights."""

import json
import math
from pathlib import Path

import pytest

from tests.experiments.test_experiment_resume import _numbers
from tests.training.test_distributed import launch


def _run(args: list[str], world: int, tmp_path: Path) -> None:
    launch(["-m", "prefdyn", *args], world, tmp_path, PREFDYN_CACHE=str(tmp_path / "prefdyn-cache"))


def _records(root: Path) -> list[dict]:
    lines = (root / "misalignment_full" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# Shares of rows past a threshold (a margin > 0, a log-prob that fell): where the policy
# still equals pi_ref, round-off of the other batch layout decides them.
_TIES = {"chosen_fell", "reward_acc", "policy_acc"}


def _key(r: dict) -> tuple:
    return r.get("problem"), r.get("split"), r.get("group"), r.get("step")


def test_sharded_two_process_experiment_records_as_one_process(tiny_model_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  eval_every: 2\n  sharding: full\n")
    args = ["lm", "misalignment", "--preset", "quick", "--mode", "full", "--model", str(tiny_model_dir),
            "--cache-dir", str(tmp_path / "cache"), "--behaviors", "kindness,patience", "--n", "10",
            "--steps", "4", "--batch-size", "4", "--lr", "5e-3", "--config", str(config),
            "--no-per-behavior"]
    _run([*args, "--out", str(tmp_path / "one")], 1, tmp_path)
    _run([*args, "--out", str(tmp_path / "two")], 2, tmp_path)

    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert len({_key(r) for r in two}) == len(two)  # none twice: only rank 0 wrote
    assert sorted(map(_key, two), key=str) == sorted(map(_key, one), key=str)
    by_key = {_key(r): r for r in one}
    for record in two:  # evaluation, snapshots and training records of all three runs
        want = by_key[_key(record)]
        for name, value in want.items():
            if isinstance(value, float) and math.isfinite(value) and name not in _TIES:
                assert record[name] == pytest.approx(value, rel=1e-3, abs=1e-5), (_key(record), name)

    want = _numbers(json.loads((tmp_path / "one" / "misalignment_full" / "summary.json").read_text()))
    got = _numbers(json.loads((tmp_path / "two" / "misalignment_full" / "summary.json").read_text()))
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float) and math.isfinite(value) and not any(t in key for t in _TIES):
            assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
