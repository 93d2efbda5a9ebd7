import json
import re

import pytest

from prefdyn.data import load_pairs, split_hh
from prefdyn.errors import DataError

from ._helpers import write_lines


def _trl(prompt="Q:", chosen=" good", rejected=" bad", **extra):
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra})


def _hh(chosen, rejected):
    return json.dumps({"chosen": chosen, "rejected": rejected})


DIALOGUE = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me?"


@pytest.mark.parametrize("gz", [False, True])
def test_trl_pairs_plain_and_gzip(tmp_path, gz):
    path = write_lines(tmp_path / ("p.jsonl.gz" if gz else "p.jsonl"), [_trl(), "", _trl("P2", " a", " b")], gz=gz)
    pairs = load_pairs(path, group="g")
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("Q:", " good", " bad"), ("P2", " a", " b")]
    assert pairs[1].source == f"{path}:3" and pairs[0].group == "g"


def test_hh_splits_at_last_assistant_turn(tmp_path):
    path = write_lines(tmp_path / "hh.jsonl", [
        _hh(DIALOGUE + "\n\nAssistant: Sure, here is how.", DIALOGUE + "\n\nAssistant: No."),
    ])
    (pair,) = load_pairs(path)
    assert pair.prompt == DIALOGUE + "\n\nAssistant:"
    assert pair.chosen == " Sure, here is how." and pair.rejected == " No."
    assert pair.prompt + pair.chosen == DIALOGUE + "\n\nAssistant: Sure, here is how."


def test_hh_gzip_and_forced_format(tmp_path):
    path = write_lines(tmp_path / "hh.jsonl.gz", [_hh(DIALOGUE + "\n\nAssistant: A", DIALOGUE + "\n\nAssistant: B")], gz=True)
    assert load_pairs(path, format="hh")[0].chosen == " A"
    with pytest.raises(DataError, match="missing field") as err:
        load_pairs(path, format="trl")
    assert err.value.field == "prompt" and err.value.source == f"{path}:1"


def test_hh_prompt_not_shared(tmp_path):
    other = "\n\nHuman: bye\n\nAssistant: ok\n\nHuman: help me?"
    path = write_lines(tmp_path / "hh.jsonl", [
        _hh(DIALOGUE + "\n\nAssistant: A", DIALOGUE + "\n\nAssistant: B"),
        _hh(DIALOGUE + "\n\nAssistant: A", other + "\n\nAssistant: B"),
    ])
    with pytest.raises(DataError, match="not shared") as err:
        load_pairs(path)
    assert f"{path}:2" in str(err.value)


@pytest.mark.parametrize("empty_field", ["chosen", "rejected"])
def test_hh_empty_response(tmp_path, empty_field):
    texts = {"chosen": DIALOGUE + "\n\nAssistant: A", "rejected": DIALOGUE + "\n\nAssistant: B"}
    texts[empty_field] = DIALOGUE + "\n\nAssistant: "
    path = write_lines(tmp_path / "hh.jsonl", [_hh(**texts)])
    with pytest.raises(DataError, match="empty response") as err:
        load_pairs(path)
    assert err.value.source == f"{path}:1" and err.value.field == empty_field


def test_hh_without_assistant_turn():
    with pytest.raises(DataError, match="Assistant") as err:
        split_hh("\n\nHuman: hi", "\n\nHuman: hi\n\nAssistant: x", "f:1")
    assert err.value.field == "chosen"


@pytest.mark.parametrize(
    ("line", "field"),
    [(_trl(chosen="  "), "chosen"), (json.dumps({"prompt": "Q", "chosen": " a"}), "rejected"), (_trl(rejected=None), "rejected")],
)
def test_trl_bad_fields(tmp_path, line, field):
    path = write_lines(tmp_path / "p.jsonl", [_trl(), line])
    with pytest.raises(DataError) as err:
        load_pairs(path)
    assert f"{path}:2" in str(err.value) and err.value.field == field


def test_undetectable_and_malformed_lines(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"text": "x"})])
    with pytest.raises(DataError, match="cannot tell the format") as err:
        load_pairs(path)
    assert f"{path}:1" in str(err.value)
    path = write_lines(tmp_path / "q.jsonl", [_trl(), "{oops"])
    with pytest.raises(DataError, match=re.escape(f"{path}:2") + ".*malformed JSON"):
        load_pairs(path, on_error="skip")


def test_skip_drops_bad_pairs_and_logs(tmp_path, caplog):
    path = write_lines(tmp_path / "p.jsonl", [_trl(), _trl(chosen=""), _trl("P3")])
    pairs = load_pairs(path, on_error="skip")
    assert [p.prompt for p in pairs] == ["Q:", "P3"]
    assert "skipped 1 bad pair" in caplog.text and f"{path}:2" in caplog.text


def test_empty_file_and_bad_arguments(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [""])
    with pytest.raises(DataError, match="no preference pairs"):
        load_pairs(path)
    with pytest.raises(DataError, match="unknown pair format"):
        load_pairs(path, format="csv")
