"""RL step: prefdyn's GRPO step (rollouts) against TRL's GRPOTrainer, and the bandit's
exact expected gradient (no generation) against TRL's sampled one-token GRPO.

Same model (the embedded SmolLM2-135M-Instruct, or ``--model``; fp32, full fine-tuning;
on ``--device``), same
prompts (chat-templated persona prompts; each side draws them in its own order),
prompts per step, group size k, max new tokens, sampling (temperature 1, no
top-k/top-p), reward, AdamW lr (constant, no weight decay), gradient clipping 1.0,
GRPO loss (group-normalised advantage, clip 0.2) and KL weight beta (k3 estimator,
a frozen reference model on both sides). TRL's ``loss_type="dr_grpo"`` is prefdyn's
sequence-summed loss divided by the constant ``max_completion_length``, so prefdyn's
losses are printed divided by it (the same units). Sides, each in its own
subprocess so that peak memory (max RSS; on ``--device cuda`` the allocator's peak) is per
side, run one after the other:

* ``prefdyn``         :func:`prefdyn.training.rl_runner.fit_rl` with a
                      :class:`~prefdyn.policies.rollout.RolloutStream` (batched
                      ``generate`` with a KV cache, each prompt prefilled once for its
                      k samples; log-probs with each group's prompt once) and ``grpo``;
* ``prefdyn-forward`` the same, but the policy runs its own training forward instead
                      of taking the decode's layer inputs
                      (:mod:`prefdyn.policies._decode_replay`; not in the default sides);
* ``trl``             ``GRPOTrainer`` (``num_iterations=1``, one generation per step);
* ``prefdyn-bandit``  ``expected_reward`` on the same prompts: the exact gradient of
                      E_{y~pi}[r] over the whole vocabulary, one forward, no sampling;
* ``trl-bandit``      ``GRPOTrainer`` with one new token and the same +1/-1 reward
                      (the sampled estimator of that gradient).

Reward: VADER sentiment of the response (prefdyn's ``sentiment`` reward, called by
both sides); for the bandit +1 for the behavior's answer token, -1 otherwise.
prompts/s = prompts per step / mean step time over ``--steps`` steps after one
warm-up step (a step: sample, score, reference log-probs, forward, backward, AdamW).
With ``--rounds R`` the sides run in turn R times (A B A B ...), each time in a fresh
process; the mean pools every round's timed steps and each round's ratio is printed
too, so that a drift in the shared machine's speed shows instead of deciding a ratio.

    python -m benchmarks --only rl_step,rl_bandit
    python -m benchmarks.workloads.rl_step --steps 3 --sides prefdyn,trl
    python -m benchmarks.workloads.rl_step --steps 2 --rounds 2 --prompts 8 --k 8 \
        --new-tokens 64 --activation-checkpointing --sides prefdyn,trl
    python -m benchmarks.workloads.rl_step --device cuda --sides prefdyn,trl
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._report import Row
from benchmarks.workloads._worker import run_worker
from benchmarks.workloads.trl_sides import (
    _diffs,
    trainer_clock,
    load_average,
    peak_rss_gb,
    persona_rows,
    synced_clock,
)

DEFAULT_SIDES = ("prefdyn", "trl", "prefdyn-bandit", "trl-bandit")
SIDES = (*DEFAULT_SIDES, "prefdyn-forward")
TARGET_VS_TRL = 3.0
QUICK = {"steps": 2, "prompts": 4, "k": 4, "new_tokens": 16}
FULL = {"steps": 5, "prompts": 8, "k": 8, "new_tokens": 64}


def _data(args, tok):
    total = (args.steps + 1) * args.prompts
    prompts, prefers_yes, answers = persona_rows(tok, args.data, args.behavior, total)
    targets = [answers[0] if y else answers[1] for y in prefers_yes]
    return prompts, targets


# ----------------------------------------------------------------------------- sides


def run_prefdyn(args, bandit: bool) -> dict:
    import torch

    from prefdyn.models import answer_token_ids, load_model
    from prefdyn.policies.bandit import BanditPolicy, BanditStream
    from prefdyn.policies.rollout import RolloutPolicy, RolloutStream
    from prefdyn.rewards import get_reward
    from prefdyn.tracking.callbacks import Callback
    from prefdyn.training import TrainConfig
    from prefdyn.training.rl_runner import fit_rl

    loaded = load_model(args.model, device=args.device)
    tok, model = loaded.tokenizer, loaded.model
    prompts, targets = _data(args, tok)
    total = args.steps + 1

    class Probe(Callback):
        def __init__(self):
            self.times, self.losses = [], []

        def on_train_start(self, state, policy) -> None:
            self.times.append(synced_clock())

        def on_step_end(self, state, policy, out) -> None:
            self.losses.append(out.loss.item() / (1 if bandit else args.new_tokens))
            self.times.append(synced_clock())

    t0 = time.perf_counter()
    reference = copy.deepcopy(model).requires_grad_(False) if args.beta > 0 else None
    model.requires_grad_(True)
    if bandit:
        ids = tok(prompts, add_special_tokens=False)["input_ids"]
        stream = BanditStream(ids, answer_token_ids(tok, targets), vocab_size=model.config.vocab_size,
                              pad_id=tok.pad_token_id, batch_size=args.prompts, seed=args.seed)
        policy, loss, loss_kwargs = BanditPolicy(model, reference=reference), "expected_reward", {}
    else:
        stream = RolloutStream(model, tok, prompts, get_reward("sentiment"), group_size=args.k,
                               prompts_per_batch=args.prompts, max_new_tokens=args.new_tokens,
                               temperature=1.0, seed=args.seed, reference=reference,
                               replay=args.worker != "prefdyn-forward")
        policy, loss, loss_kwargs = RolloutPolicy(model), "grpo", {"scale": "group", "clip_eps": 0.2}
    probe = Probe()
    cfg = TrainConfig(loss=loss, optimizer="adamw", lr=args.lr, weight_decay=0.0, steps=total,
                      log_every=total, seed=args.seed,
                      activation_checkpointing=args.activation_checkpointing)
    torch.manual_seed(args.seed)
    fit_rl(model, policy, stream, cfg, loss_kwargs={**loss_kwargs, "beta": args.beta},
           callbacks=[probe], max_grad_norm=1.0)
    what = ("exact -E_pi[r] + beta KL over the vocabulary (no samples)" if bandit else
            f"GRPO, sum over tokens / {args.new_tokens} (= TRL dr_grpo)")
    return {"setup_s": probe.times[0] - t0, "step_times": _diffs(probe.times),
            "losses": probe.losses, "peak_gb": peak_rss_gb(args.device), "objective": what}


def run_trl(args, bandit: bool) -> dict:
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:  # pragma: no cover - optional benchmark dependency
        raise SystemExit(f"the TRL sides need trl and datasets: pip install -e .[bench] ({e})") from e

    from prefdyn.models import load_model
    from prefdyn.rewards import get_reward

    loaded = load_model(args.model, device=args.device)
    tok = loaded.tokenizer
    prompts, targets = _data(args, tok)
    total = args.steps + 1
    k = args.k
    dataset = Dataset.from_list([{"prompt": p, "target": t} for p, t in zip(prompts, targets)])
    sentiment = get_reward("sentiment")

    def sentiment_reward(prompts, completions, **kwargs):
        return sentiment(prompts, completions).tolist()

    def answer_reward(prompts, completions, target, **kwargs):
        return [1.0 if c == t else -1.0 for c, t in zip(completions, target)]

    losses: list[float] = []
    clock, times = trainer_clock()

    class BenchGRPOTrainer(GRPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                losses.append((out[0] if return_outputs else out).item())
            return out

    with tempfile.TemporaryDirectory() as out_dir:
        config = GRPOConfig(
            output_dir=out_dir, per_device_train_batch_size=args.prompts * k, num_generations=k,
            max_completion_length=1 if bandit else args.new_tokens, temperature=1.0, top_k=0,
            top_p=1.0, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=1.0, beta=args.beta, loss_type="dr_grpo",
            scale_rewards="group", epsilon=0.2, num_iterations=1, max_steps=total,
            logging_steps=1, report_to="none", save_strategy="no", bf16=False, fp16=False,
            use_cpu=args.device == "cpu", seed=args.seed, shuffle_dataset=False, dataloader_num_workers=0,
            disable_tqdm=True)
        t0 = time.perf_counter()
        trainer = BenchGRPOTrainer(model=loaded.model,
                                   reward_funcs=answer_reward if bandit else sentiment_reward,
                                   args=config, train_dataset=dataset, processing_class=tok,
                                   callbacks=[clock])
        trainer.train()
    what = (f"GRPO dr_grpo, 1 new token, {k} samples a prompt" if bandit else
            f"GRPO dr_grpo (sum over tokens / {args.new_tokens})")
    return {"setup_s": times[0] - t0, "step_times": _diffs(times), "losses": losses,
            "peak_gb": peak_rss_gb(args.device), "objective": what}


def worker(args) -> None:
    bandit = args.worker.endswith("bandit")
    result = run_prefdyn(args, bandit) if args.worker.startswith("prefdyn") else run_trl(args, bandit)
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent


def run_side(side: str, args) -> dict | None:
    return run_worker("benchmarks.workloads.rl_step", side, [
        "--steps", str(args.steps), "--prompts", str(args.prompts), "--k", str(args.k),
        "--new-tokens", str(args.new_tokens), "--lr", str(args.lr), "--beta", str(args.beta),
        "--behavior", args.behavior, "--seed", str(args.seed), "--device", args.device,
        *(["--model", args.model] if args.model else []), *(["--data", args.data] if args.data else []),
        *(["--activation-checkpointing"] if args.activation_checkpointing else [])])


def summarize(args, results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per side, over its rounds (``results[side]``: one worker result a round): seconds a
    step (the mean of every round's timed steps), prompts/s, samples/s, peak GB (the
    highest), each round's seconds a step, the first round's losses and whether every
    round had the same ones, objective."""
    out = {}
    for side, rounds in results.items():
        timed = [t for r in rounds for t in r["step_times"][1:]]
        s_step = statistics.fmean(timed)
        samples = args.prompts * (1 if side == "prefdyn-bandit" else args.k)
        out[side] = {"s_step": s_step, "prompts_s": args.prompts / s_step,
                     "samples_s": samples / s_step, "peak_gb": max(r["peak_gb"] for r in rounds),
                     "round_s": [statistics.fmean(r["step_times"][1:]) for r in rounds],
                     "losses": rounds[0]["losses"],
                     "losses_agree": all(r["losses"] == rounds[0]["losses"] for r in rounds),
                     "objective": rounds[0]["objective"], "spread": _spread(timed)}
    return out


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def print_summary(args, summary: dict[str, dict], load_before: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"RL step: {args.model or 'SmolLM2-135M'} fp32 full on {args.device}, "
                        f"{args.prompts} prompts x k={args.k}, "
                        f"{args.new_tokens} new tokens, beta {args.beta:g}, AdamW {args.lr:g}, "
                        f"{args.steps} steps after 1 warm-up"
                        f"{f' x {args.rounds} rounds' if args.rounds > 1 else ''}, load "
                        f"{load_before} before")
    for col in ("side", "s/step", "prompts/s", "samples/s", "peak GB", "loss per step", "objective"):
        table.add_column(col, justify="left" if col in ("side", "objective", "loss per step") else "right")
    for side, s in summary.items():
        table.add_row(side, f"{s['s_step']:.2f}", f"{s['prompts_s']:.3f}", f"{s['samples_s']:.3f}",
                      f"{s['peak_gb']:.2f}", " ".join(f"{x:.4f}" for x in s["losses"]), s["objective"])
    console = Console(width=200)
    console.print(table)
    for ours, theirs in (("prefdyn", "trl"), ("prefdyn-bandit", "trl-bandit")):
        if ours in summary and theirs in summary:
            a, b = summary[ours], summary[theirs]
            rounds = ""
            if len(a["round_s"]) > 1:
                rounds = " (by round: " + ", ".join(
                    f"{tb / ta:.2f}x" for ta, tb in zip(a["round_s"], b["round_s"])) + ")"
            console.print(f"{ours}: {a['prompts_s'] / b['prompts_s']:.2f}x {theirs}'s prompts/s"
                          f"{rounds} (target >= {TARGET_VS_TRL:g}x) at "
                          f"{a['peak_gb'] / b['peak_gb']:.0%} of its peak memory; load average "
                          f"now {load_average()}")
    for side, s in summary.items():
        if not s["losses_agree"]:
            console.print(f"{side}: the rounds' losses differ (the first round's are shown)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=QUICK["steps"], help="timed steps after one warm-up")
    p.add_argument("--prompts", type=int, default=QUICK["prompts"], help="prompts a step")
    p.add_argument("--k", type=int, default=QUICK["k"], help="samples a prompt (group size)")
    p.add_argument("--new-tokens", type=int, default=QUICK["new_tokens"])
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--behavior", default="agreeableness")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]; every side runs there "
                   "(peak memory is then the CUDA allocator's peak)")
    p.add_argument("--model", default=None, help="a .gguf file or model folder (default: the "
                   "embedded SmolLM2-135M-Instruct)")
    p.add_argument("--data", default=None, help="persona folder (default ../shared/data/persona, "
                   "else the bundled demo data)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="prefdyn's sides recompute the layers in the backward, as TRL's default does")
    p.add_argument("--rounds", type=int, default=1, help="run the sides in turn this many "
                   "times (A B A B ...); rates pool every round's timed steps, and each "
                   "round's ratio is printed")
    p.add_argument("--sides", default=",".join(DEFAULT_SIDES),
                   help=f"comma list of {', '.join(SIDES)}")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p


def run_sides(args, sides) -> dict[str, list[dict]]:
    """Each side's results, one a round: the sides run in turn, ``args.rounds`` times
    (A B A B ...), so that a drift of the machine's speed reaches both sides of a ratio.
    A side that fails in any round is left out."""
    results: dict[str, list[dict | None]] = {s: [] for s in sides}
    for _ in range(args.rounds):
        for s in sides:
            results[s].append(run_side(s, args))
    return {s: rs for s, rs in results.items() if all(r is not None for r in rs)}


# ----------------------------------------------------------------------------- suite rows


def _row(ctx, ours: str, theirs: str, label: str) -> Row:
    import importlib.util

    ctx.fp32_only(ours)
    size = QUICK if ctx.quick else FULL
    args = build_parser().parse_args([f"--{k.replace('_', '-')}={v}" for k, v in size.items()]
                                     + [f"--device={ctx.device}"])
    have_trl = all(importlib.util.find_spec(m) is not None for m in ("trl", "datasets"))
    summary = summarize(args, run_sides(args, [ours] + ([theirs] if have_trl else [])))
    if ours not in summary:
        raise RuntimeError(f"the {ours} side failed (its output is above)")
    a = summary[ours]
    row = Row(workload=label.format(**size), unit="prompt", units=args.prompts,
              prefdyn_s=a["s_step"], prefdyn_peak_mb=a["peak_gb"] * 1e3, noise=a["spread"],
              extra={"samples_s": a["samples_s"], "losses": a["losses"]})
    note = (f"{a['samples_s']:.3g} samples/s; losses {[round(x, 4) for x in a['losses']]} "
            f"({a['objective']})")
    b = summary.get(theirs)
    if b is not None:
        row.anchor, row.anchor_s = f"TRL GRPOTrainer ({theirs})", b["s_step"]
        row.anchor_peak_mb, row.noise = b["peak_gb"] * 1e3, max(a["spread"], b["spread"])
        note += (f"; TRL {b['samples_s']:.3g} samples/s, losses "
                 f"{[round(x, 4) for x in b['losses']]} ({b['objective']}); target >= "
                 f"{TARGET_VS_TRL:g}x TRL's prompts/s at no more memory")
    else:
        note += "; TRL anchor skipped: trl/datasets not installed (pip install -e .[bench])"
    row.note = note
    return row


def run(ctx) -> Row:
    """The suite's GRPO rollout row: prefdyn against TRL's GRPOTrainer."""
    return _row(ctx, "prefdyn", "trl", "RL GRPO step, persona prompts x k={k}, {new_tokens} "
                "new tokens, SmolLM2-135M full")


def run_bandit(ctx) -> Row:
    """The suite's bandit row: the exact expected gradient against TRL's sampled one-token GRPO."""
    return _row(ctx, "prefdyn-bandit", "trl-bandit", "RL bandit exact expected gradient (no "
                "generation) vs sampled 1-token GRPO x k={k}")


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if [s for s in sides if s not in SIDES]:
        p.error(f"unknown sides; choose from {', '.join(SIDES)}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    load_before = load_average()
    print_summary(args, summarize(args, run_sides(args, sides)), load_before)


if __name__ == "__main__":
    main()
