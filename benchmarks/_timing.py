"""The one timing and peak-memory helper every workload uses.

Timings on a shared machine move by 10-40% between runs, so only ratios taken
within one invocation mean anything: :func:`alternate` runs the sides of a
comparison turn by turn (A B A B ...), keeps every repeat, and reports the median
and the spread (max - min over the median) that ``--compare`` takes as the noise.
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    """Seconds of each repeat of one side, its peak memory (bytes above the start) and
    the value its last call returned (a result to cross-check)."""

    seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    result: object = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median over the repeats: the noise of this measurement."""
        return (max(self.seconds) - min(self.seconds)) / self.median if len(self.seconds) > 1 else 0.0


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc), so a side's peak is not hidden
    by memory an earlier side freed but the process kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: peaks may read low after a larger side
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakMemory:
    """Peak memory of a block, above what was in use when it started.

    CUDA: the allocator's own peak. CPU: the growth of the process's resident set
    (after returning freed heap memory to the OS), sampled every ``interval`` seconds
    by a thread (a peak shorter than that can be missed).
    """

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _trim_heap()
        self._start = self._top = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._top = max(self._top, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self._top, _rss_bytes()) - self._start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(sides: dict[str, Callable[[], object]], *, repeats: int, device: torch.device,
              warmup: bool = True) -> dict[str, Timing]:
    """Time every side ``repeats`` times, the sides taking turns; one untimed warm-up call
    each first (``warmup``). Returns the :class:`Timing` of each side."""
    out = {name: Timing() for name in sides}
    if warmup:
        for fn in sides.values():
            fn()
    for _ in range(repeats):
        for name, fn in sides.items():
            sync(device)
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                out[name].result = fn()
                sync(device)
                out[name].seconds.append(time.perf_counter() - start)
            out[name].peak_bytes = max(out[name].peak_bytes, mem.peak)
    return out
