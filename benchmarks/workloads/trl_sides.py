"""LM DPO step on the single-token persona task: prefdyn against TRL's DPOTrainer.

Same model (the embedded SmolLM2-135M-Instruct, full fine-tuning; fp32, or with
``--dtype bf16`` mixed precision on every side; on ``--device``), same
data in the same order (chat-templated persona prompts, answers "Yes"/"No"),
batch, AdamW lr (constant, no weight decay), beta, sigmoid DPO loss and gradient
clipping (1.0, TRL's default). Sides, each in its own subprocess so that peak
memory (max RSS) is per side, run one after the other (never in parallel):

* ``prefdyn-plain``   fit_lm, one left-padded prompt forward per pair, lm_head at
                      the answer position only, reference computed once for all
                      rows before the first step (in "setup", like trl-precompute);
* ``prefdyn-shared``  the same, the batch packed into one sequence: the common
                      token prefix once, then each row's suffix, a block mask,
                      no pads (``LMPolicy(share_prefix=True)``, the default);
* ``trl``             DPOTrainer defaults (reference model forward every step);
* ``trl-precompute``  DPOTrainer with ``precompute_ref_log_probs=True`` (the
                      reference pass happens while the trainer is built: "setup");
* ``trl-keepmem``     trl-precompute with glibc malloc never returning memory to
                      the OS (``GLIBC_TUNABLES``, no mmap, no trim): faster, more memory.

pairs/s = batch / mean step time over ``--steps`` steps after one warm-up step
(a step: fetch batch, forward, backward, AdamW; for ``trl`` also the reference).
Losses at step 0 and after ``--steps`` updates are printed for every side.
By default TRL's end-of-turn token (which TRL appends to every response) is
dropped from its data, so both sides optimize the same objective and their losses
must agree to ~1e-4 at every step (printed); ``--trl-eos keep`` keeps it (TRL's
default data, a different objective). TRL is an optional benchmark dependency
(``pip install -e .[bench]``), never imported by prefdyn itself.

In the suite (``python -m benchmarks --only lm_step``) prefdyn-shared runs against
TRL's default; all five sides, with their loss cross-check, stay available alone:

    python -m benchmarks.workloads.trl_sides --steps 10
    python -m benchmarks.workloads.trl_sides --steps 3 --sides prefdyn-plain,prefdyn-shared

The achieved FLOP rate counts 6 flops (forward and backward) per non-embedding
parameter per token of the shared-prefix step's minimal work (each batch's common
prefix once, then every row's suffix), plus the lm_head at each row's answer position.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.workloads._worker import run_worker

SIDES = ("prefdyn-plain", "prefdyn-shared", "trl", "trl-precompute", "trl-keepmem")
# glibc malloc that never hands memory back (no mmap, no trim): TRL's fastest CPU setting found.
KEEP_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "persona"
TARGET_VS_TRL, TARGET_VS_PRECOMPUTE, TARGET_MEMORY = 8.0, 5.0, 0.60


# ----------------------------------------------------------------------------- data


def persona_rows(tokenizer, data: str | None, behavior: str, n: int):
    """(prompts, prefers_yes, answers) of the first ``n`` rows of ``behavior``, chat template
    applied; the persona data folder if present, else prefdyn's bundled demo data."""
    from prefdyn.data import TaskConfig, build_behaviors, load_demo, load_persona_dir

    folder = Path(data) if data else DEFAULT_DATA
    if folder.is_dir():
        items = load_persona_dir(folder, behaviors=[behavior])
    else:
        items = load_demo()
        items = {behavior: items[behavior]} if behavior in items else dict([next(iter(items.items()))])
    b = build_behaviors(items, tokenizer, TaskConfig(chat_template=True))[0]
    rows = [i % b.n for i in range(n)]  # cycles only if the behavior has fewer than n rows
    return [b.prompts[i] for i in rows], [bool(b.prefers_yes[i]) for i in rows], b.answers


