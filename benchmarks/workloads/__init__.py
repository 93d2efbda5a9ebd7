"""The suite's workloads: ``name -> run(ctx) -> Row`` (each may raise ``Skip``)."""

from benchmarks.workloads import ches, extraction, last_layer, lm_step, rl_step

WORKLOADS = {
    "last_layer": last_layer.run,
    "lm_step": lm_step.run,
    "extraction": extraction.run,
    "ches": ches.run,
    "rl_step": rl_step.run,
    "rl_bandit": rl_step.run_bandit,
}
