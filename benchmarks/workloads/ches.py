"""CHES hidden sums (Razin et al., 2024): length-sorted batches against one pair at a time.

The first pairs of the HH-RLHF harmless-base test split (``../shared/data/hh-rlhf``;
malformed pairs skipped). Both sides compute the float64 sums S+ and S-, which
must agree (relative 1e-5). The limit is the matmul rate at 2 flops per
non-embedding parameter per token (the batched side also runs its pads).
"""

from __future__ import annotations

from benchmarks._context import DATA, Context, Skip, non_embedding_params
from benchmarks._report import Row
from benchmarks._timing import alternate
from prefdyn.data import load_pairs
from prefdyn.diagnostics.ches import pair_hidden_sums, pair_hidden_sums_naive

RTOL = 1e-5


QUICK, FULL = (8, 8), (64, 8)  # (pairs, batch size)


def run(ctx: Context) -> Row:
    ctx.fp32_only("ches")
    n, batch_size = QUICK if ctx.quick else FULL
    path = DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    if not path.exists():
        raise Skip(f"no HH-RLHF data at {path.resolve()}")
    pairs = load_pairs(path, on_error="skip")[:n]
    loaded = ctx.model()
    model, tok = loaded.model, loaded.tokenizer
    n_tokens = sum(len(tok(p.prompt + r, add_special_tokens=False)["input_ids"])
                   for p in pairs for r in (p.chosen, p.rejected))
    t = alternate({
        "batched": lambda: pair_hidden_sums(model, tok, pairs, batch_size=batch_size, device=ctx.device),
        "naive": lambda: pair_hidden_sums_naive(model, tok, pairs, device=ctx.device),
    }, repeats=ctx.repeats, device=ctx.device)
    batched, naive = t["batched"], t["naive"]
    err = max(float((b - a).abs().max() / a.abs().max().clamp(min=1e-30))
              for b, a in zip(batched.result[:2], naive.result[:2]))
    flops = 2 * non_embedding_params(model) * n_tokens
    gflops = ctx.limits.matmul_gflops["fp32"]
    return Row(
        workload=f"CHES sums {len(pairs)} HH-RLHF pairs", unit="pair", units=len(pairs),
        prefdyn_s=batched.median, prefdyn_peak_mb=batched.peak_bytes / 1e6,
        anchor="one pair at a time", anchor_s=naive.median, anchor_peak_mb=naive.peak_bytes / 1e6,
        limit=f"fp32 matmul {gflops:.0f} GFLOP/s", share=flops / batched.median / 1e9 / gflops,
        noise=max(batched.spread, naive.spread),
        note=(f"{n_tokens} tokens; FLOPs = 2 x non-embedding params x tokens ({flops / 1e9:.1f} GFLOP); "
              f"agreement {err:.1e} ({'OK' if err <= RTOL else 'FAIL'} at {RTOL:g})"),
        extra={"gflop": flops / 1e9, "rel_err": err})
