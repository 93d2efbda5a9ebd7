"""Reward spread per input under the model, before and during RL fine-tuning.

Razin et al. (ICLR 2024) read RL fine-tuning through each input's "$\\mathrm{STD}_{
\\mathbf{y} \\sim \\pi_{\\theta}(\\cdot | \\mathbf{x})}[r(\\mathbf{x}, \\mathbf{y})]$ — reward
std of $\\mathbf{x}$ under the model": "Expected gradient for an input vanishes when
reward std is small, even if reward mean is suboptimal". This module measures, per
input, one record shape (:class:`InputSpread`) two ways:

* :func:`bandit_spread` (one answer token): the mean, std, logit-gradient norm and its
  bound are exact from the softmax (:func:`~prefdyn.diagnostics.reward_spread.bandit_reward_spread`);
  the parameter-gradient norm ``||grad_theta V_x||`` is exact too: autograd of the exact
  ``V_x``, one forward and backward per input (the theorem is about each input's
  gradient, not the batch's).
* :func:`sampled_spread` (generation): Monte Carlo over k samples per input (mean, std
  and a CLT interval, :func:`~prefdyn.diagnostics.reward_spread.monte_carlo_spread`). The
  gradient norm is *estimated* by the split-half estimator: the k samples are split
  into two independent halves A and B; in each, the leave-one-out (RLOO) score-function
  estimate ``g_H = 1/|H| sum_{i in H} (r_i - mean_{H minus i} r) grad log pi(y_i|x)`` is
  unbiased for ``grad V_x``, so ``<g_A, g_B>`` is unbiased for ``||grad V_x||^2`` (the
  halves are independent). The norm of a single estimate is not: ``E||g|| >=
  ||E g||``, inflated by the estimator's variance exactly where the std is small. The
  record keeps ``grad_norm_sq`` (may be negative for a noisy input) and
  ``grad_norm = sqrt(max(0, .))``; it needs k >= 4.

Both also sample k answers per input and record which inputs got k equal rewards
(``frac_reward_zero_std``, what TRL's GRPO trainer logs) beside its prediction
``p^k + (1-p)^k`` from the per-input success rate p: exact p on the bandit; on a
sampled task with a two-valued reward, p is the share of the k samples at the higher
value (the same samples, so that prediction leans toward the measurement; the bandit
is the exact check). :class:`RewardSpreadTracker` records these, per split, into the
run's history (``metrics.jsonl``) at step 0, every ``every`` steps and at the end.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prefdyn.diagnostics.reward_spread import (
    bandit_reward_spread,
    expected_gradient_norms,
    monte_carlo_spread,
)
from prefdyn.errors import PrefdynError
from prefdyn.policies.bandit import BanditBatch, answer_logits
from prefdyn.policies.rollout import RolloutStream, response_token_logps
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History

__all__ = ["InputSpread", "RewardSpreadTracker", "bandit_spread", "group_frac_zero_std",
           "sampled_spread"]


@dataclass
class InputSpread:
    """Per-input reward spread, each tensor ``(n,)`` (float; NaN where not measured).

    ``rows``: the data rows; ``mean`` / ``std``: the reward's under pi (exact when
    ``exact``, else from ``k`` samples with the CLT interval ``ci_low..ci_high``);
    ``success``: P(top reward) per input (None for a reward with more than two values);
    ``zero_std``: whether the k sampled rewards of the input all agreed; ``grad_norm``:
    ``||grad_theta V_x||`` (exact on the bandit, split-half estimate otherwise) and
    ``grad_norm_sq`` its square (the estimator's raw value); ``logit_grad_norm`` /
    ``logit_bound``: the bandit's exact ``||grad_z V_x||`` and its bound
    ``sqrt(max pi) * std``.
    """

    rows: Tensor
    mean: Tensor
    std: Tensor
    zero_std: Tensor
    k: int
    exact: bool
    success: Tensor | None = None
    ci_low: Tensor | None = None
    ci_high: Tensor | None = None
    grad_norm: Tensor | None = None
    grad_norm_sq: Tensor | None = None
    logit_grad_norm: Tensor | None = None
    logit_bound: Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def frac_reward_zero_std(self) -> float:
        return float(self.zero_std.double().mean())

    @property
    def predicted_frac_zero_std(self) -> float | None:
        """Mean of ``p^k + (1-p)^k`` (None without a success rate)."""
        if self.success is None:
            return None
        p = self.success.double()
        return float((p ** self.k + (1 - p) ** self.k).mean())

    def small(self, threshold: float) -> Tensor:
        """(n,) bool: inputs whose reward std is below ``threshold``."""
        return self.std < threshold

    def summary(self, small_std: float) -> dict[str, Any]:
        """Scalar record fields: means over the inputs and the shares flagged."""
        out: dict[str, Any] = {
            "n": len(self), "k": self.k, "exact": self.exact,
            "reward_mean": float(self.mean.mean()), "reward_std": float(self.std.mean()),
            "median_std": float(self.std.median()) if len(self) else math.nan,
            "frac_small_std": float(self.small(small_std).double().mean()),
            "frac_reward_zero_std": self.frac_reward_zero_std,
            "pred_frac_reward_zero_std": self.predicted_frac_zero_std}
        if self.grad_norm is not None and (~torch.isnan(self.grad_norm)).any():
            out["grad_norm_mean"] = float(self.grad_norm[~torch.isnan(self.grad_norm)].mean())
        return out

    def per_input(self) -> dict[str, list]:
        """Every per-input field as lists (JSON), keyed by name."""
        names = ("rows", "mean", "std", "zero_std", "success", "ci_low", "ci_high", "grad_norm",
                 "grad_norm_sq", "logit_grad_norm", "logit_bound")
        return {n: getattr(self, n).tolist() for n in names if getattr(self, n) is not None}

    @classmethod
    def from_record(cls, record: dict) -> InputSpread:
        """The spread a tracker's record holds (``per_input``, ``k``, ``exact``): how a
        resumed run gets back the measurements made before its checkpoint (a NaN comes
        back from ``metrics.jsonl`` as the string ``"nan"``)."""
        per = record["per_input"]
        fields = {n: torch.tensor([float(x) for x in v]) for n, v in per.items()
                  if n not in ("rows", "zero_std")}
        return cls(rows=torch.tensor(per["rows"], dtype=torch.long),
                   zero_std=torch.tensor(per["zero_std"], dtype=torch.bool),
                   k=int(record["k"]), exact=bool(record["exact"]), **fields)


@contextlib.contextmanager
def _measuring(model: nn.Module, with_grad: bool):
    """Eval mode (no dropout noise) and, for gradient norms of a frozen model (the base
    model before training), every weight requiring grad; modes restored after."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    if with_grad and not any(flags):
        for p in model.parameters():
            p.requires_grad_(True)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def _trainable(model: nn.Module, flags: Sequence[bool]) -> list[nn.Parameter]:
    """The weights training updates (all, when none is marked: a frozen base model)."""
    params = [p for p, f in zip(model.parameters(), flags) if f]
    return params or list(model.parameters())


def _zero_std(rewards: Tensor, atol: float = 1e-8) -> Tensor:
    return (rewards.amax(-1) - rewards.amin(-1)) <= atol


def _nan(n: int) -> Tensor:
    return torch.full((n,), math.nan)


def bandit_spread(model: nn.Module, batch: BanditBatch, *, k: int = 8, grad_inputs: int = 0,
                  seed: int = 0, temperature: float = 1.0) -> InputSpread:
    """Exact spread of every prompt of ``batch`` under ``model``'s next-token softmax
    (at ``temperature``), ``k`` sampled answers per prompt for ``zero_std``, and the exact
    ``||grad_theta V_x||`` over the weights training updates for the first ``grad_inputs``
    prompts (NaN for the others)."""
    if k < 1 or grad_inputs < 0 or not temperature > 0:
        raise PrefdynError(f"need k >= 1, grad_inputs >= 0, temperature > 0; got {k}, "
                           f"{grad_inputs}, {temperature}")
    device = next(model.parameters()).device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    rewards = batch.rewards.to(device).double()
    flags = [p.requires_grad for p in model.parameters()]
    with _measuring(model, grad_inputs > 0):
        with torch.no_grad():
            logits = answer_logits(model, ids, mask).double() / temperature
        spread = bandit_reward_spread(logits, rewards)
        probs = torch.softmax(logits, -1)
        top = rewards == rewards.amax(-1, keepdim=True)
        success = (probs * top).sum(-1) if _two_valued(rewards) else None
        gen = torch.Generator().manual_seed(seed)
        answers = torch.multinomial(probs.cpu(), k, replacement=True, generator=gen).to(device)
        zero = _zero_std(rewards.gather(-1, answers))
        grad = _nan(len(batch))
        if grad_inputs:
            params = _trainable(model, flags)
            for i in range(min(grad_inputs, len(batch))):
                real = mask[i].bool()  # one prompt alone: its padding removed
                row_logits = answer_logits(model, ids[i:i + 1, real], mask[i:i + 1, real]) / temperature
                value = (torch.softmax(row_logits.double(), -1) * rewards[i]).sum(-1)
                grad[i] = expected_gradient_norms(value, params)[0]
    return InputSpread(batch.rows.cpu(), spread.mean.cpu(), spread.std.cpu(), zero.cpu(), k, True,
                       None if success is None else success.float().cpu(), grad_norm=grad,
                       grad_norm_sq=grad ** 2, logit_grad_norm=spread.logit_grad_norm.cpu(),
                       logit_bound=spread.bound.cpu())


def _two_valued(rewards: Tensor) -> bool:
    return torch.unique(rewards).numel() <= 2


def _rloo_half_grad(seq_logps: Tensor, rewards: Tensor, params: list[nn.Parameter]) -> Tensor:
    """The flat RLOO estimate of grad V_x from one half's samples (needs >= 2)."""
    m = len(rewards)
    adv = rewards - (rewards.sum() - rewards) / (m - 1)
    grads = torch.autograd.grad((adv.detach() * seq_logps).sum() / m, params, retain_graph=True,
                                allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                      for g, p in zip(grads, params)])


