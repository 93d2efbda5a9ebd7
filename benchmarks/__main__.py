"""Every benchmark in one invocation, one table: ``python -m benchmarks``.

    python -m benchmarks --quick                   # a few minutes on 2 CPU cores
    python -m benchmarks --full --json run.json    # the sizes the README quotes
    python -m benchmarks --quick --only last_layer,extraction --compare run.json

Each row: prefdyn's figure, its anchor's figure measured in the same invocation
(the sides take turns), the speed-up, the machine's limit measured in the same
invocation and the share of it reached, and peak memory. Timings on a shared
machine move by 10-40% between runs: compare ratios, never absolute times, across
runs. ``--compare OLD.json`` flags a speed-up or share that dropped by more than
the noise measured (exit status 1).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks._context import Context, Skip
from benchmarks._limits import measure_limits
from benchmarks._report import compare, print_table, write_json
from benchmarks.workloads import WORKLOADS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="small sizes, a few minutes on 2 CPU cores (default)")
    size.add_argument("--full", dest="quick", action="store_false", help="the README's sizes")
    p.add_argument("--only", default=None, help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--repeats", type=int, default=None, help="timed turns per side (default 2 quick, 3 full)")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    p.add_argument("--compare", type=Path, default=None, help="an earlier --json to check against")
    args = p.parse_args(argv)
    names = list(WORKLOADS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to torch")
    args.names = names
    args.repeats = args.repeats or (2 if args.quick else 3)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    limits = measure_limits(device, args.quick)
    ctx = Context(device=device, dtype=args.dtype, quick=args.quick, repeats=args.repeats, limits=limits)
    rows, skipped = [], {}
    for name in args.names:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            rows.append(WORKLOADS[name](ctx))
        except Skip as e:
            skipped[name] = str(e)
    meta = {"size": "quick" if args.quick else "full", "device": str(device), "dtype": args.dtype,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "limits": limits.to_dict(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    title = (f"prefdyn benchmarks ({meta['size']}, {device}, {args.dtype}, {meta['threads']} threads): "
             f"fp32 matmul {limits.matmul_gflops['fp32']:.0f} GFLOP/s, bf16 "
             f"{limits.matmul_gflops['bf16']:.0f} GFLOP/s, read {limits.read_gbs:.1f} GB/s")
    print_table(rows, title, skipped)
    if args.json:
        write_json(args.json, rows, meta, skipped)
    if args.compare:
        regressions = compare(args.compare, rows)
        for line in regressions:
            print(f"REGRESSION {line}")
        if regressions:
            return 1
        print(f"no regression beyond the measured noise against {args.compare}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
