"""One training step and one loop for every mode; the runners, optimizers, checkpoints.

The policies the step trains (last layer, LM full/LoRA) live in :mod:`prefdyn.policies`.
"""

from prefdyn.training.batches import full_batches, random_minibatches
from prefdyn.training.checkpoint import (
    CheckpointCallback,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from prefdyn.training.config import TrainConfig
from prefdyn.training.loop import TrainState, train
from prefdyn.training.resume import fit_last_layer_resumable
from prefdyn.training.runner import (
    LastLayerRun,
    fit_last_layer,
    make_optimizer,
    setup_last_layer,
)
from prefdyn.training.step import StepOutput, compute_loss, training_step
from prefdyn.training.step_size import default_lr, hessian_lambda_max

__all__ = [
    "CheckpointCallback",
    "LastLayerRun",
    "StepOutput",
    "TrainConfig",
    "TrainState",
    "compute_loss",
    "default_lr",
    "fit_last_layer",
    "fit_last_layer_resumable",
    "full_batches",
    "hessian_lambda_max",
    "load_checkpoint",
    "make_optimizer",
    "random_minibatches",
    "restore",
    "save_checkpoint",
    "setup_last_layer",
    "train",
    "training_step",
]
