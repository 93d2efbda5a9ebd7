"""The RL benchmark's arithmetic (no timing asserted): rates from the timed steps only."""

import pytest

from benchmarks.workloads import WORKLOADS
from benchmarks.workloads.rl_step import build_parser, summarize


def test_rates_skip_the_warm_up_step_and_the_bandit_has_one_sample_a_prompt():
    args = build_parser().parse_args(["--prompts", "4", "--k", "2"])
    side = {"step_times": [30.0, 2.0, 6.0], "losses": [0.1, 0.2, 0.3], "peak_gb": 1.5,
            "objective": "x"}
    s = summarize(args, {"prefdyn": side, "prefdyn-bandit": side})
    assert s["prefdyn"]["s_step"] == 4.0 and s["prefdyn"]["prompts_s"] == 1.0
    assert s["prefdyn"]["samples_s"] == 2.0 and s["prefdyn-bandit"]["samples_s"] == 1.0
    assert s["prefdyn"]["spread"] == pytest.approx(1.0)  # (6 - 2) / median 4


def test_the_suite_lists_both_rl_rows():
    assert {"rl_step", "rl_bandit"} <= set(WORKLOADS)
