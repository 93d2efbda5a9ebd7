"""A CLI LM experiment killed with SIGKILL part-way and run again with the same command
continues every training run from its last checkpoint and ends with the summary of an
unbroken run; finished runs are restored, not trained again."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prefdyn.experiments._resume import checkpoint_every

REPO = Path(__file__).resolve().parents[2]

# The real CLI entry point; fit_lm (as the experiments call it) gets one more callback
# that counts the steps each run trains and SIGKILLs the process at (run, step).
_CHILD = textwrap.dedent("""
    import os, signal, sys
    import prefdyn.experiments.lm_common as lm_common
    from prefdyn.cli.app import app
    from prefdyn.tracking.callbacks import Callback

    kill_run, kill_step = sys.argv[1], int(sys.argv[2])

    class CountAndKill(Callback):
        def __init__(self, name):
            self.name, self.trained = name, 0
        def on_step_end(self, state, policy, out):
            self.trained += 1
            if self.name == kill_run and state.step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
        def on_train_end(self, state, policy):
            print(f"TRAINED {self.name} {self.trained}", flush=True)

    real_fit_lm = lm_common.fit_lm

    def fit_lm(*args, callbacks=(), name="lm", **kwargs):
        return real_fit_lm(*args, callbacks=[*callbacks, CountAndKill(name)], name=name, **kwargs)

    lm_common.fit_lm = fit_lm
    app(sys.argv[3:])
""")


def _run(args: list[str], kill_run: str = "", kill_step: int = -1, *, cache: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
           "PREFDYN_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _CHILD, kill_run, str(kill_step), *args],
                          check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def _trained(stdout: str) -> dict[str, int]:
    return {line.split()[1]: int(line.split()[2]) for line in stdout.splitlines()
            if line.startswith("TRAINED ")}


def _numbers(obj, prefix=""):
    """Every number of a nested summary, keyed by its path (timings left out)."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() if key not in ("wall_seconds", "seconds")
                for k, v in _numbers(val, f"{prefix}/{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in _numbers(val, f"{prefix}/{i}").items()}
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        return {prefix: obj}
    return {prefix: float(obj)}


def test_checkpoint_every_lands_on_evaluation_steps():
    assert checkpoint_every(6, 2) == 2 and checkpoint_every(20, 5) == 5
    assert checkpoint_every(75, 5) == 20 and checkpoint_every(3) == 1 and checkpoint_every(1, 10) == 10


def test_killed_lm_experiment_resumes_to_the_unbroken_summary(tiny_model_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  eval_every: 2\n")
    args = ["lm", "misalignment", "--preset", "quick", "--mode", "lora", "--model", str(tiny_model_dir),
            "--cache-dir", str(tmp_path / "cache"), "--behaviors", "kindness,patience", "--n", "12",
            "--steps", "6", "--batch-size", "4", "--config", str(config), "--no-per-behavior"]
    cache = tmp_path / "prefdyn-cache"
    unbroken = _run([*args, "--out", str(tmp_path / "unbroken")], cache=cache)
    assert unbroken.returncode == 0, unbroken.stderr
    assert _trained(unbroken.stdout) == {"align": 6, "flip_from_base": 6, "flip_from_aligned": 6}

    out = tmp_path / "broken"
    killed = _run([*args, "--out", str(out)], "flip_from_base", 3, cache=cache)
    assert killed.returncode == -9, killed.stderr
    runs = out / "misalignment_lora" / "checkpoints"
    assert (runs / "flip_from_base" / "checkpoints" / "latest").read_text() == "step_00000002"
    assert not (out / "misalignment_lora" / "summary.json").exists()
    # a finished run keeps its final weights only; the interrupted one its optimizer state too
    assert not (runs / "align" / "checkpoints" / "step_00000006" / "optimizer.safetensors").exists()
    assert (runs / "align" / "checkpoints" / "step_00000006" / "model.safetensors").exists()
    assert (runs / "flip_from_base" / "checkpoints" / "step_00000002" / "optimizer.safetensors").exists()

    resumed = _run([*args, "--out", str(out)], cache=cache)
    assert resumed.returncode == 0, resumed.stderr
    # align finished before the kill: restored, not trained; flip_from_base goes on from step 2
    assert _trained(resumed.stdout) == {"align": 0, "flip_from_base": 4, "flip_from_aligned": 6}
    assert [p.name for p in (runs / "align" / "checkpoints").glob("step_*")] == ["step_00000006"]

    # metrics.jsonl reads as the unbroken run's: the same records, none twice
    def records(root):
        lines = (root / "misalignment_lora" / "metrics.jsonl").read_text().splitlines()
        return sorted((r.get("problem"), r.get("split"), r.get("kind"), r.get("step"))
                      for r in map(json.loads, lines))
    assert records(out) == records(tmp_path / "unbroken")

    want = _numbers(json.loads((tmp_path / "unbroken" / "misalignment_lora" / "summary.json").read_text()))
    got = _numbers(json.loads((out / "misalignment_lora" / "summary.json").read_text()))
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float) and not math.isnan(value):
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert got[key] == value or (isinstance(value, float) and math.isnan(got[key])), key


def test_a_run_of_other_settings_starts_from_scratch_and_keeps_records_up_to_the_checkpoint(tmp_path):
    from prefdyn.experiments._resume import ResumableRun
    from prefdyn.tracking.run_dir import RunDir

    sink = RunDir(tmp_path)
    first = ResumableRun(sink, "align/run 1", {"config": {"lr": 1.0}})
    assert first.folder == tmp_path / "checkpoints" / "align_run_1"
    history = first.history()
    for step in (0, 2, 3):
        history.add({"step": step, "split": "test", "problem": "align", "loss": 1.0 / (step + 1)})
    (first.folder / "checkpoints").mkdir()
    (first.folder / "checkpoints" / "latest").write_text("step_00000002")
    again = ResumableRun(sink, "align/run 1", {"config": {"lr": 1.0}})
    assert [r["step"] for r in again.history().records] == [0, 2]  # step 3 came after the checkpoint
    other = ResumableRun(sink, "align/run 1", {"config": {"lr": 2.0}})
    assert other.history().records == [] and not (other.folder / "checkpoints").exists()
    assert ResumableRun(None, "x", {}).fit_kwargs(10) == {}
