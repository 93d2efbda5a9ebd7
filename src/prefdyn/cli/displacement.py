"""``prefdyn displacement <verb>``: the likelihood-displacement experiments (Razin et al., 2024).

Mounted by the main app as ``app.add_typer(displacement_app, name="displacement")``.
Each verb writes the usual run folder (config.yaml, environment.json,
metrics.jsonl, PNGs, summary.json, report.html) under ``--out``.

``--preset quick`` finishes in minutes on a laptop CPU; ``--preset paper`` uses
larger settings for a GPU. A preset fills the training fields that neither
``--config`` nor a flag changed from :class:`TrainConfig`'s defaults (steps, lr,
optimizer, batch size).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from prefdyn._runtime import resolve_device, set_seed
from prefdyn.cli._options import check_mode, show_result, with_experiment_options
from prefdyn.errors import PrefdynError
from prefdyn.experiments import ExperimentConfig
from prefdyn.experiments._displacement import HH_DEFAULT, PERSONA_DEFAULT, write_run
from prefdyn.training import TrainConfig

displacement_app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
    help="Likelihood displacement (Razin et al. 2024): single-token table, which score predicts it, "
         "and CHES filtering vs an SFT term.")

PRESETS: dict[str, dict[str, dict]] = {
    "tokens": {
        "quick": {"train": {"steps": 60, "lr": 1e-5, "optimizer": "adamw"}, "exp": {"loss_target": 0.05}},
        "paper": {"train": {"steps": 1000, "lr": 1e-6, "optimizer": "adamw"}, "exp": {"loss_target": 0.01}},
    },
    "predictors": {
        "quick": {"train": {"steps": 16, "lr": 5e-4, "optimizer": "adamw", "batch_size": 4},
                  "exp": {"n": 32, "max_tokens": 64}},
        "paper": {"train": {"steps": 1000, "lr": 1e-4, "optimizer": "adamw", "batch_size": 32},
                  "exp": {"n": 1024, "max_tokens": 512}},
    },
    "mitigation": {
        "quick": {"train": {"steps": 12, "lr": 5e-4, "optimizer": "adamw", "batch_size": 4},
                  "exp": {"n_train": 24, "n_eval": 12, "max_tokens": 64, "top_percent": 25.0}},
        "paper": {"train": {"steps": 1000, "lr": 1e-4, "optimizer": "adamw", "batch_size": 32},
                  "exp": {"n_train": 1024, "n_eval": 256, "max_tokens": 512, "top_percent": 10.0}},
    },
}
PresetOpt = Annotated[str, typer.Option(help="quick (CPU, minutes) or paper (larger, for a GPU).")]
SourceFile = Annotated[str, typer.Option(help="HH-RLHF pairs (JSONL .gz); bad records are skipped.")]


def _preset(verb: str, name: str, cfg: ExperimentConfig) -> dict:
    """Apply ``PRESETS[verb][name]`` to the train fields still at their defaults; the
    experiment-specific settings of the preset are returned (flags override them)."""
    if name not in PRESETS[verb]:
        raise PrefdynError(f"--preset must be one of {', '.join(PRESETS[verb])}, got {name!r}")
    preset = PRESETS[verb][name]
    defaults = TrainConfig()
    changes = {k: v for k, v in preset["train"].items() if getattr(cfg.train, k) == getattr(defaults, k)}
    cfg.train = dataclasses.replace(cfg.train, seed=cfg.seed, **changes)
    return dict(preset["exp"])


def _load(cfg: ExperimentConfig):
    from prefdyn.models import load_model

    return load_model(cfg.model.name, cache_dir=cfg.model.cache_dir, device=resolve_device(cfg.model.device),
                      trust_remote_code=cfg.model.trust_remote_code)


def _run(name: str, cfg: ExperimentConfig, settings, compute, preset: str) -> Path:
    set_seed(cfg.seed)
    out = Path(cfg.out) / name
    device = str(resolve_device(cfg.model.device))

    def body(run):
        loaded = _load(cfg)
        result = compute(loaded, run)
        return result, f"{loaded.name} ({loaded.fingerprint[:12]})"

    result = write_run(out, {"preset": preset, "experiment": cfg, "displacement": settings}, cfg.seed, device, body,
                       {"beta": cfg.train.beta, "optimizer": cfg.train.optimizer, "lr": cfg.train.lr,
                        "steps": cfg.train.steps})
    show_result(result, out)
    return out


def _opt(value, preset: dict, key: str):
    return preset[key] if value is None else value


@displacement_app.command()
@with_experiment_options()
def tokens(cfg: ExperimentConfig,
           preset: PresetOpt = "quick",
           pairs: Annotated[str, typer.Option(help='Answer pairs "y+:y-", comma-separated; each one token.')]
           = "Yes:No,No:Never,Sure:Yes",
           statement: Annotated[str | None, typer.Option(help="The persona statement of the one prompt.")] = None,
           synonyms: Annotated[str | None, typer.Option(
               help="YAML/JSON file: word -> list of synonyms (default: prefdyn's small list).")] = None,
           top_k: Annotated[int, typer.Option(help="Gainers shown per pair, and k of overlap@k.")] = 10,
           loss_target: Annotated[float | None, typer.Option(
               help="Stop once the DPO loss is below this (else --steps).")] = None) -> None:
    """Single prompt, single-token answers: pi(y+), pi(y-) before/after DPO and where the mass went."""
    from prefdyn.experiments.displacement_tokens import (
        DEFAULT_STATEMENT,
        TokensConfig,
        parse_answer_pairs,
        run_token_table,
    )

    exp = _preset("tokens", preset, cfg)
    settings = TokensConfig(statement=statement or DEFAULT_STATEMENT, pairs=parse_answer_pairs(pairs),
                            loss_target=_opt(loss_target, exp, "loss_target"), top_k=top_k,
                            synonyms=synonyms, chat_template=cfg.task.chat_template,
                            template=cfg.task.template)
    _run("displacement_tokens", cfg, settings,
         lambda loaded, run: run_token_table(loaded, settings, cfg.train, sink=run), preset)


@displacement_app.command()
@with_experiment_options()
def predictors(cfg: ExperimentConfig,
               preset: PresetOpt = "quick",
               source: Annotated[str, typer.Option(help="hh, persona or both.")] = "both",
               pairs_file: SourceFile = HH_DEFAULT,
               n_pairs: Annotated[int | None, typer.Option(help="Pairs per source (seeded).")] = None,
               max_tokens: Annotated[int | None, typer.Option(
                   help="Longest prompt+response kept, in tokens.")] = None,
               mode: Annotated[str, typer.Option(help="lora or full.")] = "lora") -> None:
    """Which score predicts displacement? Spearman of CHES and baselines with the chosen log-prob change."""
    from prefdyn.experiments.displacement_predictors import SourceConfig, run_predictors

    exp = _preset("predictors", preset, cfg)
    sources = ("hh", "persona") if source == "both" else (source,)
    settings = SourceConfig(sources=sources, hh_path=pairs_file, persona_path=cfg.data.path or PERSONA_DEFAULT,
                            behaviors=cfg.data.behaviors, n=_opt(n_pairs, exp, "n"),
                            max_tokens=_opt(max_tokens, exp, "max_tokens"),
                            chat_template=cfg.task.chat_template)
    check_mode(mode)
    _run("displacement_predictors", cfg, settings,
         lambda loaded, run: run_predictors(loaded, settings, cfg.train, sink=run, mode=mode), preset)


@displacement_app.command()
@with_experiment_options()
def mitigation(cfg: ExperimentConfig,
               preset: PresetOpt = "quick",
               source: Annotated[str, typer.Option(help="hh or persona.")] = "hh",
               pairs_file: SourceFile = HH_DEFAULT,
               n_train: Annotated[int | None, typer.Option(help="Training pairs (seeded).")] = None,
               n_eval: Annotated[int | None, typer.Option(help="Held-out evaluation pairs.")] = None,
               max_tokens: Annotated[int | None, typer.Option(
                   help="Longest prompt+response kept, in tokens.")] = None,
               top_percent: Annotated[float | None, typer.Option(
                   help="q: share of training pairs dropped by CHES (and at random).")] = None,
               mode: Annotated[str, typer.Option(help="lora or full.")] = "lora") -> None:
    """CHES filtering vs random filtering vs an SFT term: which mitigates displacement?"""
    from prefdyn.experiments.displacement_mitigation import (
        MitigationConfig,
        run_mitigation,
    )

    exp = _preset("mitigation", preset, cfg)
    settings = MitigationConfig(source=source, hh_path=pairs_file, persona_path=cfg.data.path or PERSONA_DEFAULT,
                                behaviors=cfg.data.behaviors, n_train=_opt(n_train, exp, "n_train"),
                                n_eval=_opt(n_eval, exp, "n_eval"), max_tokens=_opt(max_tokens, exp, "max_tokens"),
                                top_percent=_opt(top_percent, exp, "top_percent"),
                                chat_template=cfg.task.chat_template)
    check_mode(mode)
    _run("displacement_mitigation", cfg, settings,
         lambda loaded, run: run_mitigation(loaded, settings, cfg.train, sink=run, mode=mode), preset)
