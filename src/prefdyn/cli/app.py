"""``prefdyn <verb>``: the command-line entry point."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from prefdyn.cli._options import console, show_result, user_errors, with_experiment_options
from prefdyn.cli.displacement import displacement_app
from prefdyn.cli.filter import filter_command
from prefdyn.cli.lm import lm_app
from prefdyn.cli.theory import theory_app
from prefdyn.experiments import ExperimentConfig, run_demo, run_experiment
from prefdyn.experiments.priority import highest_gap_pair
from prefdyn.errors import PrefdynError
from prefdyn.experiments.workspace import prepare_workspace

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Measure, predict and reproduce the learning dynamics of preference alignment.")

DEMO_DEFAULTS = {"train": {"steps": 1000, "log_every": 5, "eval_every": 25}}
EXPERIMENT_DEFAULTS = {"train": {"steps": 1000, "log_every": 5, "eval_every": 25}}


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])
    logging.getLogger("prefdyn").setLevel(logging.INFO)


def _experiment(name: str, cfg: ExperimentConfig, **kwargs) -> None:
    result, out = run_experiment(name, cfg, progress=True, **kwargs)
    show_result(result, out)


@app.command()
@with_experiment_options(DEMO_DEFAULTS)
def demo(cfg: ExperimentConfig) -> None:
    """The main job: diagnostics and the three Im & Li experiments on the embedded model, one HTML report."""
    if cfg.out == "runs":
        cfg.out = "runs/demo"
    path = run_demo(cfg, progress=True)
    console.print(f"[bold green]done[/bold green]: open {path}")


@app.command()
@with_experiment_options(EXPERIMENT_DEFAULTS)
def diagnose(cfg: ExperimentConfig) -> None:
    """Before training: distinguishability, priority and Theorem 4.1's bound, ranked and explained."""
    _experiment("diagnostics", cfg)


@app.command()
@with_experiment_options(EXPERIMENT_DEFAULTS)
def distinguishability(cfg: ExperimentConfig) -> None:
    """Fig. 3-4: each behavior trained alone; does D order the speed? Theorem 4.1's bound drawn."""
    _experiment("distinguishability", cfg)


@app.command()
@with_experiment_options(EXPERIMENT_DEFAULTS)
def priority(cfg: ExperimentConfig,
             pair: Annotated[Optional[str], typer.Option(
                 help='Train only this pair: "a,b", or "auto" for the largest priority gap.')] = None) -> None:
    """Fig. 5: behaviors trained jointly; does the priority level predict who is learned first?"""
    ws = prepare_workspace(cfg.model, cfg.data, cfg.task, progress=True)
    which = None
    if pair == "auto":
        which = highest_gap_pair(ws)
    elif pair:
        names = pair.split(",")
        missing = [n for n in names if n not in ws.names]
        if len(names) != 2 or missing:
            raise PrefdynError(f"--pair needs two of {ws.names}, got {pair!r}")
        which = [ws.names.index(n) for n in names]
    _experiment("priority", cfg, ws=ws, which=which)


@app.command()
@with_experiment_options(EXPERIMENT_DEFAULTS)
def misalignment(cfg: ExperimentConfig) -> None:
    """Fig. 9 (last layer): flipped labels trained from the base vs the aligned unembedding."""
    _experiment("misalignment", cfg)


@app.command()
@user_errors
def info() -> None:
    """Where the embedded model and the cache are."""
    from prefdyn._paths import cache_dir
    from prefdyn.models import embedded_gguf_path
    console.print(f"cache: {cache_dir()}")
    console.print(f"embedded model: {embedded_gguf_path()}")


app.command("filter")(filter_command)
app.add_typer(theory_app, name="theory", help="Theory lab: the theorems checked numerically, and the scaling law.")
app.add_typer(lm_app, name="lm", help="Im & Li Sec. 5: the experiments with every weight (or LoRA) trained.")
app.add_typer(displacement_app, name="displacement", help="Likelihood displacement (Razin et al. 2024): tokens, predictors, mitigation.")
