"""``prefdyn lm <verb>``: the Im & Li (ICML 2024) Section 5 experiments, all weights trained.

Every command takes ``--preset quick|paper`` (quick: about 10 minutes on 2 CPU
cores with the embedded model; paper: the seed's settings, for a GPU),
``--mode full|lora`` and the common experiment options; the preset sets the
defaults, a ``--config`` YAML overrides the preset and flags override both.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated

import typer

from prefdyn.cli._options import (
    COMMON,
    check_mode,
    config_from_flags,
    show_result,
    user_errors,
)
from prefdyn.errors import PrefdynError
from prefdyn.experiments.config import ExperimentConfig
from prefdyn.experiments.lm_common import (
    LMExperimentPreset,
    get_preset,
    run_lm_experiment,
)

lm_app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                     help="Section 5 of Im & Li: the experiments with every weight (or LoRA) trained.")

_PRESET = Annotated[str, typer.Option(help="quick (2 CPU cores, ~10 min) or paper (the seed's settings).")]
_MODE = Annotated[str | None, typer.Option(help="full (every weight) or lora (default: the preset's).")]


def lm_options(experiment: str):
    """Decorate ``fn(cfg, preset, **own_options)``: adds ``--preset``, ``--mode`` and the
    common options; builds ``cfg`` from preset defaults < ``--config`` YAML < flags."""

    def decorate(fn):
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(fn).parameters.values()
               if p.name not in ("cfg", "preset")]

        @functools.wraps(fn)
        @user_errors
        def wrapper(**kwargs):
            preset = get_preset(experiment, kwargs.pop("preset"))
            mode = kwargs.pop("mode")
            if mode is not None:
                check_mode(mode)
                preset = dataclasses.replace(preset, mode=mode)
            cfg = config_from_flags({k: kwargs.pop(k) for k in COMMON}, preset.config_defaults())
            return fn(cfg, preset, **kwargs)

        params = own + [
            inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default="quick", annotation=_PRESET),
            inspect.Parameter("mode", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_MODE)]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)
                   for name, (_, _, ann) in COMMON.items()]
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__
        return wrapper

    return decorate


def _run(name: str, cfg: ExperimentConfig, preset: LMExperimentPreset, **kwargs) -> None:

    if cfg.out == "runs":
        cfg.out = "runs/lm"
    result, out = run_lm_experiment(name, cfg, preset, progress=True, **kwargs)
    show_result(result, out)


# ---------------------------------------------- Fig. 6-8 (experiments 1-3) ---

@lm_app.command("distinguishability")
@lm_options("lm_distinguishability")
def distinguishability(cfg: ExperimentConfig, preset: LMExperimentPreset) -> None:
    """Fig. 6: behaviors of increasing D, each fine-tuned alone; does D order the speed?"""
    _run("lm_distinguishability", cfg, preset)


@lm_app.command("priority")
@lm_options("lm_priority")
def priority(cfg: ExperimentConfig, preset: LMExperimentPreset) -> None:
    """Fig. 7: the highest- and the lowest-priority-gap pair, each trained jointly."""
    _run("lm_priority", cfg, preset)


@lm_app.command("distribution")
@lm_options("distribution_change")
def distribution(cfg: ExperimentConfig, preset: LMExperimentPreset,
                 projections: Annotated[str, typer.Option(
                     help="Comma-separated 2-D views: pca, umap (umap needs umap-learn).")] = "pca,umap"
                 ) -> None:
    """Fig. 8: D and concentration of the embeddings before vs after DPO; PCA and UMAP views."""
    views = tuple(p.strip() for p in projections.split(",") if p.strip())
    unknown = [p for p in views if p not in ("pca", "umap")]
    if unknown:
        raise PrefdynError(f"--projections: unknown view(s) {unknown}; use pca and/or umap")
    _run("distribution_change", cfg, preset, projections=views)


# ------------------------------- Fig. 9, 15-16, App. D (experiments 4-6) ---
# misalignment, hh-rlhf and beta-sweep commands go here (same pattern as above).

def _lm_out(cfg: ExperimentConfig, name: str) -> Path:
    return Path("runs/lm" if cfg.out == "runs" else cfg.out) / name


@lm_app.command("misalignment")
@lm_options("lm_misalignment")
def misalignment(cfg: ExperimentConfig, preset: LMExperimentPreset) -> None:
    """Fig. 9: align, then train on flipped labels from the base vs the aligned model
    (--mode full|lora; with lora the LoRA preset's lr is used unless --lr is given)."""
    from prefdyn.experiments.lm_misalignment import for_mode

    cfg = dataclasses.replace(cfg, train=for_mode(cfg.train, preset))
    _run("lm_misalignment", cfg, preset, out=_lm_out(cfg, f"misalignment_{preset.mode}"))


_MODEL, _DEVICE, _CACHE_DIR = (COMMON[k][2] for k in ("model", "device", "cache_dir"))


@lm_app.command("hh-rlhf")
@user_errors
def hh_rlhf(
    pairs: Annotated[str | None, typer.Option(help="HH-RLHF pairs (.jsonl or .jsonl.gz), e.g. ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz.")] = None,
    preset: _PRESET = "quick",
    mode: Annotated[str, typer.Option(help="lora (the paper's App. C) or full.")] = "lora",
    n_train: Annotated[int | None, typer.Option(help="Training pairs (seeded subsample).")] = None,
    n_test: Annotated[int | None, typer.Option(help="Held-out pairs.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Keep pairs whose prompt+response fits this many tokens.")] = None,
    align_steps: Annotated[int | None, typer.Option(help="Steps on the true preferences.")] = None,
    flip_steps: Annotated[int | None, typer.Option(help="Steps on the flipped preferences.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Pairs per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    beta: Annotated[float | None, typer.Option(help="DPO beta.")] = None,
    loss: Annotated[str, typer.Option(help="Loss from the registry.")] = "dpo",
    model: _MODEL = None, device: _DEVICE = None, cache_dir: _CACHE_DIR = None,
    seed: Annotated[int, typer.Option(help="Seed for the subsample, batches and LoRA init.")] = 0,
    out: Annotated[str, typer.Option(help="Output folder.")] = "runs/lm/hh_rlhf",
) -> None:
    """Fig. 15-16 (App. C): LoRA DPO on HH-RLHF, then flipped preferences from the base vs the
    aligned model; does the held-out log-prob difference fall back near the base's?"""
    from prefdyn.experiments.config import ModelConfig
    from prefdyn.experiments.hh_rlhf import hh_preset, run_hh_experiment

    if pairs is None:
        raise PrefdynError("give the preference pairs with --pairs PATH "
                           "(e.g. ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz)")
    check_mode(mode)
    chosen = hh_preset(preset, n_train=n_train, n_test=n_test, max_tokens=max_tokens,
                       align_steps=align_steps, flip_steps=flip_steps, batch_size=batch_size,
                       lr=lr, beta=beta)
    model_cfg = ModelConfig(name=model, device=device or "auto", cache_dir=cache_dir)
    result, path = run_hh_experiment(pairs, chosen, model=model_cfg, mode=mode, seed=seed,
                                     loss=loss, out=out)
    show_result(result, path)


_SWEEP_EXPERIMENT = Annotated[str, typer.Argument(help="A registered experiment: misalignment, distinguishability, priority, lm_misalignment, hh_rlhf, ...")]


@lm_app.command("beta-sweep")
@user_errors
def beta_sweep(experiment: _SWEEP_EXPERIMENT,
               betas: Annotated[str, typer.Option(help="Comma-separated betas.")] = "0.05,0.1,0.5",
               preset: _PRESET = "quick", mode: _MODE = None,
               pairs: Annotated[str | None, typer.Option(help="Pairs file (hh_rlhf only).")] = None,
               **common) -> None:
    """App. D: run EXPERIMENT once per beta (each in its own folder), one table, plot and report."""
    from prefdyn.cli.app import EXPERIMENT_DEFAULTS
    from prefdyn.experiments.beta_sweep import is_lm_experiment, sweep_experiment
    from prefdyn.experiments.hh_rlhf import hh_preset
    from prefdyn.experiments.runner import EXPERIMENTS

    if mode is not None:
        check_mode(mode)
    chosen, defaults = None, EXPERIMENT_DEFAULTS
    if experiment == "hh_rlhf":
        chosen = hh_preset(preset)
    elif experiment in EXPERIMENTS and is_lm_experiment(EXPERIMENTS[experiment]):
        key = "lm_misalignment_lora" if experiment == "lm_misalignment" and mode == "lora" else experiment
        chosen = get_preset(key, preset)
        if mode is not None:
            chosen = dataclasses.replace(chosen, mode=mode)
        defaults = chosen.config_defaults()
    cfg = config_from_flags(common, defaults)
    if cfg.out == "runs":
        cfg.out = "runs/lm"
    result, out = sweep_experiment(experiment, cfg, betas, preset=chosen, pairs=pairs,
                                   mode=mode or "lora", progress=True)
    show_result(result, out)


def _with_common(fn):
    """Add the common experiment options to ``fn``'s CLI signature (as keyword ``**common``)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(fn).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params = own + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                      annotation=ann) for name, (_, _, ann) in COMMON.items()]
    fn.__signature__ = inspect.Signature(params)
    return fn


_with_common(beta_sweep)
