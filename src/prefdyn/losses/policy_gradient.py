"""Policy-gradient objectives for RL fine-tuning, as pure per-sample functions.

Razin et al. (ICLR 2024, "Vanishing Gradients in Reinforcement Finetuning of Language
Models") study gradient ascent on the expected reward of an input,
"$V_{\\mathbf{x}}(\\theta) = \\mathbb{E}_{\\mathbf{y} \\sim \\pi_{\\theta}(\\cdot | \\mathbf{x})}
[r(\\mathbf{x}, \\mathbf{y})]$", and the RLHF objective is Im & Li (2024), Eq. 3:
"$R(\\pi_\\theta) = \\mathbb{E}_{\\pi_\\theta} [r(x, \\hat{y})] - \\beta \\log
\\frac{\\pi_\\theta(\\hat{y}|x)}{\\pi_{\\text{ref}}(\\hat{y}|x)}$". Every objective here is a
sampled estimator of minus its gradient: the score function
``E[A(y) grad log pi(y|x)]`` with an advantage ``A`` (a baseline changes the
variance, not the expectation, unless it depends on ``y`` itself), plus Eq. 3's KL
term when ``beta > 0``.

Conventions (TRL's ``GRPOTrainer`` where it has one):
- The per-sample loss sums the per-token terms over the response (a *sequence*
  score function, unbiased for grad V_x). TRL's ``loss_type="dr_grpo"`` is this
  divided by the constant ``max_completion_length``; its default ``"grpo"`` and
  ``"bnpo"`` divide by the response length, which biases the gradient by length.
- The surrogate is ``ratio * A`` with ``ratio = pi / pi_old`` per token; on-policy
  (``old_logps is None``) ``pi_old`` is ``pi`` detached, so ``ratio = 1`` and its
  gradient is exactly ``A grad log pi``.
- The KL term (Eq. 3's beta) is Schulman's k3 estimator per token, as in TRL's
  GRPO: ``exp(q) - q - 1`` with ``q = log pi_ref - log pi`` on tokens sampled from
  pi; it is >= 0 and unbiased for KL(pi || pi_ref) in value. It is added to the
  loss (as TRL does), not to the reward as Eq. 3 literally writes it; its
  gradient is then not the exact gradient of the KL (a documented departure).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.losses.registry import register_loss
from prefdyn.losses.types import LossOutput, detach_fields, per_token_field


@dataclass
class RolloutLogps:
    """Sampled responses of a batch, what every policy-gradient objective needs.

    ``logps`` (..., n, T): per-token log pi_theta(y_t | x, y_<t) of the sampled
    responses (with grad); ``mask`` (..., n, T): 1 on response tokens, 0 on pads;
    ``rewards`` (..., n): r(x, y) per sample; ``groups`` (..., n) long: which prompt
    each sample answers (the k samples of a prompt form a group; a micro-batch must
    hold whole groups); ``ref_logps`` / ``old_logps`` (..., n, T): the same tokens
    under the reference pi_ref (needed only when ``beta > 0``) and under the
    behaviour policy that sampled them (``None``: on-policy, the current logps).
    """

    logps: Tensor = per_token_field()
    mask: Tensor = per_token_field()
    rewards: Tensor | None = None
    groups: Tensor | None = None
    ref_logps: Tensor | None = per_token_field()
    old_logps: Tensor | None = per_token_field()

    def detach(self) -> "RolloutLogps":
        return detach_fields(self)

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> "RolloutLogps":
        """No samples (a process's empty shard in a distributed run)."""
        return cls(torch.empty(0, 1, device=device), torch.empty(0, 1, device=device),
                   torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device))

    @property
    def sequence_logps(self) -> Tensor:
        """log pi(y|x) = sum of the response's token log-probs, (..., n)."""
        return (self.logps * self.mask).sum(-1)


def _check(rollout: RolloutLogps) -> tuple[Tensor, Tensor]:
    if rollout.rewards is None:
        raise PrefdynError("rollout has no rewards: score the samples before the objective")
    if rollout.groups is None:
        raise PrefdynError("rollout has no group ids: every sample must name its prompt")
    if rollout.rewards.shape != rollout.logps.shape[:-1]:
        raise PrefdynError(f"rewards have shape {tuple(rollout.rewards.shape)}, expected one per "
                           f"sample {tuple(rollout.logps.shape[:-1])}")
    return rollout.rewards.to(rollout.logps.dtype), rollout.groups


