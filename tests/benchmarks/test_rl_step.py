"""The RL benchmark's arithmetic (no timing asserted): rates from the timed steps only."""

import pytest

from benchmarks.workloads import WORKLOADS
from benchmarks.workloads.rl_step import build_parser, summarize


def test_rates_skip_the_warm_up_step_and_the_bandit_has_one_sample_a_prompt():
    args = build_parser().parse_args(["--prompts", "4", "--k", "2"])
    side = {"step_times": [30.0, 2.0, 6.0], "losses": [0.1, 0.2, 0.3], "peak_gb": 1.5,
            "objective": "x"}
    s = summarize(args, {"prefdyn": [side], "prefdyn-bandit": [side]})
    assert s["prefdyn"]["s_step"] == 4.0 and s["prefdyn"]["prompts_s"] == 1.0
    assert s["prefdyn"]["samples_s"] == 2.0 and s["prefdyn-bandit"]["samples_s"] == 1.0
    assert s["prefdyn"]["spread"] == pytest.approx(1.0)  # (6 - 2) / median 4


def test_rounds_pool_their_timed_steps_keep_each_round_and_flag_other_losses():
    args = build_parser().parse_args(["--prompts", "4", "--rounds", "2"])
    first = {"step_times": [30.0, 2.0, 6.0], "losses": [0.1, 0.2, 0.3], "peak_gb": 1.5,
             "objective": "x"}
    second = {**first, "step_times": [20.0, 8.0, 8.0], "peak_gb": 2.5}
    s = summarize(args, {"prefdyn": [first, second]})["prefdyn"]
    assert s["s_step"] == 6.0 and s["round_s"] == [4.0, 8.0]  # warm-ups left out
    assert s["peak_gb"] == 2.5 and s["losses"] == [0.1, 0.2, 0.3] and s["losses_agree"]
    other = summarize(args, {"prefdyn": [first, {**second, "losses": [0.1, 0.2, 0.4]}]})
    assert not other["prefdyn"]["losses_agree"]


def test_the_sides_take_turns_round_by_round_and_a_side_failing_once_is_left_out(monkeypatch):
    from benchmarks.workloads import rl_step

    calls = []

    def fake_side(side, args):
        calls.append(side)
        return None if side == "trl" and len(calls) == 4 else {"side": side}

    monkeypatch.setattr(rl_step, "run_side", fake_side)
    args = build_parser().parse_args(["--rounds", "2"])
    results = rl_step.run_sides(args, ["prefdyn", "trl"])
    assert calls == ["prefdyn", "trl", "prefdyn", "trl"]
    assert results == {"prefdyn": [{"side": "prefdyn"}] * 2}


def test_the_suite_lists_both_rl_rows():
    assert {"rl_step", "rl_bandit"} <= set(WORKLOADS)


def test_a_side_runs_in_its_own_process_and_a_failed_one_is_left_out(tmp_path, capsys):
    from benchmarks.workloads._worker import run_worker

    (tmp_path / "fake_side.py").write_text(
        "import json, sys\n"
        "args = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        "if args['--worker'] == 'bad':\n"
        "    sys.exit(3)\n"
        "json.dump({'setup_s': 0.5, 'step_times': [3.0, 1.0, 2.0], 'peak_gb': 0.1,\n"
        "           'losses': [float(args['--lr'])]}, open(args['--result'], 'w'))\n")
    env = {"PYTHONPATH": str(tmp_path)}
    got = run_worker("fake_side", "good", ["--lr", "0.25"], env=env)
    assert got["losses"] == [0.25] and got["step_times"] == [3.0, 1.0, 2.0] and got["wall_s"] > 0
    assert "good: setup 0.5 s, warm-up 3.0 s, 1.50 s/step" in capsys.readouterr().out
    assert run_worker("fake_side", "bad", [], env=env) is None
    assert "bad FAILED (exit 3)" in capsys.readouterr().out
