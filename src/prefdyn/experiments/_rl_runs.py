"""What the vanishing-gradient experiments (Razin et al., ICLR 2024) share: their params,
their spec, and RL fine-tuning (RFT) and SFT phases through the one loop.

Razin et al.'s RFT: "Maximize reward over unlabeled prompts via policy gradient methods"
on "Expected reward for input x: $V_{\\mathbf{x}}(\\theta) = \\mathbb{E}_{\\mathbf{y} \\sim
\\pi_{\\theta}(\\cdot | \\mathbf{x})} [r(\\mathbf{x}, \\mathbf{y})]$"; with Im & Li's (2024)
Eq. 3 KL penalty when ``experiment.kl_beta > 0``. SFT: "Minimize cross entropy loss over
labeled inputs". Both phases are :func:`prefdyn.training.loop.train` with a policy and a
registry objective, exactly as DPO runs; a :class:`RewardSpreadTracker` measures the
train and held-out inputs' spread at step 0, every ``train.eval_every`` steps and at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prefdyn._hashing import hash_obj, hash_tensor
from prefdyn.errors import PrefdynError
from prefdyn.experiments._rl_task import RLTask, build_rl_task
from prefdyn.experiments.spec import ExperimentSpec, Option, RunContext, register
from prefdyn.losses import get_loss
from prefdyn.losses.entropy import with_entropy_bonus
from prefdyn.policies.lm import apply_lora
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History
from prefdyn.tracking.reward_spread import InputSpread, RewardSpreadTracker
from prefdyn.training.config import TrainConfig
from prefdyn.training.rl_runner import fit_rl

log = logging.getLogger(__name__)

RL_ATTRIBUTION = (
    "Razin et al., 'Vanishing Gradients in Reinforcement Finetuning of Language Models', ICLR "
    "2024 (talk slides). Persona data: Anthropic model-written evaluations (Perez et al. 2022, "
    "arXiv 2212.09251), CC-BY-4.0. GRUE (Ramamurthy et al. 2023), the paper's benchmark, is "
    "not available here.")

PAPER_DEPARTURES = (
    "Razin et al. ran RFT (PPO) on the GRUE benchmark (7 generation data sets) with GPT-2 and "
    "T5-base. GRUE is not available here: the task is the persona bandit (or the registered "
    "task named by experiment.task); the model is the one given (default: the embedded "
    "SmolLM2-135M-Instruct); steps, batch and lr are prefdyn's choices (the slides state none).")

RL_DEFAULT_LR = 1e-5
SPLITS = {"train_eval": "train", "test": "held-out"}
"""The splits :func:`run_rft` measures by default, and their labels in reports."""
SAMPLED = ("reinforce", "rloo", "grpo", "ppo_clip")


@dataclass(frozen=True)
class RLParams:
    """The ``experiment:`` params every vanishing-gradient experiment shares.

    ``task`` names an RL task (:mod:`prefdyn.experiments._rl_task`; the hook for any
    registered task) and ``reward`` overrides its reward; ``mode`` full | lora;
    ``group_size`` k: samples per prompt of the sampled objectives, of the measured
    ``frac_reward_zero_std`` and of a Monte Carlo spread; ``temperature`` of the policy;
    ``kl_beta`` Eq. 3's beta (0: no penalty, no reference model); ``train_inputs`` /
    ``test_inputs``: seeded subsets of the train and held-out rows; ``small_std``: the
    std below which an input is flagged small-std; ``low_reward``: the mean below which
    it is flagged low-reward (None: the middle of the reward's range); ``grad_inputs``:
    inputs per split whose gradient norm is measured (0: none; each costs a backward).
    """

    task: str = "persona_bandit"
    reward: str | None = None
    mode: Literal["full", "lora"] = "full"
    group_size: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 16
    kl_beta: float = 0.0
    train_inputs: int | None = 96
    test_inputs: int | None = 48
    small_std: float = 0.1
    low_reward: float | None = None
    grad_inputs: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("full", "lora"):
            raise PrefdynError(f"experiment.mode must be full or lora, got {self.mode!r}")
        if self.group_size < 2:
            raise PrefdynError(f"experiment.group_size must be >= 2, got {self.group_size}")
        if not self.temperature > 0:
            raise PrefdynError(f"experiment.temperature must be > 0, got {self.temperature}")
        if self.kl_beta < 0 or self.small_std <= 0 or self.grad_inputs < 0:
            raise PrefdynError("experiment.kl_beta and grad_inputs must be >= 0, small_std > 0")
        for name in ("train_inputs", "test_inputs"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise PrefdynError(f"experiment.{name} must be >= 2 or None, got {value}")

    def low(self, task: RLTask) -> float:
        lo, hi = task.reward_range
        return self.low_reward if self.low_reward is not None else (lo + hi) / 2


RL_OPTIONS = {
    "task": Option("RL task: persona_bandit (exact), persona_completion, hh, or any registered task."),
    "reward": Option("Reward of the task (default: the task's own)."),
    "group_size": Option("k: samples per prompt (sampled objectives, frac_reward_zero_std)."),
}


def rl_spec(name: str, title: str, help: str, run: Callable[[RunContext], Any],
            params: type, **kwargs: Any) -> ExperimentSpec:
    """Register a vanishing-gradient experiment: its params, ``runs/rl``, the ``quick`` preset."""
    folder = name.replace(" ", "_").replace("-", "_")
    return register(ExperimentSpec(
        name=name, title=title, help=help, run=run, params=params, options=RL_OPTIONS,
        default_out="runs/rl", default_preset="quick", attribution=RL_ATTRIBUTION,
        folder=lambda cfg: folder, **kwargs))


def rl_context(ctx: RunContext) -> tuple[Any, RLTask]:
    """(the loaded model, the task) of a run; the report names the task and reward."""
    loaded = ctx.model()
    task = build_rl_task(ctx.cfg, loaded, ctx.params)
    ctx.footer.update({"task": task.name, "reward": task.reward_name,
                       "inputs": f"{len(task.train_rows)} train, {len(task.test_rows)} held-out",
                       "RFT objective": f"{ctx.train.loss}, KL beta {ctx.params.kl_beta:g} "
                                        "(train.beta unused)"})
    if ctx.cfg.preset == "paper":
        ctx.footer["paper setting"] = PAPER_DEPARTURES
    return loaded, task


# ------------------------------------------------------------------ phases ---

def trainable(model: nn.Module, mode: str, seed: int) -> nn.Module:
    """``model`` ready to train in ``mode``: every weight, or LoRA adapters (injected)."""
    if mode == "lora":
        return apply_lora(model, seed=seed)
    model.requires_grad_(True)
    return model


@dataclass
class Phase:
    """One phase's outcome: the trained model, its history, the tracker and the time."""

    model: nn.Module
    history: History
    tracker: RewardSpreadTracker | None
    steps: int
    seconds: float


def spread_tracker(task: RLTask, params: RLParams, history: History, *, name: str, every: int,
                   splits: dict[str, Tensor], seed: int) -> RewardSpreadTracker:
    """Measures ``splits`` (name -> rows) with the same seed every time (comparable)."""
    measures = {s: (lambda model, rows=rows: task.measure(model, rows, k=params.group_size,
                                                          grad_inputs=params.grad_inputs, seed=seed))
                for s, rows in splits.items()}
    return RewardSpreadTracker(measures, history=history, every=every, name=name,
                               small_std=params.small_std)


def run_rft(task: RLTask, model: nn.Module, rows: Tensor, params: RLParams, train_cfg: TrainConfig,
            *, sink=None, name: str = "rft", splits: dict[str, Tensor] | None = None,
            steps: int | None = None, lr: float | None = None, temperature: float | None = None,
            entropy_coef: float = 0.0, callbacks: Sequence[Callback] = (),
            run_folder: str | Path | None = None) -> Phase:
    """RL fine-tuning of ``model`` (in place) on ``rows`` with ``train_cfg.loss``:
    ``expected_reward`` (the bandit's exact gradient) or a sampled estimator with
    ``params.group_size`` samples per prompt; ``splits`` (default: the task's train and
    held-out rows) are measured by the spread tracker. ``run_folder`` (default:
    :func:`phase_folder` of ``sink`` and ``name``) makes the phase resumable."""
    loss = train_cfg.loss
    if loss not in ("expected_reward", *SAMPLED):
        raise PrefdynError(f"RFT objective must be expected_reward or one of {SAMPLED}, got "
                           f"train.loss {loss!r}")
    temperature = temperature or params.temperature
    steps = steps or train_cfg.steps
    reference = None
    if params.kl_beta > 0:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    objective = get_loss(loss, beta=params.kl_beta)
    if entropy_coef:
        objective = with_entropy_bonus(objective, entropy_coef)
    policy = task.rl_policy(model, sampled=loss != "expected_reward", group_size=params.group_size,
                            temperature=temperature, reference=reference)
    batches = task.rl_batches(model, rows, batch_size=train_cfg.batch_size or 8,
                              group_size=params.group_size, temperature=temperature,
                              seed=train_cfg.seed, reference=reference)
    splits = splits if splits is not None else {"train_eval": task.train_rows, "test": task.test_rows}
    made: list[RewardSpreadTracker] = []

    def track(history: History) -> list[Callback]:  # the tracker records into the run's history
        if splits:
            made.append(spread_tracker(task, params, history, name=name,
                                       every=train_cfg.eval_every, splits=splits,
                                       seed=train_cfg.seed))
        return made

    cfg = dataclasses.replace(train_cfg, lr=lr or train_cfg.lr or RL_DEFAULT_LR)
    setting = {"task": task.name, "reward": task.reward_name, "rows": _rows_id(task, rows),
               "params": dataclasses.asdict(params), "temperature": temperature,
               "entropy_coef": entropy_coef, "splits": {k: v.tolist() for k, v in splits.items()}}
    phase = _phase(model, policy, batches, cfg, steps=steps, name=name, sink=sink,
                   run_folder=run_folder, mode=params.mode, loss_kwargs={"beta": params.kl_beta},
                   objective=objective, trackers=track, callbacks=callbacks, setting=setting)
    phase.tracker = made[0] if made else None
    return phase


def run_sft(task: RLTask, model: nn.Module, rows: Tensor, train_cfg: TrainConfig, *, steps: int,
            mode: str = "full", sink=None, name: str = "sft", lr: float | None = None,
            run_folder: str | Path | None = None) -> Phase:
    """SFT of ``model`` (in place) on the labelled answers of ``rows`` for ``steps`` steps."""
    batches = task.sft_batches(model, rows, batch_size=train_cfg.batch_size or 8,
                               seed=train_cfg.seed)
    cfg = dataclasses.replace(train_cfg, loss="sft", lr=lr or train_cfg.lr or RL_DEFAULT_LR)
    setting = {"task": task.name, "rows": _rows_id(task, rows)}
    return _phase(model, task.sft_policy(model), batches, cfg, steps=steps, name=name, sink=sink,
                  run_folder=run_folder, mode=mode, loss_kwargs={}, objective=get_loss("sft"),
                  setting=setting)


def phase_folder(sink, name: str, setting: dict) -> Path | None:
    """``<sink's run folder>/runs/<name>-<hash of setting>`` (the name made path-safe);
    None when the sink is no run folder (a test's list, None). A finished phase keeps
    its final weights there (not the optimizer state), so a rerun restores it."""
    root = getattr(sink, "path", None)
    if root is None:
        return None
    return Path(root) / "runs" / f"{re.sub(r'[^A-Za-z0-9.-]+', '_', name)}-{hash_obj(setting)[:10]}"


def _rows_id(task: RLTask, rows: Tensor) -> str:
    rows = rows.tolist()
    return hash_obj([[task.prompts[r] for r in rows], [task.references[r] for r in rows]])


def _phase(model, policy, batches, cfg: TrainConfig, *, steps: int, name: str, sink, run_folder,
           mode: str, loss_kwargs: dict, objective, setting: dict, trackers=None,
           callbacks: Sequence[Callback] = ()) -> Phase:
    trainable_now = [p for p in model.parameters() if p.requires_grad]
    if not trainable_now:
        raise PrefdynError("no trainable weights: call trainable(model, mode, seed) first")
    if run_folder is None:  # what the phase starts from, so a changed setting starts afresh
        start_weights = [hash_tensor(p) for p in trainable_now]
        run_folder = phase_folder(sink, name, {**setting, "config": dataclasses.asdict(cfg),
                                               "steps": steps, "mode": mode,
                                               "loss_kwargs": loss_kwargs,
                                               "weights": hash_obj(start_weights)})
    start = time.perf_counter()
    run = fit_rl(model, policy, batches, cfg, loss_kwargs=loss_kwargs, steps=steps,
                 callbacks=callbacks, sink=sink, name=name, mode=mode, objective=objective,
                 trackers=trackers, run_folder=run_folder, keep_optimizer=False)
    return Phase(model, run.history, None, steps, time.perf_counter() - start)


def fresh_model(loaded, mode: str, seed: int) -> nn.Module:
    """A trainable copy of the base model (runs that must start equal train copies)."""
    return trainable(loaded.copy().model, mode, seed)


# ----------------------------------------------------------------- helpers ---

def flags(spread: InputSpread, params: RLParams, task: RLTask) -> dict[str, Tensor]:
    """(n,) bool masks: small-std, low-reward, and both (Finding I's inputs)."""
    small = spread.small(params.small_std)
    low = spread.mean < params.low(task)
    return {"small_std": small, "low_reward": low, "small_and_low": small & low}


def std_bins(std: Tensor, n_bins: int) -> tuple[Tensor, list[str]]:
    """Quantile bins of the std (equal counts): ``(n,) bin index`` and a label per bin."""
    n_bins = max(1, min(n_bins, len(std)))
    order = std.argsort()
    idx = torch.empty(len(std), dtype=torch.long)
    for b, chunk in enumerate(order.tensor_split(n_bins)):
        idx[chunk] = b
    labels = []
    for b in range(n_bins):
        s = std[idx == b]
        labels.append(f"{float(s.min()):.2g}-{float(s.max()):.2g}" if len(s) else "empty")
    return idx, labels


def mean_or_nan(x: Tensor) -> float:
    return float(x.double().mean()) if len(x) else float("nan")
