"""Preference losses: pure per-example functions in a name -> function registry."""

from prefdyn.losses.registry import available_losses, get_loss, register_loss
from prefdyn.losses.types import LossOutput, PreferenceLogps, masked_mean, reduce_loss
from prefdyn.losses import preference as _preference  # noqa: F401  (registers the losses)
from prefdyn.losses import variants as _variants  # noqa: F401

__all__ = ["LossOutput", "PreferenceLogps", "available_losses", "get_loss", "masked_mean",
           "reduce_loss", "register_loss"]
