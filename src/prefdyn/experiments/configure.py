"""One config path: dataclass defaults < preset YAML < ``--config run.yaml`` < flags.

Every layer is a partial config in the shape of ``run.yaml``::

    description: one line (presets only; shown by ``prefdyn presets``)
    base: paper                                  # presets only: start from this preset
    seed: 0
    out: runs
    model: {name: ..., device: auto, ...}        # ModelConfig
    data: {path: ..., behaviors: [...]}          # DataConfig
    task: {n_per_behavior: 40, ...}              # TaskConfig
    train: {steps: 30, lr: 5.0e-05, ...}         # TrainConfig
    experiment: {mode: full, eval_rows: 16, ...} # the experiment's own params
    by_mode:                                     # optional: applied when experiment.mode is
      lora: {train: {lr: 5.0e-04}}               # lora, right after the layer holding it

A layer holds only the keys it sets, so "was this given?" is answered by the key being
there, never by comparing a value with a default: an explicit ``--lr 1e-5`` equal to some
preset's value still wins. Flags the user did not give arrive as None and are dropped.

Presets ship as ``presets/<experiment>/<name>.yaml`` in the package; a copy of one,
edited, is a valid ``--config`` file (``preset:`` in a config file names its base preset).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from prefdyn.data.tasks import TaskConfig
from prefdyn.errors import PrefdynError
from prefdyn.experiments.config import DataConfig, ExperimentConfig, ModelConfig
from prefdyn.experiments.spec import ExperimentSpec
from prefdyn.training.config import TrainConfig

SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "task": TaskConfig, "train": TrainConfig}
TOP = ("seed", "out", "preset", "description", "base")
Layer = tuple[str, dict[str, Any]]


# ------------------------------------------------------------------ presets ---

def preset_dir(spec: ExperimentSpec) -> Path:
    return Path(str(resources.files("prefdyn.experiments").joinpath("presets", spec.key)))


def preset_names(spec: ExperimentSpec) -> list[str]:
    folder = preset_dir(spec)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def preset_path(spec: ExperimentSpec, name: str) -> Path:
    path = preset_dir(spec) / f"{name}.yaml"
    if not path.is_file():
        known = preset_names(spec)
        raise PrefdynError(f"unknown preset {name!r} for {spec.name}; choose from {known or 'none'}")
    return path


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PrefdynError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PrefdynError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise PrefdynError(f"{path}: expected a mapping at the top level")
    return raw


def preset_layers(spec: ExperimentSpec, name: str, *, seen: tuple[str, ...] = ()) -> list[Layer]:
    """The layers of preset ``name``: its ``base:`` preset's first (a variant such as Mistral's
    lr on top of the paper preset states only what differs), then its own."""
    if name in seen:
        raise PrefdynError(f"preset {name!r} of {spec.name}: base presets form a cycle {' -> '.join(seen + (name,))}")
    path = preset_path(spec, name)
    raw = load_yaml(path)
    check_layer(spec, str(path), raw)
    base = raw.get("base")
    below = preset_layers(spec, str(base), seen=seen + (name,)) if base else []
    return below + [(str(path), raw)]


# --------------------------------------------------------------- validation ---

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _sections(spec: ExperimentSpec) -> dict[str, type | None]:
    return {**SECTIONS, "experiment": spec.params}


def check_layer(spec: ExperimentSpec, where: str, raw: Mapping[str, Any], *, nested: bool = False) -> None:
    """Every key of ``raw`` is a known section / field; else one line naming ``where`` and the key."""
    sections = _sections(spec)
    for key, value in raw.items():
        if key == "by_mode" and not nested:
            if not isinstance(value, Mapping) or not set(value) <= {"full", "lora"}:
                raise PrefdynError(f"{where}: by_mode must map full/lora to partial configs")
            for mode, sub in value.items():
                check_layer(spec, f"{where}: by_mode.{mode}", sub or {}, nested=True)
            continue
        if key in TOP:
            continue
        if key not in sections or (key == "experiment" and spec.params is None and value):
            known = sorted(k for k, v in sections.items() if v is not None or k != "experiment")
            raise PrefdynError(f"{where}: unknown key {key!r}; known: {known + list(TOP)}")
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise PrefdynError(f"{where}: {key} must be a mapping of fields")
        fields = {f.name for f in dataclasses.fields(sections[key])} if sections[key] else set()
        unknown = sorted(set(value) - fields)
        if unknown:
            raise PrefdynError(f"{where}: unknown key {key}.{unknown[0]}; known in {key}: {sorted(fields)}")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` (from YAML, a flag or ``key=value``) as the field's type: "1e-5" -> 1e-05,
    "16,64" -> (16, 64) for a tuple field, a list -> tuple."""
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if len(args) == 1:
            return coerce(value, args[0], where)
        return value
    if origin in (tuple, list):
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        inner = args[0] if args else Any
        out = [coerce(v, inner, where) for v in items]
        return tuple(out) if origin is tuple else out
    try:
        if hint is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "yes", "1")
        if hint is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            return float(value)
        if hint is int and isinstance(value, str):
            return int(value)
    except ValueError:
        raise PrefdynError(f"{where}: expected {hint.__name__}, got {value!r}") from None
    return value


