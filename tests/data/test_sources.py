"""Every pairs source loads to the same pairs (data/sources.py)."""

import gzip
import json

import pytest

from prefdyn.data.records import PreferencePair
from prefdyn.data.sources import detect_source, iter_rows, load_source
from prefdyn.errors import DataError

# Two HH-RLHF dialogues and the pairs they are: the prompt ends with "\n\nAssistant:".
PROMPTS = ["\n\nHuman: Hi\n\nAssistant:", "\n\nHuman: Can you help?\n\nAssistant: Sure.\n\nHuman: Thanks\n\nAssistant:"]
CHOSEN = [" Hello there.", " You are welcome."]
REJECTED = [" Go away.", " Whatever."]
CATEGORY = ["greeting", "thanks"]


def _triples(pairs: list[PreferencePair]):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


EXPECTED = list(zip(PROMPTS, CHOSEN, REJECTED))


def _trl_records():
    return [{"prompt": p, "chosen": c, "rejected": r, "category": k}
            for p, c, r, k in zip(PROMPTS, CHOSEN, REJECTED, CATEGORY)]


def _chat_records():
    """The same pairs as TRL conversational records (explicit prompt)."""
    return [
        {"prompt": [{"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello there."}],
         "rejected": [{"role": "assistant", "content": "Go away."}], "category": "greeting"},
        {"prompt": [{"role": "user", "content": "Can you help?"}, {"role": "assistant", "content": "Sure."},
                    {"role": "user", "content": "Thanks"}],
         "chosen": [{"role": "assistant", "content": "You are welcome."}],
         "rejected": [{"role": "assistant", "content": "Whatever."}], "category": "thanks"},
    ]


def _write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_jsonl_formats_load_to_the_same_pairs(tmp_path):
    hh = [{"chosen": p + c, "rejected": p + r} for p, c, r in EXPECTED]
    implicit = [{"chosen": rec["prompt"] + rec["chosen"], "rejected": rec["prompt"] + rec["rejected"]}
                for rec in _chat_records()]
    sources = {
        "jsonl:hh": _write_jsonl(tmp_path / "hh.jsonl.gz", hh, gz=True),
        "jsonl:trl": _write_jsonl(tmp_path / "trl.jsonl", _trl_records()),
        "jsonl:trl-chat": _write_jsonl(tmp_path / "chat.jsonl", _chat_records()),
        "jsonl:hh-chat": _write_jsonl(tmp_path / "implicit.jsonl", implicit),
    }
    for fmt, path in sources.items():
        data = load_source(path)
        assert data.format == fmt
        assert _triples(data.pairs) == EXPECTED, fmt
        assert data.problems == []
    fingerprints = {load_source(path).fingerprint for path in sources.values()}
    assert len(fingerprints) == 1
    assert load_source(sources["jsonl:trl"]).column("category") == CATEGORY


def test_datasets_sources_load_to_the_same_pairs(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(_trl_records())
    ds.to_parquet(str(tmp_path / "pairs.parquet"))
    (tmp_path / "pairs.json").write_text(json.dumps(_trl_records()))
    ds.save_to_disk(str(tmp_path / "disk"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dict"))
    for path, fmt in ((tmp_path / "pairs.parquet", "parquet:trl"), (tmp_path / "pairs.json", "json:trl"),
                      (tmp_path / "disk", "disk:trl"), (tmp_path / "dict", "disk:trl")):
        data = load_source(path)
        assert data.format == fmt and _triples(data.pairs) == EXPECTED, fmt
        assert data.column("category") == CATEGORY
    assert _triples(load_source(tmp_path / "dict", split="test").pairs) == EXPECTED[1:]
    with pytest.raises(DataError, match="choose a split with --split: train, test"):
        load_source(tmp_path / "dict", split="validation")


def test_hub_ids_go_through_load_dataset(tmp_path):
    """The hub path is datasets.load_dataset(id, split=...); here on a local folder of data files."""
    pytest.importorskip("datasets")
    folder = tmp_path / "org_name"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", _trl_records())
    assert detect_source("no-such-org/no-such-set") == "hub"
    rows = [record for _, record in iter_rows(str(folder), "hub", split="train")]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == EXPECTED


def test_chat_records_render_with_the_tokenizer_chat_template(tmp_path):
    from tests._tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    data = load_source(_write_jsonl(tmp_path / "chat.jsonl", _chat_records()), tokenizer=tok)
    first = data.pairs[0]
    assert first.prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert first.chosen == "Hello there.<|im_end|>\n" and first.rejected == "Go away.<|im_end|>\n"


def test_persona_folder_is_a_pairs_source(tmp_path):
    from prefdyn.data import demo_data_dir

    data = load_source(demo_data_dir(), limit=3)
    assert data.format == "persona:trl" and len(data.pairs) == 3
    assert {p.chosen for p in data.pairs} <= {" Yes", " No"}
    assert data.column("behavior") == ["curiosity"] * 3


def test_bad_hh_records_are_kept_and_reported_with_their_record_number(tmp_path):
    records = [{"chosen": PROMPTS[0] + CHOSEN[0], "rejected": PROMPTS[0] + REJECTED[0]},
               {"chosen": PROMPTS[1] + CHOSEN[1], "rejected": PROMPTS[0] + REJECTED[1]},
               {"chosen": "no turns", "rejected": "at all"}]
    data = load_source(_write_jsonl(tmp_path / "hh.jsonl", records))
    assert len(data.pairs) == 3
    assert [(p.kind, p.record) for p in data.problems] == [("prompt_not_shared", 1), ("no_assistant_turn", 2)]


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing.jsonl:1, field 'rejected': missing field"):
        load_source(_write_jsonl(tmp_path / "missing.jsonl", [{"prompt": "p", "chosen": "c"}]))
    (tmp_path / "broken.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read file"):
        load_source(tmp_path / "broken.jsonl.gz")
    with pytest.raises(DataError, match="unknown column 'topic'; the records have: category"):
        load_source(_write_jsonl(tmp_path / "trl.jsonl", _trl_records())).column("topic")
    with pytest.raises(DataError, match="unknown file type"):
        load_source(_write_jsonl(tmp_path / "pairs.txt", _trl_records()))
    with pytest.raises(DataError, match="no such file or folder"):
        load_source(tmp_path / "nowhere.jsonl")
    with pytest.raises(DataError, match="no preference pairs"):
        load_source(_write_jsonl(tmp_path / "empty.jsonl", []))


def test_limit_reads_the_first_records(tmp_path):
    data = load_source(_write_jsonl(tmp_path / "trl.jsonl", _trl_records()), limit=1)
    assert _triples(data.pairs) == EXPECTED[:1] and data.column("category") == CATEGORY[:1]
