"""prefdyn: measure, predict and reproduce the learning dynamics of preference alignment.

Sub-packages: ``data``, ``models``, ``embeddings``, ``diagnostics``, ``losses``, ``policies``,
``training``, ``tracking``, ``theory``, ``experiments``, ``reports``, ``cli``.
The most used entry points are re-exported here; importing prefdyn is cheap
(it imports torch, not transformers or matplotlib).
"""

__version__ = "0.1.0"

from prefdyn.errors import DataError, ModelError, PrefdynError, TrainingError
from prefdyn.losses import PreferenceLogps, get_loss
from prefdyn.training import TrainConfig, fit_last_layer

__all__ = ["DataError", "ModelError", "PrefdynError", "PreferenceLogps", "TrainConfig",
           "TrainingError", "__version__", "fit_last_layer", "get_loss"]