def sampled_spread(model: nn.Module, tokenizer, prompts: Sequence[str], reward: Callable, *,
                   rows: Sequence[int], references: Sequence[str | None] | None = None,
                   k: int = 8, max_new_tokens: int = 16, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None, grad_inputs: int = 0,
                   seed: int = 0, chunk: int = 8, confidence: float = 0.95) -> InputSpread:
    """Monte Carlo spread of ``prompts[rows]``: ``k`` responses each, sampled with their own
    seeded generator (the training stream's RNG is untouched), scored by ``reward``; the
    split-half gradient-norm estimate for the first ``grad_inputs`` rows (k >= 4)."""
    if k < 2:
        raise PrefdynError(f"a Monte Carlo reward std needs k >= 2 samples per input, got {k}")
    if grad_inputs and k < 4:
        raise PrefdynError(f"the split-half gradient estimate needs k >= 4 (two halves of >= 2), got {k}")
    rows = list(rows)
    sampler = RolloutStream(model, tokenizer, prompts, reward, references=references,
                            group_size=k, prompts_per_batch=chunk, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                            replay=False)  # per-input gradients use their own forward
    flags = [p.requires_grad for p in model.parameters()]
    all_rewards, grad_sq = [], _nan(len(rows))
    with _measuring(model, grad_inputs > 0):
        params = _trainable(model, flags) if grad_inputs else []
        for start in range(0, len(rows), chunk):
            batch = sampler.sample(rows[start:start + chunk])
            r = batch.rewards.double().reshape(-1, k)
            all_rewards.append(r.cpu())
            for j in range(len(r)):
                if start + j >= grad_inputs:
                    break
                sel = slice(j * k, (j + 1) * k)
                lp = response_token_logps(model, batch.input_ids[sel], batch.attention_mask[sel],
                                          batch.prompt_len, temperature)
                seq = (lp * batch.response_mask[sel].to(lp.dtype)).sum(-1)
                h = k // 2
                g_a = _rloo_half_grad(seq[:h], r[j, :h].to(seq.dtype), params)
                g_b = _rloo_half_grad(seq[h:], r[j, h:].to(seq.dtype), params)
                grad_sq[start + j] = float(g_a @ g_b)
    rewards = torch.cat(all_rewards) if all_rewards else torch.empty(0, k, dtype=torch.float64)
    mc = monte_carlo_spread(rewards, confidence=confidence)
    success = None
    if len(rewards) and _two_valued(rewards):
        success = (rewards == rewards.max()).double().mean(-1).float()
    grad = grad_sq.clamp_min(0).sqrt()
    return InputSpread(torch.tensor(rows), mc.mean, mc.std, _zero_std(rewards), k, False,
                       success, mc.ci_low, mc.ci_high, grad, grad_sq)


