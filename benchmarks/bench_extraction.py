"""Benchmark g(x) extraction: plain batches vs shared-prefix key/value reuse.

The persona task with the chat template: every prompt is the system prompt,
``Is the following statement something you would say?\\n"{statement}"`` as the
user message, and the generation prompt, so all prompts share a long token
prefix. Runs the embedded SmolLM2-135M-Instruct on statements sampled from
``../shared/data/persona`` and prints statements/s and tokens/s for both
paths, the speed-up, and the machine's measured fp32 matmul GFLOP/s.

    python benchmarks/bench_extraction.py --n 200 --batch-size 16 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from prefdyn.embeddings import extract_embeddings
from prefdyn.embeddings._prefix import common_prefix_length
from prefdyn.models import load_model

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "persona"
QUESTION = 'Is the following statement something you would say?\n"{statement}"'


def matmul_gflops(size: int = 1024, seconds: float = 1.0) -> float:
    """Measured fp32 GFLOP/s of a square matmul loop (2 n^3 flops each)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2 * size**3 * done / (time.perf_counter() - start) / 1e9


def persona_statements(n: int, seed: int = 0) -> list[str]:
    """``n`` statements sampled (seeded) from all persona files, so lengths vary."""
    files = sorted(DATA.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no persona data at {DATA.resolve()} (expected ../shared/data/persona)")
    statements = [json.loads(line)["statement"] for f in files for line in f.read_text().splitlines()]
    return random.Random(seed).sample(statements, n)


def time_paths(model, tok, texts: list[str], batch_size: int, chunk: int, repeats: int):
    """Best wall and CPU seconds of each path (False: plain, True: prefix reuse), and its g(x).

    The machine may be shared: the two paths alternate chunk by chunk so that
    load from other processes hits both alike, and CPU time (all our threads)
    is kept too, as that load disturbs it less.
    """
    wall = {False: [], True: []}
    cpu = {False: [], True: []}
    results = {False: [], True: []}
    for repeat in range(repeats):
        for reuse in (False, True):
            wall[reuse].append(0.0)
            cpu[reuse].append(0.0)
        for start in range(0, len(texts), chunk):
            for reuse in (False, True):
                t0, c0 = time.perf_counter(), time.process_time()
                g = extract_embeddings(model, tok, texts[start : start + chunk],
                                       batch_size=batch_size, reuse_prefix=reuse, progress=False)
                wall[reuse][-1] += time.perf_counter() - t0
                cpu[reuse][-1] += time.process_time() - c0
                if repeat == 0:
                    results[reuse].append(g)
    return ({reuse: min(times) for reuse, times in wall.items()},
            {reuse: min(times) for reuse, times in cpu.items()},
            {reuse: torch.cat(gs) for reuse, gs in results.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="statements")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (best is kept)")
    parser.add_argument("--chunk", type=int, default=64, help="statements timed per turn of each path")
    args = parser.parse_args()

    console = Console(width=120)
    gflops = matmul_gflops()
    loaded = load_model()
    tok, model = loaded.tokenizer, loaded.model
    texts = [tok.apply_chat_template([{"role": "user", "content": QUESTION.format(statement=s)}],
                                     tokenize=False, add_generation_prompt=True)
             for s in persona_statements(args.n)]
    token_ids = tok(texts, add_special_tokens=False)["input_ids"]
    n_tokens = sum(len(ids) for ids in token_ids)
    prefix_len = common_prefix_length(token_ids)
    n_chunks = -(-len(texts) // args.chunk)  # the prefix runs once per chunk
    computed = {False: n_tokens, True: n_tokens - prefix_len * (len(texts) - n_chunks)}

    extract_embeddings(model, tok, texts[:4], progress=False)  # warm-up
    best, best_cpu, results = time_paths(model, tok, texts, args.batch_size, args.chunk, args.repeats)
    rel = ((results[True] - results[False]).norm(dim=-1) / results[False].norm(dim=-1)).max().item()

    table = Table(title=f"g(x) extraction, {loaded.name}, {len(texts)} persona prompts (chat template), "
                        f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    for column in ("path", "wall s", "statements/s", "prompt tokens/s", "tokens run", "speed-up",
                   "CPU s", "speed-up (CPU)"):
        table.add_column(column, justify="right")
    for reuse, label in ((False, "plain"), (True, "prefix reuse")):
        secs = best[reuse]
        table.add_row(label, f"{secs:.1f}", f"{len(texts) / secs:.1f}", f"{n_tokens / secs:.0f}",
                      str(computed[reuse]), f"{best[False] / secs:.2f}x",
                      f"{best_cpu[reuse]:.1f}", f"{best_cpu[False] / best_cpu[reuse]:.2f}x")
    console.print(table)
    console.print(f"mean prompt {n_tokens / len(texts):.1f} tokens, shared prefix {prefix_len} tokens; "
                  f"max relative difference reuse vs plain {rel:.1e}; "
                  f"fp32 matmul (1024x1024) {gflops:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
