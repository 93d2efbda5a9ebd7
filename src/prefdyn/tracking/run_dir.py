"""A run folder: resolved config, seed, environment, metrics JSONL, plots, summary.

Everything is written as soon as it exists (metrics are appended and flushed
line by line) so that a run that fails part-way keeps what it computed. Under a
launcher only rank 0 writes (``RunDir.writes``): the other processes compute the same
run and read the folder (checkpoints to resume from), but write nothing into it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from prefdyn._runtime import environment_record, is_main_process


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no NaN/inf; keep them readable
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    return obj


class RunDir:
    """One experiment's output folder.

    Files: ``config.yaml`` (resolved config and seed), ``environment.json``
    (package versions, device), ``metrics.jsonl`` (one record a line),
    ``summary.json`` (headline figures), ``*.png`` plots, ``report.html``.
    ``writes``: False on the processes of a launched run other than rank 0 (module
    docstring); their config, environment, metrics and JSON go nowhere, and code that
    writes into :meth:`file` paths itself checks it.
    """

    def __init__(self, path: str | Path, *, config: Any = None, seed: int | None = None,
                 device: Any = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._metrics = None
        self.started = time.time()
        self.writes = is_main_process()
        if not self.writes:
            return
        if config is not None or seed is not None:
            self.write_config(config, seed)
        (self.path / "environment.json").write_text(
            json.dumps(environment_record(device), indent=2))

    def write_config(self, config: Any, seed: int | None) -> None:
        if not self.writes:
            return
        record = {"seed": seed, "config": _jsonable(config)}
        (self.path / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False))

    def log(self, record: dict) -> None:
        """Append one metrics record to ``metrics.jsonl`` and flush it."""
        if not self.writes:
            return
        if self._metrics is None:
            self._metrics = open(self.path / "metrics.jsonl", "a")
        self._metrics.write(json.dumps(_jsonable(record)) + "\n")
        self._metrics.flush()

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.path / name
        if self.writes:
            p.write_text(json.dumps(_jsonable(obj), indent=2))
        return p

    def write_summary(self, summary: dict) -> Path:
        summary = {**summary, "wall_seconds": round(time.time() - self.started, 2)}
        return self.write_json("summary.json", summary)

    def file(self, name: str) -> Path:
        return self.path / name

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict]:
    """Read a ``metrics.jsonl`` back."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
