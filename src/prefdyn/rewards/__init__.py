"""Rewards: plain batched functions (prompts, responses, references) -> float tensor (n,),
in a name -> function registry like the losses, checked on every call."""

from prefdyn.rewards.registry import (Reward, RewardError, available_rewards, check_rewards,
                                      get_reward, register_reward)
from prefdyn.rewards.lexical import target_token_rewards
from prefdyn.rewards.reward_model import RewardModel
from prefdyn.rewards import sentiment as _sentiment  # noqa: F401  (registers the reward)

__all__ = ["Reward", "RewardError", "RewardModel", "available_rewards", "check_rewards",
           "get_reward", "register_reward", "target_token_rewards"]
