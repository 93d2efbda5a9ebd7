"""Mirror metric records to TensorBoard, when asked for.

:class:`TensorBoardSink` is a History sink (anything with ``log(record)``):
every numeric field of a record becomes a scalar named
``<split>/<problem>[/<group>]/<metric>`` at the record's step. :class:`Tee`
feeds one History to several sinks (e.g. ``metrics.jsonl`` and TensorBoard).
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

_KEYS = ("step", "split", "problem", "group")


class TensorBoardSink:
    """Write records as TensorBoard scalars under ``log_dir`` (an event file)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("TensorBoard logging needs tensorboard: pip install tensorboard") from e
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, record: dict) -> None:
        prefix = "/".join(str(record[k]) for k in ("split", "problem", "group")
                          if record.get(k) is not None)
        step = int(record.get("step", 0))
        for key, value in record.items():
            if key in _KEYS or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}" if prefix else key, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Tee:
    """One sink that forwards every record to each of ``sinks`` (None entries skipped)."""

    def __init__(self, *sinks):
        self.sinks = [s for s in sinks if s is not None]

    def log(self, record: dict) -> None:
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        for sink in self.sinks:
            if hasattr(sink, "close"):
                sink.close()
