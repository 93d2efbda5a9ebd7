"""Comparing the weights of two AdamW runs that differ only in float round-off."""


def assert_adamw_weights_close(actual: dict, expected: dict, *, lr: float) -> None:
    """Every weight within 1% of one step (``lr``), but for a few elements (at most 0.1% of
    a tensor, and none further than one whole step).

    AdamW steps by m / (sqrt(v) + 1e-8): for an element whose gradient is ~0, that ratio is
    round-off over round-off, so the all-reduce's (or another CPU's) round-off can move it
    by a visible share of a step. One such element of 2,048 moved 1.9% of a step on one host
    (the same element in the two-process and the sharded runs). A wrong average or a
    dropped shard moves most elements, which this still catches; the runs' losses and
    gradient norms are compared tightly by the callers.
    """
    assert set(actual) == set(expected)
    for name, want in expected.items():
        diff = (actual[name] - want).abs()
        assert float(diff.max()) <= lr, (name, float(diff.max()))
        off = int((diff > 0.01 * lr).sum())
        assert off <= max(1, want.numel() // 1000), (name, off, want.numel())
