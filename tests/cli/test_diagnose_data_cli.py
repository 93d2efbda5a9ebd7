"""``prefdyn diagnose DATA`` on pairs data, through the real entry point, with a tiny model."""

import json

import pytest

from tests.cli.test_cli import prefdyn

SCHEMA_KEYS = {"schema", "data", "model", "concepts", "pairs", "problems", "recommendations"}


def _pairs_file(path):
    """Six TRL pairs in two categories; record 5 duplicates record 0."""
    rows = [("Say hello.", " I like to help people.", " No."),
            ("Be kind.", " It is important to treat other people with kindness and respect.", " No."),
            ("Answer me.", " Yes.", " The quick brown fox jumps over the lazy dog."),
            ("What now?", " The quick brown fox.", " I enjoy causing pain to others."),
            ("Tell me.", " Yes, I would say that.", " No."),
            ("Say hello.", " I like to help people.", " No.")]
    topics = ["a", "a", "b", "b", "b", "a"]
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r, "topic": t}) + "\n"
                            for (p, c, r), t in zip(rows, topics)))
    return path


@pytest.fixture(scope="module")
def common(tiny_model_dir, tmp_path_factory):
    return ["--model", tiny_model_dir, "--cache-dir", tmp_path_factory.mktemp("cli-cache")]


def test_diagnose_pairs_with_a_concept_column(common, tmp_path):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    r = prefdyn("diagnose", data, *common, "--concept-column", "topic", "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert (out / "report.html").is_file() and (out / "pairs.jsonl").is_file()
    d = json.loads((out / "diagnosis.json").read_text())
    assert SCHEMA_KEYS <= set(d) and d["schema"] == "prefdyn.diagnosis/1"
    assert d["data"]["n_pairs"] == 6 and d["data"]["format"] == "jsonl:trl"
    concepts = d["concepts"]
    assert concepts["source"] == "column:topic" and concepts["k"] == 2
    assert concepts["assignment"] == [0, 0, 1, 1, 1, 0]
    assert [c["name"] for c in concepts["items"]] == ["a", "b"] and [c["n"] for c in concepts["items"]] == [3, 3]
    assert sorted(c["predicted_rank"] for c in concepts["items"]) == [1, 2]
    assert len(d["pairs"]["ches"]) == 6 and all(v is not None for v in d["pairs"]["ches"])
    assert d["pairs"]["risky"] == [i for i, v in enumerate(d["pairs"]["ches"]) if v > 0]
    assert {"kind": "duplicate", "record": 5, "detail": "same pair as record 0"} in d["problems"]
    html = (out / "report.html").read_text()
    assert "prefdyn&#x27;s extension" in html or "prefdyn's extension" in html


def test_concepts_from_clusters(common, tmp_path):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    r = prefdyn("diagnose", data, *common, "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    concepts = json.loads((tmp_path / "out" / "diagnosis.json").read_text())["concepts"]
    assert concepts["source"] == "clusters" and 2 <= concepts["k"] <= 5
    assert set(concepts["silhouette"]) == {"2", "3", "4", "5"}  # K < n = 6 prompts
    assert sorted(set(concepts["assignment"])) == list(range(concepts["k"]))


def test_fail_on_exits_non_zero_exactly_when_crossed(common, tmp_path):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    args = ["diagnose", data, *common, "--concept-column", "topic", "--out", tmp_path / "out"]
    r = prefdyn(*args, "--fail-on", "duplicates>1", cwd=tmp_path)  # one duplicate: not crossed
    assert r.returncode == 0, r.stderr
    r = prefdyn(*args, "--fail-on", "duplicates>0", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == "error: --fail-on: duplicates = 1 > 0"
    assert (tmp_path / "out" / "report.html").is_file()  # the report is written first


def test_bad_input_is_a_one_line_error(common, tmp_path):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    cases = [(["--concept-column", "nope"], "unknown column 'nope'"),
             (["--strict"], "record 5: duplicate: same pair as record 0"),
             (["--fail-on", "nonsense>1"], "unknown metric 'nonsense'")]
    for extra, message in cases:
        r = prefdyn("diagnose", data, *common, *extra, "--out", tmp_path / "out", cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
    r = prefdyn("diagnose", data, "--model", tmp_path / "no-model", "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2 and "model not found" in r.stderr and "Traceback" not in r.stderr
    r = prefdyn("diagnose", tmp_path / "missing.jsonl", *common, "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2 and "no such file or folder" in r.stderr
