"""Benchmark CHES hidden sums (Razin et al., 2024): batched vs one pair at a time.

Runs the embedded SmolLM2-135M-Instruct on the first N pairs of the HH-RLHF
harmless-base test split (``../shared/data/hh-rlhf``; the 9 malformed pairs are
skipped), computes the float64 hidden sums S+ and S- with
:func:`~prefdyn.diagnostics.ches.pair_hidden_sums` (length-sorted, left-padded
batches) and with the naive reference (one unpadded forward per sequence),
checks that they agree (relative 1e-5), and prints pairs/s and the speed-up.

    python benchmarks/bench_ches.py --n 64 --batch-size 8
    python benchmarks/bench_ches.py --n 2312
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from prefdyn.data import load_pairs
from prefdyn.diagnostics.ches import (
    ches_from_sums,
    pair_hidden_sums,
    pair_hidden_sums_naive,
)
from prefdyn.models import load_model

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| over a matrix (a norm-wise relative error)."""
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="pairs (2312 for the whole split)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rtol", type=float, default=1e-5)
    args = parser.parse_args()
    console = Console()

    pairs = load_pairs(DATA, on_error="skip")[: args.n]
    loaded = load_model(device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    n_tokens = sum(len(tok(p.prompt + r, add_special_tokens=False)["input_ids"])
                   for p in pairs for r in (p.chosen, p.rejected))
    console.print(f"{len(pairs)} HH-RLHF pairs, {n_tokens} tokens, {loaded.name}, "
                  f"{torch.get_num_threads()} threads, device {args.device}")

    pair_hidden_sums(model, tok, pairs[:2], batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    batched = pair_hidden_sums(model, tok, pairs, batch_size=args.batch_size, device=args.device)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    naive = pair_hidden_sums_naive(model, tok, pairs, device=args.device)
    t_naive = time.perf_counter() - start

    errors = {name: _relative_error(b, n) for name, b, n in
              zip(("sum_chosen", "sum_rejected"), batched[:2], naive[:2])}
    lengths_equal = torch.equal(batched[2], naive[2]) and torch.equal(batched[3], naive[3])
    ches_b, ches_n = ches_from_sums(*batched)["ches"], ches_from_sums(*naive)["ches"]

    table = Table(title="CHES hidden sums: batched vs one pair at a time")
    for col in ("path", "seconds", "pairs/s", "tokens/s", "speed-up"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row(f"batched (bs={args.batch_size})", f"{t_batched:.2f}", f"{len(pairs) / t_batched:.2f}",
                  f"{n_tokens / t_batched:.0f}", f"{t_naive / t_batched:.2f}x")
    table.add_row("naive loop", f"{t_naive:.2f}", f"{len(pairs) / t_naive:.2f}",
                  f"{n_tokens / t_naive:.0f}", "1.00x")
    console.print(table)
    worst = max(errors.values())
    ok = worst <= args.rtol and lengths_equal
    console.print(f"agreement (float64 sums, relative): {worst:.2e} "
                  f"({'OK' if ok else 'FAIL'} at rtol {args.rtol:g}); "
                  f"CHES max relative diff {_relative_error(ches_b, ches_n):.2e}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
