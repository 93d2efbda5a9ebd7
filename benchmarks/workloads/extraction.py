"""g(x) extraction: shared-prefix key/value reuse against the plain padded path.

The persona task with the chat template: every prompt is the system prompt, the
question around the statement, and the generation prompt, so all prompts share a
long token prefix. Statements are sampled (seeded) from ``../shared/data/persona``.
The limit is the matmul rate: the forward pass costs 2 flops per non-embedding
parameter per token actually run (the prefix once per call, then every suffix).
With ``--dtype bf16`` the row is the shared-prefix path with bf16 matmuls
(autocast) against the same path in fp32, and states the largest relative
difference of g(x) from fp32.
"""

from __future__ import annotations

import json
import random

import torch

from benchmarks._context import DATA, Context, Skip, non_embedding_params
from benchmarks._report import Row
from benchmarks._timing import alternate
from prefdyn.embeddings import extract_embeddings
from prefdyn.embeddings._prefix import common_prefix_length

QUESTION = 'Is the following statement something you would say?\n"{statement}"'


QUICK, FULL = (32, 16), (400, 16)  # (statements, batch size)


def persona_statements(n: int, seed: int = 0) -> list[str]:
    """``n`` statements sampled (seeded) from all persona files, so lengths vary."""
    files = sorted((DATA / "persona").glob("*.jsonl"))
    if not files:
        raise Skip(f"no persona data at {(DATA / 'persona').resolve()}")
    statements = [json.loads(line)["statement"] for f in files for line in f.read_text().splitlines()]
    return random.Random(seed).sample(statements, n)


def run(ctx: Context) -> Row:
    n, batch_size = QUICK if ctx.quick else FULL
    loaded = ctx.model()
    tok, model = loaded.tokenizer, loaded.model
    texts = [tok.apply_chat_template([{"role": "user", "content": QUESTION.format(statement=s)}],
                                     tokenize=False, add_generation_prompt=True)
             for s in persona_statements(n)]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    n_tokens, prefix = sum(map(len, ids)), common_prefix_length(ids)

    def side(reuse: bool, autocast: torch.dtype | None = None):
        return lambda: extract_embeddings(model, tok, texts, batch_size=batch_size, reuse_prefix=reuse,
                                          autocast=autocast)

    if ctx.dtype == "bf16":
        sides = {"bf16": side(True, torch.bfloat16), "fp32": side(True)}
        anchor, dtype = "the same path in fp32", "bf16"
    else:
        sides = {"reuse": side(True), "plain": side(False)}
        anchor, dtype = "plain padded batches", "fp32"
    t = alternate(sides, repeats=ctx.repeats, device=ctx.device)
    ours, theirs = t.values()
    rel = float(((ours.result - theirs.result).norm(dim=-1) / theirs.result.norm(dim=-1)).max())
    flops = 2 * non_embedding_params(model) * (n_tokens - prefix * (n - 1))
    gflops = ctx.limits.matmul_gflops[dtype]
    return Row(
        workload=f"extraction {n} persona prompts ({dtype})", unit="statement", units=n,
        prefdyn_s=ours.median, prefdyn_peak_mb=ours.peak_bytes / 1e6,
        anchor=anchor, anchor_s=theirs.median, anchor_peak_mb=theirs.peak_bytes / 1e6,
        limit=f"{dtype} matmul {gflops:.0f} GFLOP/s", share=flops / ours.median / 1e9 / gflops,
        noise=max(ours.spread, theirs.spread),
        note=(f"{n_tokens / n:.1f} tokens a prompt, {prefix} shared; FLOPs = 2 x non-embedding "
              f"params x tokens run ({flops / 1e9:.1f} GFLOP); max relative difference of g(x) {rel:.1e}"),
        extra={"gflop": flops / 1e9, "max_rel_diff": rel})