def peak_rss_gb(device: str = "cpu") -> float:
    """Peak memory of this side: the process's max resident set (Linux: KiB), or on CUDA
    the allocator's peak."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# ----------------------------------------------------------------------------- sides


def run_prefdyn(args, share_prefix: bool) -> dict:
    import torch

    from prefdyn.models import answer_token_ids, load_model
    from prefdyn.tracking.callbacks import Callback
    from prefdyn.training import TrainConfig
    from prefdyn.training.lm_data import collate_prompts
    from prefdyn.policies.lm import LMPolicy, to_device
    from prefdyn.training.lm_runner import fit_lm

    loaded = load_model(None, device=args.device)
    tok = loaded.tokenizer
    total = args.steps + 1
    prompts, prefers_yes, answers = persona_rows(tok, args.data, args.behavior, total * args.batch_size)
    yes_id, no_id = answer_token_ids(tok, list(answers))
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    B = args.batch_size
    batches = [to_device(collate_prompts(ids[k * B:(k + 1) * B], range(k * B, (k + 1) * B),
                                         torch.tensor(prefers_yes[k * B:(k + 1) * B]), yes_id, no_id, pad),
                         args.device)
               for k in range(total)]

    class Probe(Callback):
        """Sets the prefix switch before the first batch; records time and loss per step."""

        def __init__(self):
            self.times: list[float] = []
            self.losses: list[float] = []

        def on_train_start(self, state, policy) -> None:
            policy.share_prefix = share_prefix
            self.times.append(time.perf_counter())

        def on_step_end(self, state, policy, out) -> None:
            self.losses.append(out.loss.item())
            self.times.append(time.perf_counter())

    probe = Probe()
    cfg = TrainConfig(loss="dpo", beta=args.beta, optimizer="adamw", lr=args.lr, weight_decay=0.0,
                      steps=total, log_every=total, precision=args.dtype)
    t0 = time.perf_counter()
    # The reference log-probs are computed once, before the first step (as TRL's
    # precompute_ref_log_probs does), by the starting weights = pi_ref; counted in setup.
    start = LMPolicy(loaded.model, share_prefix=share_prefix, autocast=cfg.autocast_dtype)
    with torch.no_grad():
        batches = [dataclasses.replace(b, ref_chosen=c, ref_rejected=r)
                   for b in batches for c, r in [start.pair(b)]]
    fit_lm(loaded, iter(batches), cfg, mode="full", steps=total, callbacks=[probe],
           max_grad_norm=1.0, device=args.device)
    return {"setup_s": probe.times[0] - t0, "step_times": _diffs(probe.times),
            "losses": probe.losses, "peak_gb": peak_rss_gb(args.device), "flops_step": step_flops(loaded.model, ids, B),
            "objective": f"log pi(answer|x), answers {answers[0]!r}/{answers[1]!r}, one token"}


def step_flops(model, ids: list[list[int]], batch_size: int) -> float:
    """Mean FLOPs of one full fine-tuning step (see the module docstring)."""
    from prefdyn.embeddings._prefix import common_prefix_length

    embed = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters() if p is not embed)
    batches = [ids[k:k + batch_size] for k in range(0, len(ids), batch_size)]
    tokens = [sum(map(len, b)) - common_prefix_length(b) * (len(b) - 1) for b in batches]
    return 6 * (params * sum(tokens) + embed.numel() * len(ids)) / len(batches)


def run_trl(args, precompute: bool) -> dict:
    import copy

    from torch.utils.data import SequentialSampler

    try:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer
    except ImportError as e:  # pragma: no cover - optional benchmark dependency
        raise SystemExit(f"the TRL sides need trl and datasets: pip install -e .[bench] ({e})") from e

    from prefdyn.models import answer_token_ids, load_model

    loaded = load_model(None, device=args.device)
    tok = loaded.tokenizer
    total = args.steps + 1
    prompts, prefers_yes, answers = persona_rows(tok, args.data, args.behavior, total * args.batch_size)
    yes, no = answers
    answer_ids = answer_token_ids(tok, [yes, no])
    drop_eos = args.trl_eos == "drop"
    eos_id = tok.eos_token_id
    prefdyn_prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    dataset = Dataset.from_list([{"prompt": p, "chosen": yes if y else no, "rejected": no if y else yes}
                                 for p, y in zip(prompts, prefers_yes)])
    losses: list[float] = []

    class BenchDPOTrainer(DPOTrainer):
        """DPOTrainer with the data in order, optionally without the end-of-turn token."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if drop_eos:
                def strip(example):
                    for key in ("chosen_ids", "rejected_ids"):
                        if example[key][-1:] == [eos_id]:
                            example[key] = example[key][:-1]
                    return example
                dataset = dataset.map(strip)
            # The cross-check needs TRL's tokens to be prefdyn's tokens.
            for i, example in enumerate(dataset):
                chosen, rejected = answer_ids if prefers_yes[i] else answer_ids[::-1]
                tail = [] if drop_eos else [eos_id]
                if (example["prompt_ids"] != prefdyn_prompt_ids[i]
                        or example["chosen_ids"] != [chosen, *tail]
                        or example["rejected_ids"] != [rejected, *tail]):
                    raise SystemExit(f"row {i}: TRL tokenized differently from prefdyn "
                                     f"(...{example['prompt_ids'][-3:]} + {example['chosen_ids']})")
            return dataset

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                losses.append((out[0] if return_outputs else out).item())
            return out

    clock, times = trainer_clock()

    with tempfile.TemporaryDirectory() as out_dir:
        config = DPOConfig(
            output_dir=out_dir, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            beta=args.beta, loss_type="sigmoid", max_steps=total, logging_steps=1, report_to="none",
            save_strategy="no", bf16=args.dtype == "bf16", fp16=False, use_cpu=args.device == "cpu",
            seed=args.seed,
            precompute_ref_log_probs=precompute, dataloader_num_workers=0, disable_tqdm=True)
        t0 = time.perf_counter()
        ref_model = None if precompute else copy.deepcopy(loaded.model)  # what prefdyn keeps too
        trainer = BenchDPOTrainer(model=loaded.model, ref_model=ref_model, args=config,
                                  train_dataset=dataset, processing_class=tok, callbacks=[clock])
        trainer.train()
    objective = (f"log pi(answer|x): TRL's appended end-of-turn token {tok.eos_token!r} dropped"
                 if drop_eos else
                 f"log pi(answer|x) + log pi({tok.eos_token!r}|x, answer): TRL's default data")
    return {"setup_s": times[0] - t0, "step_times": _diffs(times), "losses": losses,
            "peak_gb": peak_rss_gb(args.device), "objective": objective}


