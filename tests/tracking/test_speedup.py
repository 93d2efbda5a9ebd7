import math

import numpy as np
import pytest

from prefdyn.tracking.metrics import METRICS, SPEEDUP, describe
from prefdyn.tracking.speedup import decrease, misalignment_speedup, speedups


def test_decrease_skips_nan_and_stops_at_the_budget():
    steps = np.array([0, 5, 10, 15])
    assert decrease(steps, [3.0, 2.0, np.nan, 0.5]) == 2.5
    assert decrease(steps, [3.0, 2.0, 1.0, 0.5], budget=10) == 2.0
    assert math.isnan(decrease(steps, [np.nan] * 4))


def test_speedup_is_the_ratio_of_the_drops_over_the_same_budget():
    steps = [0, 5, 10]
    # aligned start falls 3 - 1 = 2 over 10 steps, base start 1 - 0.5 = 0.5: 4x faster
    assert misalignment_speedup(steps, [3.0, 2.0, 1.0], [1.0, 0.8, 0.5]) == pytest.approx(4.0)
    # within the first 5 steps: 1.0 / 0.2
    assert misalignment_speedup(steps, [3.0, 2.0, 1.0], [1.0, 0.8, 0.5], budget=5) == pytest.approx(5.0)
    assert math.isnan(misalignment_speedup(steps, [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]))  # base did not move
    per, mean = speedups(steps, {"a": [2.0, 1.0, 0.0], "b": [1.0, 1.0, 1.0]},
                         {"a": [1.0, 0.5, 0.0], "b": [1.0, 1.0, 1.0], "c": [1.0, 0.0, 0.0]},
                         ["a", "b", "c"])
    assert per["a"] == pytest.approx(2.0) and math.isnan(per["b"]) and "c" not in per
    assert mean == pytest.approx(2.0)  # the finite ones only


def test_every_vocabulary_name_is_described_once():
    assert describe(SPEEDUP).startswith("speedup: misalignment speed-up")
    assert len(METRICS) == len(set(METRICS))
    with pytest.raises(KeyError, match="vocabulary"):
        describe("displaced_share")
