"""Rows of the suite's one table, its JSON form, and the comparison with an earlier run.

Only numbers taken within one invocation are compared across runs: the speed-up
over the anchor and the share of the machine's limit. A drop is a regression when
it is larger than the noise both runs measured (the repeat spread of either side).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


@dataclass
class Row:
    """One workload: prefdyn's seconds for ``units`` of work and the anchor's for the same."""

    workload: str
    unit: str  # what one unit of work is ("step", "statement", "pair")
    units: float
    prefdyn_s: float
    prefdyn_peak_mb: float
    anchor: str | None = None
    anchor_s: float | None = None
    anchor_peak_mb: float | None = None
    limit: str | None = None  # "fp32 matmul 123 GFLOP/s", "read 20 GB/s"
    share: float | None = None  # of the limit reached by prefdyn
    noise: float = 0.0  # largest repeat spread of the two sides
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        return None if self.anchor_s is None else self.anchor_s / self.prefdyn_s


def _fmt_rate(units: float, seconds: float | None, unit: str) -> str:
    if seconds is None:
        return "-"
    rate = units / seconds
    return f"{rate:.3g} {unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}"


def print_table(rows: list[Row], title: str, skipped: dict[str, str]) -> None:
    table = Table(title=escape(title))
    for col in ("workload", "prefdyn", "anchor", "anchor figure", "speed-up", "limit", "share",
                "peak MB (prefdyn / anchor)", "noise"):
        table.add_column(col, justify="left" if col in ("workload", "anchor", "limit") else "right")
    for r in rows:
        table.add_row(r.workload, _fmt_rate(r.units, r.prefdyn_s, r.unit), r.anchor or "-",
                      _fmt_rate(r.units, r.anchor_s, r.unit),
                      f"{r.speedup:.2f}x" if r.speedup is not None else "-",
                      r.limit or "-", f"{r.share:.1%}" if r.share is not None else "-",
                      f"{r.prefdyn_peak_mb:.0f} / {r.anchor_peak_mb:.0f}" if r.anchor_peak_mb is not None
                      else f"{r.prefdyn_peak_mb:.0f}",
                      f"{r.noise:.0%}")
    console = Console(width=200)
    console.print(table)
    for r in rows:
        if r.note:
            console.print(escape(f"  {r.workload}: {r.note}"))
    for name, why in skipped.items():
        console.print(f"  [yellow]skipped[/yellow] {escape(name)}: {escape(why)}")


def write_json(path: Path, rows: list[Row], meta: dict, skipped: dict[str, str]) -> None:
    rows_out = [dict(asdict(r), speedup=r.speedup) for r in rows]
    path.write_text(json.dumps({"meta": meta, "rows": rows_out, "skipped": skipped}, indent=2))


def compare(old_path: Path, rows: list[Row]) -> list[str]:
    """Regressions of ``rows`` against the run saved at ``old_path``: one line each."""
    old = {r["workload"]: r for r in json.loads(Path(old_path).read_text())["rows"]}
    found = []
    for r in rows:
        before = old.get(r.workload)
        if before is None:
            continue
        noise = max(r.noise, before.get("noise", 0.0))
        for key, now in (("speedup", r.speedup), ("share", r.share)):
            then = before.get(key)
            if now is None or then is None or then <= 0:
                continue
            if now < then * (1 - noise):
                found.append(f"{r.workload}: {key} {then:.3g} -> {now:.3g} "
                             f"({now / then - 1:+.0%}, noise {noise:.0%})")
    return found
