"""Experiment configuration: which model, which data, how to train, where to write.

:class:`ExperimentConfig` is the shape of ``run.yaml``, of every shipped preset and of the
``config.yaml`` a run folder holds: sections ``model``, ``data``, ``task``, ``train``, the
experiment's own params under ``experiment`` (one dataclass per experiment, see
:mod:`prefdyn.experiments.spec`), plus ``seed``, ``out`` and the ``preset`` it started from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefdyn.data.tasks import TaskConfig
from prefdyn.errors import PrefdynError
from prefdyn.training.config import TrainConfig


@dataclass
class ModelConfig:
    """``name=None`` is the embedded SmolLM2-135M-Instruct; else a folder, a .gguf or a hub id."""

    name: str | None = None
    device: str = "auto"
    cache_dir: str | None = None
    trust_remote_code: bool = False
    batch_size: int = 16
    reuse_prefix: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise PrefdynError(f"model.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class DataConfig:
    """``path=None`` is prefdyn's bundled demo data; else a folder of persona JSONL files."""

    path: str | None = None
    behaviors: list[str] | None = None

    def __post_init__(self) -> None:
        if self.behaviors is not None and len(self.behaviors) == 0:
            self.behaviors = None


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    out: str = "runs"
    experiment: Any = None
    """The experiment's own params (its spec's ``params`` dataclass), None if it has none."""
    preset: str | None = None
    """The shipped preset the config started from (recorded in config.yaml)."""
