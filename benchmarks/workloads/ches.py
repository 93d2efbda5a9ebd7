"""CHES hidden sums: each pair's prompt once (packed rows) against one pair at a time.

The first pairs of the HH-RLHF harmless-base test split (``../shared/data/hh-rlhf``;
malformed pairs skipped). Every side computes the float64 sums S+ and S-, which
must agree (relative 1e-5 in fp32). prefdyn's side runs one packed row a pair (the
prompt once, both responses after it; :mod:`prefdyn.diagnostics._ches_pack`); the
anchor runs prompt+chosen and prompt+rejected as two unpadded forwards a pair; the
plain left-padded batches (the prompt twice, plus pads) are timed too and stated in
the note. The limit is the matmul rate at 2 flops per non-embedding parameter per
token that must run: each prompt once and each response but its last token
(attention's own flops, a few percent here, are not counted).
With ``--dtype bf16`` the row is the packed path with bf16 matmuls (autocast)
against the same path in fp32, with the largest relative difference of the sums.
"""

from __future__ import annotations

import torch

from benchmarks._context import DATA, Context, Skip, non_embedding_params
from benchmarks._report import Row
from benchmarks._timing import alternate
from prefdyn.data import load_pairs
from prefdyn.diagnostics._ches_pack import packed_tokens
from prefdyn.diagnostics.ches import _encode_pairs, pair_hidden_sums, pair_hidden_sums_naive

RTOL = 1e-5


QUICK, FULL = (8, 8), (64, 8)  # (pairs, batch size in sequences: batch_size // 2 packed pairs)


def _max_rel(got, want) -> float:
    return max(float((b - a).abs().max() / a.abs().max().clamp(min=1e-30)) for b, a in zip(got[:2], want[:2]))


def run(ctx: Context) -> Row:
    n, batch_size = QUICK if ctx.quick else FULL
    path = DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    if not path.exists():
        raise Skip(f"no HH-RLHF data at {path.resolve()}")
    pairs = load_pairs(path, on_error="skip")[:n]
    loaded = ctx.model()
    model, tok = loaded.model, loaded.tokenizer
    encoded = _encode_pairs(model, tok, pairs)
    plain_tokens, must_run = sum(len(ids) for ids, _ in encoded), packed_tokens(encoded)

    def packed(autocast: torch.dtype | None = None):
        return lambda: pair_hidden_sums(model, tok, pairs, batch_size=batch_size, device=ctx.device,
                                        autocast=autocast)

    if ctx.dtype == "bf16":
        t = alternate({"bf16": packed(torch.bfloat16), "fp32": packed()}, repeats=ctx.repeats, device=ctx.device)
        ours, theirs = t["bf16"], t["fp32"]
        anchor, dtype, extra_note = "the same path in fp32", "bf16", ""
        rel = _max_rel(ours.result, theirs.result)
        check = f"max relative difference of S+/S- from fp32 {rel:.1e}"
    else:
        t = alternate({
            "packed": packed(),
            "naive": lambda: pair_hidden_sums_naive(model, tok, pairs, device=ctx.device),
            "padded": lambda: pair_hidden_sums(model, tok, pairs, batch_size=batch_size, device=ctx.device,
                                               share_prompt=False),
        }, repeats=ctx.repeats, device=ctx.device)
        ours, theirs, padded = t["packed"], t["naive"], t["padded"]
        anchor, dtype = "one pair at a time", "fp32"
        rel = max(_max_rel(ours.result, theirs.result), _max_rel(padded.result, theirs.result))
        check = f"agreement {rel:.1e} ({'OK' if rel <= RTOL else 'FAIL'} at {RTOL:g})"
        extra_note = (f"; padded batches (prompt twice) {padded.median:.2f} s = "
                      f"{theirs.median / padded.median:.2f}x the anchor")
    flops = 2 * non_embedding_params(model) * must_run
    gflops = ctx.limits.matmul_gflops[dtype]
    return Row(
        workload=f"CHES sums {len(pairs)} HH-RLHF pairs ({dtype})", unit="pair", units=len(pairs),
        prefdyn_s=ours.median, prefdyn_peak_mb=ours.peak_bytes / 1e6,
        anchor=anchor, anchor_s=theirs.median, anchor_peak_mb=theirs.peak_bytes / 1e6,
        limit=f"{dtype} matmul {gflops:.0f} GFLOP/s", share=flops / ours.median / 1e9 / gflops,
        noise=max(ours.spread, theirs.spread),
        note=(f"{must_run} tokens must run (prompt once, responses but their last token) of "
              f"{plain_tokens} in the two sequences a pair; FLOPs = 2 x non-embedding params x "
              f"tokens that must run ({flops / 1e9:.1f} GFLOP){extra_note}; {check}"),
        extra={"gflop": flops / 1e9, "rel_err": rel, "tokens_must_run": must_run, "tokens_plain": plain_tokens})
