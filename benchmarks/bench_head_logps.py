"""The LM head and token log-softmax of an RL step: the head's (rows, V) logits then the
chunked log-softmax (``token_logps(head(h))``) against the fused head that never holds
them (``head_token_logps``), forward and backward, sides taking turns in one invocation.

Rows are response tokens (64 samples x 64 tokens by default), the head SmolLM2-135M's
unembedding (V = 49,152, d = 576), fp32, a gradient into both the hidden states and the
head. Printed: seconds and peak memory (above the start) of each side, and the largest
differences of their log-probs and gradients.

    python benchmarks/bench_head_logps.py --repeats 3
    python benchmarks/bench_head_logps.py --device cuda
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._timing import alternate
from prefdyn.policies._token_logps import head_token_logps, token_logps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64 * 64)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--width", type=int, default=576)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(args.width, args.vocab, bias=False).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(args.vocab, args.width, generator=gen) * 0.05)
    hidden = torch.randn(args.rows, args.width, generator=gen).to(device).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.rows,), generator=gen).to(device)
    weights = torch.randn(args.rows, generator=gen).to(device)

    def side(fn):
        def run():
            hidden.grad = head.weight.grad = None
            logps = fn()
            (logps * weights).sum().backward()
            return logps.detach(), hidden.grad, head.weight.grad
        return run

    timings = alternate({"head, then token_logps": side(lambda: token_logps(head(hidden), targets)),
                         "head_token_logps (fused)": side(lambda: head_token_logps(head, hidden,
                                                                                    targets))},
                        repeats=args.repeats, device=device)
    print(f"{args.rows} rows x V={args.vocab} x d={args.width}, fp32 on {device}, "
          f"{args.repeats} repeats")
    print(f"{'side':28s} {'median s':>9s} {'spread':>7s} {'peak MB':>9s}")
    for name, t in timings.items():
        print(f"{name:28s} {t.median:9.3f} {t.spread:7.0%} {t.peak_bytes / 1e6:9.0f}")
    (a, b) = (t.result for t in timings.values())
    diffs = [float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b)]
    print("largest difference / largest value: log-probs {:.1e}, hidden grad {:.1e}, head grad "
          "{:.1e}".format(*diffs))


if __name__ == "__main__":
    main()
