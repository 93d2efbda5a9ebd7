"""Every shipped experiment spec, by name (importing this module registers them all).

The CLI verbs, ``prefdyn presets`` and ``prefdyn sweep`` are generated from
:data:`REGISTRY`; an experiment module registers its own spec with
:func:`prefdyn.experiments.spec.register`. Every public module of this package is
imported here, so a new experiment is one new file and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from prefdyn.errors import PrefdynError
from prefdyn.experiments.spec import PERSONA_ATTRIBUTION, REGISTRY, ExperimentSpec, register

for _module in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"prefdyn.experiments.{_module.name}")

DEMO = register(ExperimentSpec(
    name="demo", title="learning dynamics of preference alignment",
    help="The main job: diagnostics and the three Im & Li experiments on the embedded model, one HTML report.", default_out="runs/demo",
    last_layer=True, attribution=PERSONA_ATTRIBUTION,
    parts=(("diagnostics", "diagnose", {}), ("distinguishability", "distinguishability", {}),
           ("priority", "priority", {}), ("priority_pair", "priority", {"pair": "auto"}),
           ("misalignment", "misalignment", {}))))
"""The main job: diagnostics and the three Im & Li experiments on one model, one report."""


def get_spec(name: str) -> ExperimentSpec:
    """The spec called ``name`` (``lm misalignment``, ``lm-misalignment`` or ``lm_misalignment``)."""
    for spec in REGISTRY.values():
        if name in (spec.name, spec.key, spec.name.replace(" ", "_")):
            return spec
    raise PrefdynError(f"unknown experiment {name!r}; choose from {sorted(REGISTRY)}")


def specs() -> list[ExperimentSpec]:
    return list(REGISTRY.values())
