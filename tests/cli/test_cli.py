"""The CLI through its real entry point (``python -m prefdyn``), once per verb."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def prefdyn(*args, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "prefdyn", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def common(tiny_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cli-cache")
    return ["--model", tiny_model_dir, "--n", "12", "--steps", "15", "--cache-dir", cache]


@pytest.mark.parametrize("verb", ["diagnose", "distinguishability", "priority", "misalignment"])
def test_verbs_write_a_run_folder(verb, common, tmp_path):
    r = prefdyn(verb, *common, "--out", tmp_path, "--behaviors", "kindness,patience,optimism", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    name = {"diagnose": "diagnostics"}.get(verb, verb)
    out = tmp_path / name
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    assert "report:" in r.stdout


def test_demo_writes_one_report(common, tmp_path):
    r = prefdyn("demo", *common, "--out", tmp_path / "demo", "--behaviors", "kindness,patience,optimism",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Distinguishability" in html


def test_config_file_then_flags(common, tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  steps: 7\n  beta: 0.5\nseed: 3\n")
    r = prefdyn("distinguishability", *common, "--config", tmp_path / "run.yaml", "--beta", "0.2",
                "--out", tmp_path, "--behaviors", "kindness,patience", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "distinguishability" / "summary.json").read_text())
    assert s["beta"] == 0.2  # the flag wins over the file
    assert s["steps"] == 15  # ... and flags given in `common` too


def test_user_errors_are_one_line_without_traceback(tmp_path):
    r = prefdyn("distinguishability", "--model", tmp_path / "no-such-model", "--out", tmp_path, cwd=tmp_path)
    assert r.returncode == 2
    assert "model not found" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jsonl").write_text('{"question": "q", "statement": "s"\n')
    r = prefdyn("diagnose", "--data", bad, "--out", tmp_path, cwd=tmp_path)
    assert r.returncode == 2 and "x.jsonl:1" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.yaml").write_text("train:\n  nope: 1\n")
    r = prefdyn("diagnose", "--config", tmp_path / "bad.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "nope" in r.stderr


def test_a_diverging_run_is_a_one_line_error_and_keeps_its_metrics(common, tmp_path):
    r = prefdyn("distinguishability", *common, "--lr", "1e12", "--out", tmp_path,
                "--behaviors", "kindness,patience", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: step 2: loss ")
    assert "the run diverged: the learning rate 1e+12 is likely too large" in errors[0]
    out = tmp_path / "distinguishability"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_at_step"] == 2 and summary["error"] == errors[0].removeprefix("error: ")
    steps = {json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert steps == {0} and not (out / "report.html").exists()


def test_filter_through_the_entry_point(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q{i}: say something.", "chosen": " Yes, gladly" + "!" * i, "rejected": " No"}
            for i in range(4)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = prefdyn("filter", pairs, "--out", tmp_path / "kept.jsonl", "--score", "ches",
                "--top-percent", "50", "--model", tiny_model_dir, "--cache-dir", tmp_path / "c",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    kept = (tmp_path / "kept.jsonl").read_text().splitlines()
    assert len(kept) == 2 and set(json.loads(kept[0])) == {"prompt", "chosen", "rejected"}
