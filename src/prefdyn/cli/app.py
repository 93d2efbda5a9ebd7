"""``prefdyn <verb>``: the command-line entry point."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from prefdyn.cli._generate import add_experiment_commands
from prefdyn.cli._options import console, user_errors
from prefdyn.cli.displacement import displacement_app
from prefdyn.cli.filter import filter_command
from prefdyn.cli.lm import lm_app
from prefdyn.cli.theory import theory_app

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Measure, predict and reproduce the learning dynamics of preference alignment.")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])
    logging.getLogger("prefdyn").setLevel(logging.INFO)


@app.command()
@user_errors
def info() -> None:
    """Where the embedded model and the cache are."""
    from prefdyn._paths import cache_dir
    from prefdyn.models import embedded_gguf_path
    console.print(f"cache: {cache_dir()}")
    console.print(f"embedded model: {embedded_gguf_path()}")


app.command("filter")(filter_command)
add_experiment_commands(app)
app.add_typer(theory_app, name="theory", help="Theory lab: the theorems checked numerically, and the scaling law.")
app.add_typer(lm_app, name="lm", help="Im & Li Sec. 5: the experiments with every weight (or LoRA) trained.")
app.add_typer(displacement_app, name="displacement", help="Likelihood displacement (Razin et al. 2024): tokens, predictors, mitigation.")


@app.command()
@user_errors
def presets() -> None:
    """The shipped presets: experiment, name and what each is for (copy one as --config)."""
    from rich.table import Table

    from prefdyn.experiments.configure import load_yaml, preset_names, preset_path
    from prefdyn.experiments.registry import specs

    table = Table("experiment", "preset", "description", title="prefdyn presets", title_justify="left")
    for spec in specs():
        for name in preset_names(spec):
            path = preset_path(spec, name)
            table.add_row(spec.name, name, str(load_yaml(path).get("description", "")))
    console.print(table)
