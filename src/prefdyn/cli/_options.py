"""The options every experiment command shares, declared once."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from prefdyn.errors import PrefdynError
from prefdyn.losses import PreferenceLogps, available_losses

err_console = Console(stderr=True)
console = Console()


def show_result(result, out) -> None:
    """An experiment's headlines, notes and report path on the terminal."""
    from rich.table import Table

    table = Table(title=result.title, show_header=False, title_justify="left")
    for label, value, note in result.headlines:
        table.add_row(label, f"[bold]{value}[/bold]", note)
    console.print(table)
    for note in result.notes + result.warnings:
        console.print(f"[dim]•[/dim] {note}")
    report = out / "report.html"
    console.print(f"report: [link=file://{report.resolve()}]{report}[/link]")


def user_errors(fn):
    """Print a :class:`PrefdynError` as one red line (no traceback) and exit with its
    ``exit_code`` (2 unless the error sets another)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PrefdynError as e:
            err_console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(e, "exit_code", 2)) from None

    return wrapper

# name -> (section or None for top level, field, typer annotation)
COMMON: dict[str, tuple[str | None, str, Any]] = {
    "config": (None, "config", Annotated[Optional[str], typer.Option(help="YAML run config; flags override it.")]),
    "model": ("model", "name", Annotated[Optional[str], typer.Option(help="Model: local folder, .gguf file or hub id (default: embedded SmolLM2-135M-Instruct).")]),
    "data": ("data", "path", Annotated[Optional[str], typer.Option(help="Folder of persona JSONL files (default: bundled demo data).")]),
    "behaviors": ("data", "behaviors", Annotated[Optional[str], typer.Option(help="Comma-separated behavior names (default: all).")]),
    "n": ("task", "n_per_behavior", Annotated[Optional[int], typer.Option(help="Statements per behavior (seeded, balanced).")]),
    "seed": (None, "seed", Annotated[Optional[int], typer.Option(help="Seed for sampling, splits and training.")]),
    "out": (None, "out", Annotated[Optional[str], typer.Option(help="Output folder.")]),
    "chat": ("task", "chat_template", Annotated[Optional[bool], typer.Option("--chat/--raw", help="Apply the model's chat template.")]),
    "answers": ("task", "answers", Annotated[Optional[str], typer.Option(help='Comma-separated (yes,no) answers, e.g. "Yes,No".')]),
    "test_fraction": ("task", "test_fraction", Annotated[Optional[float], typer.Option(help="Held-out share per behavior.")]),
    "steps": ("train", "steps", Annotated[Optional[int], typer.Option(help="Training steps.")]),
    "beta": ("train", "beta", Annotated[Optional[float], typer.Option(help="DPO beta.")]),
    "lr": ("train", "lr", Annotated[Optional[float], typer.Option(help="Learning rate (default: derived from the curvature at the start).")]),
    "optimizer": ("train", "optimizer", Annotated[Optional[str], typer.Option(help="sgd (the paper) or adamw.")]),
    "loss": ("train", "loss", Annotated[Optional[str], typer.Option(help=f"Loss: {', '.join(available_losses(PreferenceLogps))}.")]),
    "batch_size": ("train", "batch_size", Annotated[Optional[int], typer.Option(help="Minibatch size per behavior (default: full batch).")]),
    "device": ("model", "device", Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps.")]),
    "cache_dir": ("model", "cache_dir", Annotated[Optional[str], typer.Option(help="Cache folder (default: $PREFDYN_CACHE or ~/.cache/prefdyn).")]),
    "trust_remote_code": ("model", "trust_remote_code", Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Allow the model's own code (hub models only).")]),
}

_SPLIT = {"behaviors", "answers"}


def _split(name: str, value: Any) -> Any:
    if value is None or name not in _SPLIT:
        return value
    parts = [p for p in value.split(",") if p != ""]
    return parts if name == "behaviors" else tuple(parts)


def flag_overrides(values: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The ``--config`` path and the flags that were given (``COMMON`` names -> value or
    None) as a nested partial config: ``{"train": {"lr": 1e-5}, "seed": 3}``."""
    flags: dict[str, Any] = {}
    for name, (section, field, _) in COMMON.items():
        value = _split(name, values.get(name))
        if value is None or name == "config":
            continue
        if section is None:
            flags[field] = value
        else:
            flags.setdefault(section, {})[field] = value
    return values.get("config"), flags
