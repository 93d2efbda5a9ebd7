"""The benchmark suite's machinery (no timing is asserted: only what is counted and compared)."""

import json

import torch

from benchmarks.__main__ import parse_args
from benchmarks._report import Row, compare, write_json
from benchmarks._timing import PeakMemory, alternate


def test_sides_take_turns_and_every_repeat_is_kept():
    calls = []
    t = alternate({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2},
                  repeats=3, device=torch.device("cpu"))
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then turns
    assert len(t["a"].seconds) == 3 and t["b"].result == 2


def test_peak_memory_sees_a_large_temporary():
    with PeakMemory(torch.device("cpu"), interval=0.0005) as mem:
        x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
        x.add_(1)
        del x
    assert mem.peak > 32 << 20


def _row(speedup, share, noise, name="w"):
    return Row(workload=name, unit="step", units=1, prefdyn_s=1.0, prefdyn_peak_mb=0.0,
               anchor="a", anchor_s=speedup, share=share, noise=noise)


def test_compare_flags_only_drops_beyond_the_noise(tmp_path):
    old = tmp_path / "old.json"
    write_json(old, [_row(4.0, 0.5, 0.10), _row(2.0, 0.2, 0.0, name="other")], {}, {})
    assert json.loads(old.read_text())["rows"][0]["speedup"] == 4.0
    assert compare(old, [_row(3.7, 0.48, 0.05)]) == []  # -7.5% and -4%: inside 10% noise
    found = compare(old, [_row(3.0, 0.5, 0.05), _row(2.0, 0.1, 0.0, name="other")])
    assert len(found) == 2
    assert found[0].startswith("w: speedup 4 -> 3") and found[1].startswith("other: share 0.2 -> 0.1")
    assert compare(old, [_row(1.0, 0.1, 0.0, name="new workload")]) == []


def test_cli_defaults_and_unknown_workload(capsys):
    args = parse_args([])
    assert args.quick and args.repeats == 2 and "last_layer" in args.names
    assert not parse_args(["--full"]).quick
    try:
        parse_args(["--only", "nope"])
    except SystemExit as e:
        assert e.code == 2
    assert "unknown workloads" in capsys.readouterr().err