def trainer_clock():
    """(a TrainerCallback, the list it fills): the time at train start and after every step."""
    from transformers import TrainerCallback

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times.append(synced_clock())

        def on_step_end(self, *a, **k):
            times.append(synced_clock())

    return Clock(), times


def synced_clock() -> float:
    """``time.perf_counter()`` once every queued GPU kernel has finished (a step's time
    then holds all of its own work and none of the next one's)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _diffs(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def worker(args) -> None:
    side = args.worker
    if side.startswith("prefdyn"):
        result = run_prefdyn(args, share_prefix=side == "prefdyn-shared")
    else:
        result = run_trl(args, precompute=side in ("trl-precompute", "trl-keepmem"))
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent


def run_side(side: str, args) -> dict | None:
    return run_worker("benchmarks.workloads.trl_sides", side, [
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--beta", str(args.beta), "--behavior", args.behavior, "--trl-eos", args.trl_eos,
        "--seed", str(args.seed), "--dtype", args.dtype, "--device", args.device,
        *(["--data", args.data] if args.data else [])],
        env={"GLIBC_TUNABLES": KEEP_MEMORY} if side == "trl-keepmem" else None)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps, after one warm-up step")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma list of {', '.join(SIDES)}")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all sides, alternated; "
                   "s/step is the median over rounds")
    p.add_argument("--trl-eos", choices=("drop", "keep"), default="drop",
                   help="drop TRL's appended end-of-turn token (same objective as prefdyn) or keep it")
    p.add_argument("--data", default=None, help=f"persona folder (default {DEFAULT_DATA}, "
                   "else the bundled demo data)")
    p.add_argument("--behavior", default="agreeableness")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: mixed precision on every side (prefdyn precision='bf16', TRL bf16=True)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]; every side runs there")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in SIDES]
    if unknown or args.steps < 1 or args.repeats < 1:
        p.error(f"unknown sides {unknown}" if unknown else "--steps and --repeats must be >= 1")
    load_before = load_average()
    rounds: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(args.repeats):
        for side in sides:
            result = run_side(side, args)
            if result is not None:
                rounds[side].append(result)
    sides = [s for s in sides if rounds[s]]
    if sides:
        report(args, sides, rounds, load_before)


def report(args, sides, rounds, load_before: str) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    B, N = args.batch_size, args.steps
    summary = {}
    for side in sides:
        rs = rounds[side]
        s_step = statistics.median(statistics.fmean(r["step_times"][1:]) for r in rs)
        summary[side] = {"s_step": s_step, "pairs_s": B / s_step, "peak_gb": max(r["peak_gb"] for r in rs),
                         "setup_s": statistics.median(r["setup_s"] for r in rs), "losses": rs[0]["losses"],
                         "objective": rs[0]["objective"]}
    trl, pre = summary.get("trl"), summary.get("trl-precompute")
    table = Table(title=f"LM DPO, persona task: SmolLM2-135M {args.dtype} full on {args.device}, "
                        f"batch {B}, AdamW {args.lr:g}, "
                        f"beta {args.beta:g}, {N} steps after 1 warm-up, {torch.get_num_threads()} threads, "
                        f"load {load_before} before")
    for col in ("side", "setup s", "s/step", "pairs/s", "x TRL", "x TRL-pre", "peak GB", "mem/TRL",
                "loss step 0", f"loss after {N}"):
        table.add_column(col, justify="left" if col == "side" else "right")
    for side in sides:
        s = summary[side]
        table.add_row(side, f"{s['setup_s']:.1f}", f"{s['s_step']:.2f}", f"{s['pairs_s']:.2f}",
                      f"{s['pairs_s'] / trl['pairs_s']:.1f}" if trl else "-",
                      f"{s['pairs_s'] / pre['pairs_s']:.1f}" if pre else "-",
                      f"{s['peak_gb']:.2f}", f"{s['peak_gb'] / trl['peak_gb']:.0%}" if trl else "-",
                      f"{s['losses'][0]:.5f}", f"{s['losses'][N]:.5f}" if len(s["losses"]) > N else "-")
    console = Console(width=160)  # the table is wide; do not wrap it in a pipe
    console.print(table)
    console.print("Objectives:")
    for side in sides:
        console.print(f"  {side:15s} {summary[side]['objective']}")
    base = next((s for s in ("prefdyn-plain", "prefdyn-shared") if s in summary), None)
    if base:
        console.print(f"Losses against {base} at every step (max |difference| over {N + 1} steps):")
        for side in sides:
            if side == base:
                continue
            diff = max(abs(a - b) for a, b in zip(summary[side]["losses"], summary[base]["losses"]))
            same = side.startswith("prefdyn") or args.trl_eos == "drop"
            verdict = ("agree to 1e-4" if diff < 1e-4 else "DIFFER") if same else \
                "different objectives (TRL keeps the end-of-turn token)"
            console.print(f"  {side:15s} {diff:.2e}  {verdict}")
    shared = summary.get("prefdyn-shared")
    if shared and trl and pre:
        console.print(
            f"Targets (prefdyn-shared): {shared['pairs_s'] / trl['pairs_s']:.1f}x TRL default "
            f"(>= {TARGET_VS_TRL:g}x), {shared['pairs_s'] / pre['pairs_s']:.1f}x TRL-precompute "
            f"(>= {TARGET_VS_PRECOMPUTE:g}x), peak memory {shared['peak_gb'] / trl['peak_gb']:.0%} "
            f"of TRL default (<= {TARGET_MEMORY:.0%}); load average now {load_average()}")
    trl_sides = [s for s in sides if s.startswith("trl")]
    if shared and trl_sides:
        best = max(trl_sides, key=lambda s: summary[s]["pairs_s"])
        console.print(f"TRL's fastest side here: {best}, {summary[best]['s_step']:.2f} s/step, "
                      f"{summary[best]['peak_gb']:.2f} GB; prefdyn-shared is "
                      f"{shared['pairs_s'] / summary[best]['pairs_s']:.1f}x its pairs/s at "
                      f"{shared['peak_gb'] / summary[best]['peak_gb']:.0%} of its memory")


if __name__ == "__main__":
    main()
