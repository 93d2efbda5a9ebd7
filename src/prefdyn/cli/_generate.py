"""The experiment verbs, generated from the registry of specs.

Every verb gets the same options: ``--config``, ``--preset``, ``--set key=value``,
``--out`` and the common flags of :data:`prefdyn.cli._options.COMMON` (same help
everywhere), plus the spec's own params as flags. A flag left out arrives as None
and is not part of the config at all (see :mod:`prefdyn.experiments.configure`).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from prefdyn.cli._options import COMMON, console, flag_overrides, show_result, user_errors
from prefdyn.experiments.configure import preset_names, resolve_config
from prefdyn.experiments.harness import run_spec
from prefdyn.experiments.registry import get_spec, specs
from prefdyn.experiments.spec import ExperimentSpec
from prefdyn.experiments.sweep import run_sweep

GROUP_HELP = {
    "lm": "Im & Li Sec. 5: the experiments with every weight (or LoRA) trained.",
    "displacement": "Likelihood displacement (Razin et al. 2024): tokens, predictors, mitigation.",
    "theory": "Theory lab: the theorems checked numerically, and the scaling law.",
}
_SCALARS = (int, float, str, bool)


def _annotation(spec: ExperimentSpec, field: str) -> Any:
    """The typer annotation of the params ``field`` (None = not given)."""
    hint = typing.get_type_hints(spec.params)[field]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    option = spec.options[field]
    flag = "--" + (option.flag or field).replace("_", "-")
    if hint is bool:
        return Annotated[Optional[bool], typer.Option(f"{flag}/--no-{flag[2:]}", help=option.help)]
    kind = hint if hint in _SCALARS else str  # tuples and the rest: comma-separated text
    return Annotated[Optional[kind], typer.Option(flag, help=option.help)]


def _preset_help(spec: ExperimentSpec) -> str:
    names = preset_names(spec)
    default = f" (default: {spec.default_preset})" if spec.default_preset in names else ""
    return f"Shipped preset: {', '.join(names) or 'none'}{default}; `prefdyn presets` describes them."


def _shared_params(preset_help: str) -> list[inspect.Parameter]:
    """``--preset``, ``--set`` and the common flags, in that order."""
    params = [
        inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[Optional[str], typer.Option(help=preset_help)]),
        inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[Optional[list[str]], typer.Option(
                              "--set", help="Any config key, e.g. --set train.weight_decay=0.01 (repeatable).")])]
    return params + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)
                     for name, (_, _, ann) in COMMON.items()]


def _with_signature(fn: Callable[..., None], params: list[inspect.Parameter], doc: str) -> Callable[..., None]:
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = {p.name: p.annotation for p in params}
    fn.__doc__ = doc
    del fn.__wrapped__
    return fn


def experiment_command(spec: ExperimentSpec) -> Callable[..., None]:
    """The CLI verb of ``spec``: resolve the config, run it through the harness, show it."""
    own = list(spec.options)

    @user_errors
    def command(**kwargs) -> None:
        experiment = {f: kwargs.pop(f"x_{f}") for f in own}
        preset, sets = kwargs.pop("preset"), kwargs.pop("set_") or []
        data = kwargs.pop("x_data_argument", None)
        config_file, flags = flag_overrides(kwargs)
        if experiment:
            flags["experiment"] = experiment
        if data is not None:
            flags.setdefault("data", {})["path"] = data
        cfg = resolve_config(spec, preset=preset, config_file=config_file, flags=flags, sets=sets)
        result, out = run_spec(spec, cfg, progress=True)
        if spec.parts:
            console.print(f"[bold green]done[/bold green]: open {out / 'report.html'}")
        else:
            show_result(result, out)
        if spec.check is not None:
            spec.check(result)

    # x_ prefix: a params field may share a common option's name (theory grid's n vs --n)
    params = [inspect.Parameter(f"x_{f}", inspect.Parameter.KEYWORD_ONLY, default=None,
                                annotation=_annotation(spec, f)) for f in own]
    if spec.data_argument:
        params.insert(0, inspect.Parameter("x_data_argument", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                           annotation=Annotated[Optional[str], typer.Argument(
                                               metavar="DATA", help=spec.data_argument, show_default=False)]))
    return _with_signature(command, params + _shared_params(_preset_help(spec)), spec.help or spec.title)


@user_errors
def sweep_command(**kwargs) -> None:
    experiment, grid = kwargs.pop("experiment"), kwargs.pop("grid")
    preset, sets = kwargs.pop("preset"), kwargs.pop("set_") or []
    config_file, flags = flag_overrides(kwargs)
    result, out = run_sweep(get_spec(experiment), grid, preset=preset, config_file=config_file,
                            flags=flags, sets=sets, progress=True)
    show_result(result, out)


_with_signature(sweep_command, [
    inspect.Parameter("experiment", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[str, typer.Argument(
        help='A registered experiment: "lm misalignment", lm-misalignment or lm_misalignment, ...')]),
    inspect.Parameter("grid", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[list[str], typer.Argument(
        help="key=v1,v2,... per swept config key, e.g. train.beta=0.001,0.01,0.1 seed=0,1.")]),
    *_shared_params("The experiment's shipped preset (see `prefdyn presets`).")],
    "App. D and more: run EXPERIMENT once per grid point (own folders), one table, plot and report.")


def add_experiment_commands(app: typer.Typer) -> None:
    """One verb per registered spec; ``"lm misalignment"`` goes under a ``lm`` group."""
    groups: dict[str, typer.Typer] = {}
    for spec in specs():
        group, _, verb = spec.name.rpartition(" ")
        target = app
        if group:
            if group not in groups:
                groups[group] = typer.Typer(add_completion=False, no_args_is_help=True,
                                            rich_markup_mode="rich", help=GROUP_HELP.get(group))
                app.add_typer(groups[group], name=group, help=GROUP_HELP.get(group))
            target = groups[group]
        target.command(verb)(experiment_command(spec))
