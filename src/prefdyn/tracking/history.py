"""In-memory record of what was tracked, mirrored to ``metrics.jsonl``."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


class History:
    """Flat metric records ``{"step", "split", "problem", "group", <metric>: value, ...}``.

    ``group`` is None for a whole problem and the sub-group (behavior) name for a
    mixture's per-behavior rows.
    """

    def __init__(self, sink=None):
        self.records: list[dict] = []
        self._sink = sink  # e.g. a RunDir: anything with .log(record)

    def add(self, record: dict) -> None:
        self.records.append(record)
        if self._sink is not None:
            self._sink.log(record)

    def curves(self, metric: str, *, split: str = "train", by: str = "problem"
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(steps, {name: values}) for ``metric``; ``by="group"`` gives a mixture's
        per-behavior curves, ``by="problem"`` the whole-problem ones."""
        series: dict[str, dict[int, float]] = defaultdict(dict)
        for r in self.records:
            if r.get("split") != split or metric not in r:
                continue
            if by == "problem" and r.get("group") is None:
                series[r["problem"]][r["step"]] = r[metric]
            elif by == "group" and r.get("group") is not None:
                series[r["group"]][r["step"]] = r[metric]
        steps = sorted({s for d in series.values() for s in d})
        return np.array(steps), {k: np.array([d.get(s, np.nan) for s in steps], dtype=float)
                                 for k, d in series.items()}

    def last(self, metric: str, *, split: str = "train", by: str = "problem") -> dict[str, float]:
        _, curves = self.curves(metric, split=split, by=by)
        return {k: float(v[~np.isnan(v)][-1]) for k, v in curves.items() if (~np.isnan(v)).any()}