def group_frac_zero_std(rewards: Tensor, groups: Tensor, *, atol: float = 1e-8) -> float:
    """Share of a training batch's groups (prompts) whose sampled rewards all agree: what
    TRL's GRPO trainer logs as ``frac_reward_zero_std`` each step. ``rewards``, ``groups``
    are ``(N,)`` per sample."""
    ids = torch.unique(groups)
    if not len(ids):
        return float("nan")
    spread = torch.stack([rewards[groups == g].amax() - rewards[groups == g].amin() for g in ids])
    return float((spread <= atol).double().mean())


Measure = Callable[[nn.Module], InputSpread]
"""``measure(model) -> InputSpread`` of one fixed set of inputs (a closure over
:func:`bandit_spread` or :func:`sampled_spread`)."""


class RewardSpreadTracker(Callback):
    """Per-input reward spread of fixed input sets (``measures``: split name -> measure) at
    step 0, every ``every`` steps and at the last step.

    Each measurement adds ``{"step", "split", "problem": name, "group": None,
    **InputSpread.summary(small_std), "per_input": {...}}`` to ``history`` (so to the run
    folder's ``metrics.jsonl``); ``spreads[split]`` maps step -> :class:`InputSpread`.
    """

    def __init__(self, measures: Mapping[str, Measure], *, history: History, every: int,
                 name: str = "rl", small_std: float = 0.1):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not measures:
            raise ValueError("RewardSpreadTracker needs at least one split to measure")
        self.measures, self.history, self.every = dict(measures), history, every
        self.name, self.small_std = name, small_std
        self.spreads: dict[str, dict[int, InputSpread]] = {s: {} for s in self.measures}

    def _recorded(self, step: int) -> bool:
        return all(step in per for per in self.spreads.values())

    def on_train_start(self, state, policy) -> None:
        self._restore()
        if not self._recorded(state.step):
            self.record(state.step, policy.model)

    def _restore(self) -> None:
        """Take back the spreads already in the history (a resumed run's, read from its
        ``metrics.jsonl``), so ``first()`` is still the step-0 measurement."""
        for r in self.history.records:
            if (r.get("problem") == self.name and r.get("split") in self.spreads
                    and "per_input" in r and r["step"] not in self.spreads[r["split"]]):
                self.spreads[r["split"]][r["step"]] = InputSpread.from_record(r)

    def on_step_end(self, state, policy, out) -> None:
        if state.step % self.every == 0 or state.step == state.max_steps:
            self.record(state.step, policy.model)

    def on_train_end(self, state, policy) -> None:
        # A run stopped early by a callback still gets its last state measured.
        if state.error is None and not self._recorded(state.step):
            self.record(state.step, policy.model)

    def record(self, step: int, model: nn.Module) -> dict[str, InputSpread]:
        """Measure every split now; add the records to the history."""
        out = {}
        for split, measure in self.measures.items():
            spread = measure(model)
            self.spreads[split][step] = out[split] = spread
            self.history.add({"step": step, "split": split, "problem": self.name, "group": None,
                              **spread.summary(self.small_std), "per_input": spread.per_input()})
        return out

    def first(self, split: str) -> InputSpread:
        per = self.spreads[split]
        return per[min(per)]

    def last(self, split: str) -> InputSpread:
        per = self.spreads[split]
        return per[max(per)]
