import pytest

from prefdyn.data import list_behaviors, load_persona_dir, load_persona_file
from prefdyn.errors import DataError

from ._helpers import persona_line, write_lines, write_persona


def test_load_file_reads_items_and_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "agreeableness.jsonl", [
        persona_line("I like people", " Yes"), "", "   ", persona_line("I dislike people", " No"),
    ])
    items = load_persona_file(path)
    assert [i.statement for i in items] == ["I like people", "I dislike people"]
    assert [i.matching_is_yes for i in items] == [True, False]
    assert items[0].behavior == "agreeableness"
    assert items[0].answer_matching == " Yes" and items[0].answer_not_matching == " No"
    assert items[0].label_confidence == 0.9
    assert items[1].source == f"{path}:4"  # blank lines still count


def test_optional_fields_may_be_missing(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [
        persona_line("a", " Yes", question=..., label_confidence=...), persona_line("b", " No", label_confidence=None),
    ])
    assert [i.label_confidence for i in load_persona_file(path)] == [None, None]


@pytest.mark.parametrize(
    ("bad_line", "field", "message"),
    [
        ('{"statement": "x", "answer_matching_behavior": " Yes",', None, "malformed JSON"),
        ('["not", "an", "object"]', None, "JSON object"),
        (persona_line("x", " Yes", statement=...), "statement", "missing field"),
        (persona_line("x", " Yes", answer_not_matching_behavior=...), "answer_not_matching_behavior", "missing field"),
        (persona_line("x", " Yes", not_matching=" Yes"), "answer_matching_behavior", "Yes/No pair"),
        (persona_line("x", " Maybe", not_matching=" No"), "answer_matching_behavior", "Yes/No pair"),
        (persona_line("   ", " Yes"), "statement", "empty"),
        (persona_line("x", " Yes", statement=3), "statement", "string"),
        (persona_line("x", " Yes", label_confidence="high"), "label_confidence", "number"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, bad_line, field, message):
    path = write_lines(tmp_path / "b.jsonl", [persona_line("ok", " Yes"), persona_line("ok2", " No"), bad_line])
    with pytest.raises(DataError, match=message) as err:
        load_persona_file(path)
    assert f"{path}:3" in str(err.value)
    assert err.value.source == f"{path}:3"
    if field:
        assert f"field {field!r}" in str(err.value) and err.value.field == field


@pytest.mark.parametrize("lines", [[], ["", "  "]])
def test_empty_file_is_an_error(tmp_path, lines):
    path = write_lines(tmp_path / "empty.jsonl", lines)
    with pytest.raises(DataError, match="empty file") as err:
        load_persona_file(path)
    assert str(path) in str(err.value)


def test_single_class_is_an_error(tmp_path):
    path = write_persona(tmp_path / "one.jsonl", n_yes=3, n_no=0)
    with pytest.raises(DataError, match="both classes") as err:
        load_persona_file(path)
    assert f"{path}:1" in str(err.value) and err.value.field == "answer_matching_behavior"


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_persona_file(tmp_path / "nope.jsonl")


def test_gzip_is_detected_from_content(tmp_path):
    path = write_lines(tmp_path / "z.jsonl.gz", [persona_line("a", " Yes"), persona_line("b", " No")], gz=True)
    items = load_persona_file(path)
    assert [i.statement for i in items] == ["a", "b"] and items[0].behavior == "z"


def test_load_dir_sorted_and_filtered(tmp_path):
    for name in ("zeta", "alpha", "mid"):
        write_persona(tmp_path / f"{name}.jsonl", 2, 2, prefix=name)
    (tmp_path / "notes.txt").write_text("ignored")
    assert list_behaviors(tmp_path) == ["alpha", "mid", "zeta"]
    assert list(load_persona_dir(tmp_path)) == ["alpha", "mid", "zeta"]
    picked = load_persona_dir(tmp_path, ["zeta", "alpha"])
    assert list(picked) == ["alpha", "zeta"]
    assert picked["zeta"][0].statement == "zeta yes 0"


def test_load_dir_unknown_behavior_lists_close_matches(tmp_path):
    for name in ("desire-for-power", "desire-for-wealth", "agreeableness"):
        write_persona(tmp_path / f"{name}.jsonl", 1, 1)
    with pytest.raises(DataError, match="unknown behavior 'desire-for-powr'") as err:
        load_persona_dir(tmp_path, ["agreeableness", "desire-for-powr"])
    assert "'desire-for-power'" in str(err.value)


def test_load_dir_errors_for_missing_or_empty_dir(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_persona_dir(tmp_path / "absent")
    with pytest.raises(DataError, match="no \\*.jsonl"):
        load_persona_dir(tmp_path)
