"""Objectives: pure per-example functions in a name -> function registry (preference
losses, SFT, policy gradient, the bandit's exact expected reward, the reward model's)."""

from prefdyn.losses.registry import available_losses, get_loss, loss_for_run, register_loss
from prefdyn.losses.types import LossOutput, PreferenceLogps, masked_mean, reduce_loss
from prefdyn.losses import preference as _preference  # noqa: F401  (registers the losses)
from prefdyn.losses import variants as _variants  # noqa: F401
from prefdyn.losses.bandit import BanditLogps
from prefdyn.losses.policy_gradient import RolloutLogps
from prefdyn.losses.reward_model import PairScores
from prefdyn.losses import sft as _sft  # noqa: F401

__all__ = ["BanditLogps", "LossOutput", "PairScores", "PreferenceLogps", "RolloutLogps",
           "available_losses", "get_loss", "loss_for_run", "masked_mean", "reduce_loss", "register_loss"]
