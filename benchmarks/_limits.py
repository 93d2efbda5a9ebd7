"""The machine's physical limits, measured in the same invocation: small probes.

Matmul rate (a square product, 2 n^3 flops) in fp32 and bf16, and main-memory read
bandwidth (a sum over a buffer several times the last-level cache, so it cannot be
served from cache). Each probe keeps its best of a few tries: the limit is what the
machine can do, and load from other processes only ever lowers a try.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from benchmarks._timing import sync


@dataclass
class Limits:
    matmul_gflops: dict[str, float]  # dtype name -> GFLOP/s
    read_gbs: float  # main-memory read bandwidth, GB/s

    def to_dict(self) -> dict:
        return asdict(self)


def _best_seconds(fn, device: torch.device, tries: int) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 1024, tries: int = 5) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    reps = 4 if device.type == "cpu" else 50

    def run():
        for _ in range(reps):
            a @ b

    return 2 * n**3 * reps / _best_seconds(run, device, tries) / 1e9


def read_gbs(device: torch.device, megabytes: int = 256, tries: int = 5) -> float:
    x = torch.ones(megabytes * (1 << 20) // 4, device=device)
    return x.numel() * 4 / _best_seconds(x.sum, device, tries) / 1e9


def measure_limits(device: torch.device, quick: bool) -> Limits:
    rates = {name: matmul_gflops(device, dtype, n=512 if quick and device.type == "cpu" else 1024)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return Limits(rates, read_gbs(device, megabytes=128 if quick else 512))
