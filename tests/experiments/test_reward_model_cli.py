"""``prefdyn rl reward-model`` end to end on a tiny model and tiny HH-RLHF file."""

import json

from typer.testing import CliRunner

from prefdyn.cli.app import app
from tests.data._helpers import write_lines


def _hh_file(path, n=12):
    lines = []
    for i in range(n):
        head = f"\n\nHuman: Question number {i}?\n\nAssistant:"
        lines.append(json.dumps({"chosen": head + " Yes", "rejected": head + " No"}))
    return write_lines(path, lines, gz=True)


def test_reward_model_verb_trains_reports_accuracy_then_reads_the_store(tiny_model_dir, tmp_path):
    pairs = _hh_file(tmp_path / "hh.jsonl.gz")
    args = ["rl", "reward-model", "--model", str(tiny_model_dir), "--pairs", str(pairs),
            "--cache-dir", str(tmp_path / "cache"), "--n-train", "8", "--n-test", "4",
            "--steps", "30", "--lr", "0.05", "--batch-size", "4"]
    first = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    run = tmp_path / "a" / "reward_model"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_train"] == 8 and summary["n_test"] == 4 and not summary["from_cache"]
    assert summary["heldout_accuracy"] == 1.0 and summary["settings"]["train_layers"] == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("problem") == "reward_model"] == list(range(1, 31))
    assert (run / "report.html").is_file()
    stored = list((tmp_path / "cache" / "reward_model").glob("*.safetensors"))
    assert [p.stem for p in stored] == [summary["key"]]

    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    cached = json.loads((tmp_path / "b" / "reward_model" / "summary.json").read_text())
    assert cached["from_cache"] and cached["heldout_accuracy"] == summary["heldout_accuracy"]
