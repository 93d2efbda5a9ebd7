"""The suite's workloads: ``name -> run(ctx) -> Row`` (each may raise ``Skip``).

Each module is imported when its workload runs, not with this package: the sides run as
``python -m benchmarks.workloads.<module>``, which would otherwise import the module
twice (once here, once as ``__main__``; runpy warns about it)."""

import importlib

_ENTRIES = {
    "last_layer": ("last_layer", "run"),
    "lm_step": ("lm_step", "run"),
    "extraction": ("extraction", "run"),
    "ches": ("ches", "run"),
    "rl_step": ("rl_step", "run"),
    "rl_bandit": ("rl_step", "run_bandit"),
}


def _workload(module: str, function: str):
    def run(ctx):
        return getattr(importlib.import_module(f"benchmarks.workloads.{module}"), function)(ctx)
    run.__name__ = f"{module}.{function}"
    return run


WORKLOADS = {name: _workload(*entry) for name, entry in _ENTRIES.items()}