def _build(cls: type, values: dict[str, Any], where: str):
    hints = _hints(cls)
    try:
        return cls(**{k: coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise PrefdynError(f"{where}: {e}") from None


# --------------------------------------------------------------- resolution ---

def parse_sets(items: Sequence[str], where: str = "--set") -> dict[str, Any]:
    """``["train.lr=1e-4", "seed=3"]`` as a nested partial config (values still strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PrefdynError(f"{where}: expected key=value, got {item!r}")
        section, dot, fieldname = key.partition(".")
        if dot:
            out.setdefault(section, {})[fieldname] = value
        else:
            out[section] = value
    return out


def _merge(layers: Sequence[Layer], mode: str | None) -> tuple[dict[str, dict], dict[str, Any], dict[str, str]]:
    """Section values, top-level values, and for each key the layer that last set it."""
    sections: dict[str, dict] = {}
    top: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, raw in layers:
        parts = [(where, raw)]
        if mode and (raw.get("by_mode") or {}).get(mode):
            parts.append((f"{where}: by_mode.{mode}", raw["by_mode"][mode]))
        for w, part in parts:
            for key, value in part.items():
                if key == "by_mode" or value is None:
                    continue
                if key in TOP:
                    top[key] = value
                    origin[key] = w
                    continue
                for f, v in value.items():
                    sections.setdefault(key, {})[f] = v
                    origin[f"{key}.{f}"] = w
                if key == "train" and "steps" in value and "epochs" not in value:
                    # A later --steps beats an earlier layer's epochs (which would override it).
                    sections["train"].pop("epochs", None)
    return sections, top, origin


def resolve_config(spec: ExperimentSpec, *, preset: str | None = None, config_file: str | Path | None = None,
                   flags: Mapping[str, Any] | None = None, sets: Sequence[str] = ()) -> ExperimentConfig:
    """The one precedence rule: dataclass defaults < preset < ``config_file`` < ``flags``
    (a nested partial config of the flags the user gave) < ``sets`` (``key=value``)."""
    raw_file = load_yaml(config_file) if config_file else {}
    if raw_file:
        check_layer(spec, str(config_file), raw_file)
    name = preset or raw_file.get("preset") or spec.default_preset
    layers: list[Layer] = []
    if name and name == spec.default_preset and not preset_names(spec):
        name = None  # a spec without shipped presets runs on the dataclass defaults
    if name:
        layers.extend(preset_layers(spec, name))
    if raw_file:
        layers.append((str(config_file), raw_file))
    if flags:
        layers.append(("flags", {k: ({f: v for f, v in s.items() if v is not None} if isinstance(s, Mapping) else s)
                                 for k, s in flags.items()}))
    if sets:
        layers.append(("--set", parse_sets(sets)))
        check_layer(spec, "--set", layers[-1][1])
    sections, _, _ = _merge(layers, None)
    mode = (sections.get("experiment") or {}).get("mode")
    sections, top, origin = _merge(layers, mode)
    built = {key: _build(cls, sections.get(key, {}), f"{origin.get(key, 'config')}: {key}")
             for key, cls in SECTIONS.items()}
    params = _build(spec.params, sections.get("experiment", {}), "experiment") if spec.params else None
    seed = int(coerce(top.get("seed", 0), int, "seed"))
    # One seed for everything unless a section sets its own.
    for key in ("task", "train"):
        if "seed" not in sections.get(key, {}):
            built[key] = dataclasses.replace(built[key], seed=seed)
    return ExperimentConfig(**built, seed=seed, out=str(top.get("out", spec.default_out)),
                            experiment=params, preset=name)


def to_yaml_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """``cfg`` in the shape of ``run.yaml`` (what config.yaml holds; loadable as --config)."""
    def plain(obj):
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if isinstance(obj, dict):
            return {str(k): plain(v) for k, v in obj.items()}
        return obj if obj is None or isinstance(obj, (bool, int, float, str)) else str(obj)

    out = {"preset": cfg.preset, "seed": cfg.seed, "out": cfg.out}
    out.update({key: plain(getattr(cfg, key)) for key in SECTIONS})
    if cfg.experiment is not None:
        out["experiment"] = plain(cfg.experiment)
    return out
