"""An experiment's outcome, written to its run folder and shown in the HTML report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefdyn.reports import Report, fig_to_png_bytes
from prefdyn.reports import close_figure
from prefdyn.tracking.run_dir import RunDir


@dataclass
class Figure:
    """A rendered plot: file name in the run folder, PNG bytes and caption."""

    name: str
    png: bytes
    caption: str


@dataclass
class ExperimentResult:
    """Headline numbers (``summary``, also ``summary.json``), plots, tables and notes."""

    name: str
    title: str
    explanation: str
    summary: dict[str, Any]
    headlines: list[tuple[str, str, str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_figure(self, name: str, fig, caption: str) -> None:
        png = fig_to_png_bytes(fig)
        close_figure(fig)
        self.figures.append(Figure(name, png, caption))

    def write(self, run: RunDir) -> None:
        """PNG plots and ``summary.json`` into ``run`` (nothing where it does not write)."""
        if not run.writes:
            return
        for f in self.figures:
            run.file(f"{f.name}.png").write_bytes(f.png)
        run.write_summary({"experiment": self.name, **self.summary,
                           "tables": {caption: rows for caption, rows in self.tables},
                           "notes": self.notes, "warnings": self.warnings})

    def add_to(self, report: Report, *, headlines: bool = True) -> None:
        """This experiment as a section of ``report`` (and its headline cards)."""
        if headlines:
            for label, value, note in self.headlines:
                report.headline(label, value, note=note)
        sec = report.section(self.title, text=self.explanation)
        for i in range(0, len(self.figures), 2):
            pair = self.figures[i:i + 2]
            sec.figures([f.png for f in pair], [f.caption for f in pair])
        for caption, rows in self.tables:
            sec.table(rows, caption=caption)
        for note in self.notes:
            sec.note(note, kind="info", title="What this says")
        for warning in self.warnings:
            sec.note(warning, kind="warning")


def fmt(x: float, digits: int = 2) -> str:
    """A headline number: fixed decimals, 'n/a' for NaN."""
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"
