"""Decoding through oneDNN with prepacked weights against ``F.linear`` (MKL), fp32 CPU.

Two tables, the sides taking turns in one invocation:

1. each linear shape of SmolLM2-135M at the rows of a decode step (one token a
   sample) and of a prefill: ms and GFLOP/s of ``F.linear`` and of
   ``torch.ops.mkldnn._linear_pointwise`` on a weight reordered once;
2. :meth:`prefdyn.policies.rollout.RolloutStream.sample` on the embedded model
   (persona prompts, ``--prompts`` x ``--k`` samples of ``--new-tokens``), with
   ``prepack`` on and off: seconds a rollout batch.

    python benchmarks/bench_prepacked_linear.py --repeats 3
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks._timing import alternate

SHAPES = {"q/o 576x576": (576, 576), "k/v 192x576": (192, 576), "gate/up 1536x576": (1536, 576),
          "down 576x1536": (576, 1536), "unembedding 49152x576": (49152, 576)}


def linear_table(rows: list[int], repeats: int) -> None:
    cpu = torch.device("cpu")
    print(f"{'shape':24s} {'rows':>5s} {'F.linear ms':>12s} {'GFLOP/s':>8s} {'oneDNN ms':>10s} "
          f"{'GFLOP/s':>8s} {'x':>5s} {'max |diff|':>10s}")
    for M in rows:
        for name, (out_f, in_f) in SHAPES.items():
            W, x = torch.randn(out_f, in_f) * 0.02, torch.randn(M, in_f)
            packed = torch.ops.mkldnn._reorder_linear_weight(W, M)
            n = max(1, int(2e8 // (2 * M * out_f * in_f)))  # ~0.2 GFLOP a timed call

            def plain():
                for _ in range(n):
                    y = F.linear(x, W)
                return y

            def onednn():
                for _ in range(n):
                    y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
                return y

            t = alternate({"plain": plain, "onednn": onednn}, repeats=repeats, device=cpu)
            gflop = 2 * M * out_f * in_f * n / 1e9
            a, b = t["plain"].median, t["onednn"].median
            diff = float((t["plain"].result - t["onednn"].result).abs().max())
            print(f"{name:24s} {M:5d} {a / n * 1e3:12.3f} {gflop / a:8.1f} {b / n * 1e3:10.3f} "
                  f"{gflop / b:8.1f} {a / b:5.2f} {diff:10.1e}")


def rollout_table(args) -> None:
    from benchmarks.workloads.trl_sides import persona_rows
    from prefdyn.models import load_model
    from prefdyn.policies.rollout import RolloutStream
    from prefdyn.rewards import get_reward

    loaded = load_model(None)
    prompts, _, _ = persona_rows(loaded.tokenizer, None, "agreeableness", args.prompts * 4)
    streams = {name: RolloutStream(loaded.model, loaded.tokenizer, prompts, get_reward("sentiment"),
                                   group_size=args.k, prompts_per_batch=args.prompts,
                                   max_new_tokens=args.new_tokens, seed=0, prepack=prepack)
               for name, prepack in (("F.linear", False), ("oneDNN prepacked", True))}
    t = alternate({name: (lambda s=s: s.sample(list(range(args.prompts))))
                   for name, s in streams.items()}, repeats=args.repeats, device=torch.device("cpu"))
    base = t["F.linear"].median
    print(f"\nRolloutStream.sample, {args.prompts} prompts x k = {args.k}, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    for name, timing in t.items():
        print(f"  {name:18s} {timing.median:6.2f} s  (x{base / timing.median:.2f}, noise "
              f"{timing.spread:.0%})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", default="16,64,512", help="rows of the products in table 1")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--skip-rollout", action="store_true")
    args = p.parse_args()
    linear_table([int(r) for r in args.rows.split(",")], args.repeats)
    if not args.skip_rollout:
        rollout_table(args)


if __name__ == "__main__":
    main()
