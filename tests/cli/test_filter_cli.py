"""``prefdyn filter`` end to end on a tiny TRL file with a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from prefdyn.cli.filter import filter_command, report_base
from prefdyn.data import load_pairs
from prefdyn.data.filtering import write_pairs
from prefdyn.data.records import PreferencePair


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("filter")(filter_command)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps "filter" as a named sub-command
        pass

    return app


def _write_input(tmp_path, fmt: str):
    pairs = [
        PreferencePair("\n\nHuman: Say yes\n\nAssistant:", " Yes", " No", ""),
        PreferencePair("\n\nHuman: Help me\n\nAssistant:", " I like to help people.", " No.", ""),
        PreferencePair("\n\nHuman: Fox?\n\nAssistant:", " The quick brown fox.", " The lazy dog.", ""),
        PreferencePair("\n\nHuman: Be kind\n\nAssistant:", " Yes.", " I enjoy causing pain to others.", ""),
    ]
    return write_pairs(tmp_path / f"in.{fmt}.jsonl", pairs, fmt), pairs


@pytest.mark.parametrize("score", ["ches", "ches_normalized", "edit", "hidden"])
def test_filter_trl_end_to_end(tmp_path, tiny_model_dir, app, score):
    source, pairs = _write_input(tmp_path, "trl")
    out = tmp_path / "kept.jsonl.gz"
    result = CliRunner().invoke(app, ["filter", str(source), "--out", str(out), "--score", score,
                                      "--top-percent", "50", "--model", str(tiny_model_dir),
                                      "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    kept = load_pairs(out)
    report = json.loads((tmp_path / "kept.report.json").read_text())
    assert report["counts"] == {"total": 4, "kept": 2, "dropped": 2}
    assert len(kept) == 2 and report["score"] == score
    dropped_lines = {d["source"].rsplit(":", 1)[1] for d in report["dropped"]}
    kept_texts = {(p.prompt, p.chosen) for p in kept}
    for i, pair in enumerate(pairs, start=1):
        assert ((pair.prompt, pair.chosen) in kept_texts) != (str(i) in dropped_lines)
    assert min(d["score"] for d in report["dropped"]) >= report["scores"]["min"]
    assert (tmp_path / "kept.report.html").exists()


def test_filter_hh_threshold_keeps_format(tmp_path, tiny_model_dir, app):
    source, _ = _write_input(tmp_path, "hh")
    out = tmp_path / "kept.jsonl"
    result = CliRunner().invoke(app, ["filter", str(source), "--out", str(out), "--score", "edit",
                                      "--threshold", "0.5", "--model", str(tiny_model_dir), "--no-html"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(r) == {"chosen", "rejected"} for r in records)  # HH in, HH out
    assert len(records) == 4  # no two responses share over half their tokens
    assert not (tmp_path / "kept.report.html").exists()


def test_filter_user_errors(tmp_path, tiny_model_dir, app):
    source, _ = _write_input(tmp_path, "trl")
    runner = CliRunner()
    both = runner.invoke(app, ["filter", str(source), "--out", str(tmp_path / "o.jsonl"),
                               "--top-percent", "10", "--threshold", "1", "--model", str(tiny_model_dir)])
    assert both.exit_code == 2 and "exactly one" in both.output
    bad = runner.invoke(app, ["filter", str(source), "--out", str(tmp_path / "o.jsonl"), "--score", "nope",
                              "--top-percent", "10"])
    assert bad.exit_code == 2 and "unknown score" in bad.output


def test_report_base():
    from pathlib import Path

    assert report_base(Path("a/b.jsonl.gz")) == Path("a/b")
    assert report_base(Path("b.jsonl")) == Path("b")
