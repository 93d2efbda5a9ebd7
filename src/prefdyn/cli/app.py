"""``prefdyn <verb>``: the command-line entry point."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from prefdyn.cli._generate import add_experiment_commands, sweep_command
from prefdyn.cli._options import console, user_errors
from prefdyn.cli.compare import compare_command
from prefdyn.cli.filter import filter_command

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
app.command("compare")(compare_command)
add_experiment_commands(app)
app.command("sweep", context_settings={"allow_extra_args": False})(sweep_command)


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
