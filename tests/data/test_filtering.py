"""filter_pairs / drop_indices / write_pairs: the right pairs go, both formats round-trip."""

from __future__ import annotations

import gzip

import pytest
import torch

from prefdyn.data import load_pairs
from prefdyn.data.filtering import drop_indices, filter_pairs, write_pairs
from prefdyn.data.records import PreferencePair
from prefdyn.errors import DataError


def _pairs(n: int = 10) -> list[PreferencePair]:
    return [PreferencePair(f"\n\nHuman: question {i}\n\nAssistant:", f" good {i}", f" bad {i}", f"x:{i}")
            for i in range(n)]


def test_top_percent_drops_the_highest():
    scores = [0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0]
    kept, dropped = filter_pairs(_pairs(), scores, top_percent=20)
    assert [p.source for p in dropped] == ["x:1", "x:3"]
    assert [p.source for p in kept] == [f"x:{i}" for i in (0, 2, 4, 5, 6, 7, 8, 9)]
    assert drop_indices(scores, top_percent=0) == []
    assert len(drop_indices(scores, top_percent=100)) == 10


def test_threshold_and_ties():
    assert drop_indices(torch.tensor([1.0, 3.0, 2.0, 3.0]), threshold=2.0) == [1, 3]
    assert drop_indices([1.0, 1.0, 1.0, 1.0], top_percent=50) == [0, 1]  # ties: earlier first
    assert len(drop_indices([0.0] * 20, top_percent=15)) == 3  # 20 * 15 / 100 is 3.0000000000000004


def test_bad_arguments():
    with pytest.raises(DataError, match="exactly one"):
        drop_indices([1.0], top_percent=10, threshold=0.0)
    with pytest.raises(DataError, match="exactly one"):
        drop_indices([1.0])
    with pytest.raises(DataError, match="NaN"):
        drop_indices([float("nan")], threshold=0.0)
    with pytest.raises(DataError, match="scores for"):
        filter_pairs(_pairs(3), [1.0], threshold=0.0)


@pytest.mark.parametrize("fmt", ["trl", "hh"])
@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_write_pairs_round_trips(tmp_path, fmt, name):
    pairs = _pairs(4)
    path = write_pairs(tmp_path / name, pairs, fmt)
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as f:
            assert f.readline().startswith("{")
    back = load_pairs(path, format="auto")
    assert [(p.prompt, p.chosen, p.rejected) for p in back] == [(p.prompt, p.chosen, p.rejected) for p in pairs]
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_same_pairs_give_byte_identical_gz_files(tmp_path):
    # The gzip header once carried the random temp file's name, so no two files matched.
    first = write_pairs(tmp_path / "a" / "out.jsonl.gz", _pairs(3), "trl")
    second = write_pairs(tmp_path / "b" / "out.jsonl.gz", _pairs(3), "trl")
    assert first.read_bytes() == second.read_bytes()
