"""Data problems with their record numbers (data/problems.py)."""

import pytest

from prefdyn.data.problems import Problem, find_problems, looks_truncated, raise_if_strict, unusable_records
from prefdyn.data.records import PreferencePair
from prefdyn.errors import DataError


def _pair(prompt, chosen, rejected):
    return PreferencePair(prompt, chosen, rejected, source="t")


def test_each_kind_is_found_at_its_record():
    pairs = [_pair("p", " A fine answer.", " No."),
             _pair("p", " A fine answer.", " No."),            # duplicate of 0
             _pair("q", " Same.", " Same."),                   # identical
             _pair("r", "  ", " Fine."),                       # empty chosen
             _pair("s", " It was the best of", " Ok.")]        # truncated chosen
    lengths = {"p": 3, "q": 3, "r": 3, "s": 9}
    problems = find_problems(pairs, token_length=lambda prompt, response: lengths[prompt], max_length=8)
    assert [(p.kind, p.record) for p in problems] == [
        ("duplicate", 1), ("identical", 2), ("empty", 3), ("truncated", 4), ("over_context", 4),
        ("over_context", 4)]
    assert problems[0].detail == "same pair as record 0"
    assert unusable_records(problems) == {3, 4}


def test_truncation_needs_several_words_ending_mid_sentence():
    assert looks_truncated(" I think that we should")
    assert looks_truncated(" one two three four,")
    assert not looks_truncated(" I think that we should.")
    assert not looks_truncated(" Yes")  # a one-word answer is complete
    assert not looks_truncated(' She said "go home now"')


def test_strict_raises_the_first_problem_in_one_line():
    problems = [Problem("identical", 2, "chosen == rejected"), Problem("empty", 3, "empty chosen response")]
    raise_if_strict(problems, False, "f.jsonl")
    with pytest.raises(DataError, match=r"^f.jsonl: record 2: identical: chosen == rejected \(and 1 more\)"):
        raise_if_strict(problems, True, "f.jsonl")
