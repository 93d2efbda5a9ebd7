"""Build an :class:`ExperimentConfig` from ``--config run.yaml`` and command-line flags.

The YAML file has the sections of the config (``model``, ``data``, ``task``,
``train``) plus ``seed`` and ``out``; flags given on the command line override
it; everything else keeps the dataclass defaults.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from prefdyn.data.tasks import TaskConfig
from prefdyn.errors import PrefdynError
from prefdyn.experiments.config import DataConfig, ExperimentConfig, ModelConfig
from prefdyn.training.config import TrainConfig

SECTIONS = {"model": ModelConfig, "data": DataConfig, "task": TaskConfig, "train": TrainConfig}


def _section(cls, values: dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PrefdynError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as e:
        raise PrefdynError(f"{where}: {e}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PrefdynError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PrefdynError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise PrefdynError(f"{path}: expected a mapping at the top level")
    return raw


def build_config(config_file: str | Path | None, overrides: dict[str, dict[str, Any]],
                 top: dict[str, Any], defaults: dict[str, dict[str, Any]] | None = None
                 ) -> ExperimentConfig:
    """``defaults`` (the command's own) < the YAML file < ``overrides`` (flags that were given)."""
    raw = load_yaml(config_file) if config_file else {}
    where = str(config_file) if config_file else "flags"
    unknown = sorted(set(raw) - set(SECTIONS) - {"seed", "out"})
    if unknown:
        raise PrefdynError(f"{where}: unknown section(s) {unknown}; known: {sorted(SECTIONS) + ['out', 'seed']}")
    sections = {}
    for name, cls in SECTIONS.items():
        values = {**(defaults or {}).get(name, {}), **(raw.get(name) or {})}
        values.update({k: v for k, v in overrides.get(name, {}).items() if v is not None})
        sections[name] = _section(cls, values, f"{where}: [{name}]")
    seed = top.get("seed") if top.get("seed") is not None else raw.get("seed", 0)
    out = top.get("out") or raw.get("out") or (defaults or {}).get("out") or "runs"
    # One seed for everything unless a section sets its own.
    if "seed" not in (raw.get("task") or {}) and overrides.get("task", {}).get("seed") is None:
        sections["task"] = dataclasses.replace(sections["task"], seed=seed)
    if "seed" not in (raw.get("train") or {}):
        sections["train"] = dataclasses.replace(sections["train"], seed=seed)
    return ExperimentConfig(**sections, seed=seed, out=str(out))
