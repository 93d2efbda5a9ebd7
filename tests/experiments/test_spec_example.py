"""The README's walkthrough, verified: adding an experiment is writing one spec file.

Everything from ``@dataclass`` to ``register(...)`` is what the file
``src/prefdyn/experiments/gap.py`` would hold; ``prefdyn gap --top 2`` then runs it
with every common option, ``--config``, ``--preset`` and ``prefdyn sweep gap ...``.
"""

import json
from dataclasses import dataclass

import pytest
import typer
import yaml
from typer.testing import CliRunner

from prefdyn.diagnostics.distinguishability import behavior_stats
from prefdyn.experiments import ExperimentResult, ExperimentSpec, RunContext, register
from prefdyn.experiments.spec import REGISTRY, Option


@dataclass
class GapParams:
    top: int = 3


def run_gap(ctx: RunContext) -> ExperimentResult:
    """Theorem 4.1 in one table: are the most distinguishable behaviors (largest D) the ones
    last-layer DPO learns best? Reports D and the final loss per behavior."""
    ws = ctx.workspace()
    run = ws.fit(ws.problems(), ctx.train, names=ws.names, sink=ctx.sink)
    D = {b.name: behavior_stats(ws.embeddings[i][b.train_idx], b.prefers_yes[b.train_idx]).D
         for i, b in enumerate(ws.behaviors)}
    loss = run.history.last("loss")
    top = sorted(D, key=D.get, reverse=True)[:ctx.params.top]
    return ExperimentResult(name="gap", title="Most distinguishable behaviors",
                            explanation="D = ||mu+ - mu-|| and the final DPO loss, per behavior.",
                            summary={"D": D, "final_loss": loss, "top": top},
                            tables=[("Per behavior", [{"behavior": n, "D": D[n], "loss": loss[n]} for n in D])])


@pytest.fixture
def gap_spec():
    spec = register(ExperimentSpec(name="gap", title="Most distinguishable behaviors", run=run_gap,
                                   params=GapParams, last_layer=True,
                                   options={"top": Option("How many behaviors to list.")}))
    yield spec
    REGISTRY.pop("gap")


def test_a_new_spec_runs_through_the_generated_cli(gap_spec, tiny_model_dir, tmp_path):
    from prefdyn.cli._generate import add_experiment_commands

    app = typer.Typer()
    app.callback()(lambda: None)
    add_experiment_commands(app)
    result = CliRunner().invoke(app, ["gap", "--top", "2", "--model", str(tiny_model_dir), "--n", "12",
                                      "--behaviors", "kindness,patience,optimism", "--steps", "5",
                                      "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "gap" / "summary.json").read_text())
    assert len(summary["top"]) == 2 and set(summary["D"]) == {"kindness", "patience", "optimism"}
    assert max(summary["D"], key=summary["D"].get) == summary["top"][0]
    config = yaml.safe_load((tmp_path / "gap" / "config.yaml").read_text())
    assert config["experiment"] == {"top": 2} and config["train"]["steps"] == 5
    assert (tmp_path / "gap" / "report.html").is_file() and (tmp_path / "gap" / "metrics.jsonl").stat().st_size
