"""prefdyn's dynamics inside TRL's trainers (``transformers.TrainerCallback``s).

* :class:`DPODynamicsCallback`: per-concept loss, margin and accuracy, likelihood
  displacement and top-gaining tokens on a probe set, W_U and per-block drift,
  distinguishability, in a ``DPOTrainer``;
* :class:`RewardSpreadCallback`: reward std per prompt and the zero-std share beside its
  prediction, in a ``GRPOTrainer``.

Both log through the trainer's own logging (``report_to``) and write prefdyn's run
folder, so ``prefdyn compare`` reads TRL runs. TRL stays optional: this package never
imports it (the callbacks read the trainer object they are given).
"""

from prefdyn.integrations.trl.dpo import (
    DPODynamicsCallback,
    dpo_objective,
    sequence_distinguishability,
)
from prefdyn.integrations.trl.grpo import RewardSpreadCallback

__all__ = ["DPODynamicsCallback", "RewardSpreadCallback", "dpo_objective", "sequence_distinguishability"]