def _group_stats(rewards: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample: (its group's size, reward sum, unbiased reward std), each (..., n)."""
    if not groups.numel():  # an empty shard
        return rewards, rewards, rewards
    n_groups = int(groups.max()) + 1
    onehot = torch.nn.functional.one_hot(groups, n_groups).to(rewards.dtype)  # (..., n, G)
    counts = onehot.sum(-2)                                                   # (..., G)
    sums = torch.einsum("...n,...ng->...g", rewards, onehot)
    sq = torch.einsum("...n,...ng->...g", rewards ** 2, onehot)
    var = (sq - sums ** 2 / counts.clamp_min(1)) / (counts - 1).clamp_min(1)
    back = lambda g: torch.einsum("...g,...ng->...n", g, onehot)  # noqa: E731
    return back(counts), back(sums), back(var.clamp_min(0).sqrt())


def _need_groups_of_two(size: Tensor, name: str) -> None:
    if size.numel() and bool((size < 2).any()):
        raise PrefdynError(f"{name} needs at least 2 samples per prompt (a group of 1 has no "
                           "baseline from its siblings); sample a group of k >= 2 per prompt")


def rloo_advantages(rewards: Tensor, groups: Tensor) -> Tensor:
    """RLOO (Ahmadian et al. 2024; TRL ``RLOOTrainer``): ``r_i`` minus the mean reward of
    the *other* k-1 samples of its prompt, ``= k/(k-1) (r_i - mean_group)``. Unbiased:
    the baseline does not depend on y_i."""
    size, total, _ = _group_stats(rewards, groups)
    _need_groups_of_two(size, "RLOO")
    return rewards - (total - rewards) / (size - 1).clamp_min(1)


def grpo_advantages(rewards: Tensor, groups: Tensor, scale: str = "group",
                    eps: float = 1e-4) -> Tensor:
    """GRPO (Shao et al. 2024): ``(r_i - mean_group) / (std + eps)``. ``scale`` is TRL's
    ``GRPOConfig.scale_rewards``: "group" (its default; the unbiased std of the prompt's
    k rewards), "batch" (the std of every reward in the batch) or "none" (no scaling,
    Dr. GRPO, Liu et al. 2025). ``eps = 1e-4`` as TRL. The group mean includes r_i, so
    the estimate is (k-1)/k times the unbiased one in expectation (scale "none")."""
    size, total, std = _group_stats(rewards, groups)
    _need_groups_of_two(size, "GRPO")
    centred = rewards - total / size
    if scale == "group":
        return centred / (std + eps)
    if scale == "batch":
        return centred / (rewards.std(-1, keepdim=True) + eps)
    if scale == "none":
        return centred
    raise PrefdynError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")


_ADVANTAGES = {"rloo": rloo_advantages, "grpo": grpo_advantages, "none": lambda r, g: r}


def policy_gradient_output(rollout: RolloutLogps, advantages: Tensor, *,
                           clip_eps: float | None = None, beta: float = 0.0) -> LossOutput:
    """Per-sample loss ``sum_t [-surrogate_t + beta k3_t]`` over response tokens.

    The surrogate is ``ratio_t A`` (``clip_eps=None``) or PPO's clipped
    ``min(ratio_t A, clip(ratio_t, 1-eps, 1+eps) A)`` (Schulman et al. 2017, Eq. 7).
    """
    if beta < 0:
        raise PrefdynError(f"beta must be >= 0, got {beta}")
    mask = rollout.mask.to(rollout.logps.dtype)
    old = rollout.logps.detach() if rollout.old_logps is None else rollout.old_logps
    ratio = torch.exp(rollout.logps - old)
    adv = advantages.detach()[..., None]
    surrogate = ratio * adv
    metrics = {"reward": rollout.rewards.to(mask.dtype), "advantage": adv[..., 0],
               "length": mask.sum(-1)}
    if clip_eps is not None:
        if not clip_eps > 0:
            raise PrefdynError(f"clip_eps must be > 0, got {clip_eps}")
        clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
        metrics["clip_frac"] = (((clipped < surrogate).to(mask.dtype) * mask).sum(-1)
                                / mask.sum(-1).clamp_min(1)).detach()
        surrogate = torch.minimum(surrogate, clipped)
    per_token = -surrogate
    if beta > 0:
        if rollout.ref_logps is None:
            raise PrefdynError("beta > 0 needs the reference log-probs of the samples "
                               "(RolloutLogps.ref_logps)")
        q = rollout.ref_logps - rollout.logps
        k3 = torch.exp(q) - q - 1.0
        per_token = per_token + beta * k3
        metrics["kl"] = (k3 * mask).sum(-1).detach()
    return LossOutput((per_token * mask).sum(-1), metrics)


@register_loss("reinforce")
def reinforce_loss(rollout: RolloutLogps, *, baseline: float = 0.0, beta: float = 0.0
                   ) -> LossOutput:
    """REINFORCE (Williams 1992): ``-(r - b) log pi(y|x)`` with a constant baseline ``b``
    (0: no baseline). Any constant keeps the estimate of grad V_x unbiased."""
    rewards, _ = _check(rollout)
    return policy_gradient_output(rollout, rewards - baseline, beta=beta)


@register_loss("rloo")
def rloo_loss(rollout: RolloutLogps, *, beta: float = 0.0) -> LossOutput:
    """REINFORCE with the leave-one-out baseline (:func:`rloo_advantages`)."""
    rewards, groups = _check(rollout)
    return policy_gradient_output(rollout, rloo_advantages(rewards, groups), beta=beta)


@register_loss("grpo")
def grpo_loss(rollout: RolloutLogps, *, scale: str = "group", clip_eps: float = 0.2,
              beta: float = 0.0) -> LossOutput:
    """GRPO: the group-normalized advantage (:func:`grpo_advantages`) in PPO's clipped
    surrogate (TRL defaults: ``epsilon=0.2``, ``beta=0.0``; TRL's ``loss_type="dr_grpo"``
    up to its constant length divisor)."""
    rewards, groups = _check(rollout)
    return policy_gradient_output(rollout, grpo_advantages(rewards, groups, scale),
                                  clip_eps=clip_eps, beta=beta)


@register_loss("ppo_clip")
def ppo_clip_loss(rollout: RolloutLogps, *, clip_eps: float = 0.2, advantage: str = "rloo",
                  beta: float = 0.0) -> LossOutput:
    """PPO-clip (Schulman et al. 2017, Eq. 7) with a critic-free advantage: "rloo",
    "grpo" (group-normalized) or "none" (the raw reward). Off-policy samples carry
    ``old_logps``; on-policy the ratio is 1 and the clip never binds."""
    if advantage not in _ADVANTAGES:
        raise PrefdynError(f"advantage must be one of {sorted(_ADVANTAGES)}, got {advantage!r}")
    rewards, groups = _check(rollout)
    return policy_gradient_output(rollout, _ADVANTAGES[advantage](rewards, groups),
                                  clip_eps=clip_eps, beta=beta)
