"""``prefdyn compare DIAGNOSIS RUN``: a diagnosis's predictions beside what a run did.

Registered by ``cli/app.py`` with ``app.command("compare")(compare_command)``; the
computation is :mod:`prefdyn.experiments.compare`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from prefdyn.cli._options import console, user_errors


def _fmt(x, spec: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


@user_errors
def compare_command(
    diagnosis: Annotated[Path, typer.Argument(help="diagnosis.json written by prefdyn diagnose.")],
    run: Annotated[Path, typer.Argument(help="Run folder with concepts.jsonl and pair_logps.json "
                                             "(prefdyn's ConceptTracker or prefdyn.integrations.trl).")],
    measure: Annotated[str, typer.Option(help="Measured learning speed: accuracy_auc (area under the "
                                              "concept's reward-accuracy curve) or margin_half (first step "
                                              "its margin reaches half its final value).")] = "accuracy_auc",
    out: Annotated[Optional[Path], typer.Option(help="Folder for compare.json and compare.html "
                                                     "(default: RUN).")] = None,
) -> None:
    """Predicted vs measured learning order of the concepts (Spearman), and the precision
    and recall of the diagnosis's risky pairs against the pairs whose chosen log-prob fell."""
    from rich.table import Table

    from prefdyn.experiments.compare import compare_report, compare_run

    cmp = compare_run(diagnosis, run, measure=measure)
    out = out or run
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(cmp.to_dict(), indent=2))
    report = compare_report(cmp).write(out / "compare.html")

    table = Table("concept", "predicted rank", "measured rank", "speed", "probe pairs", "final accuracy",
                  title=f"Learning order ({cmp.measure})", title_justify="left")
    for r in sorted(cmp.concepts, key=lambda r: r["predicted_rank"]):
        table.add_row(r["name"], str(r["predicted_rank"]), _fmt(r["measured_rank"], "g"), _fmt(r["speed"]),
                      str(r["n_probe"]), _fmt(r["final_accuracy"], ".2f"))
    console.print(table)
    console.print(f"Spearman rho = [bold]{_fmt(cmp.spearman, '.2f')}[/bold] ({cmp.p_kind} p = {_fmt(cmp.p, '.2g')})")
    if cmp.unmeasured:
        console.print(f"[dim]not measured (no probe pair): {', '.join(cmp.unmeasured)}[/dim]")
    risk = cmp.risk
    console.print(f"risky pairs: precision [bold]{_fmt(risk['precision'], '.2f')}[/bold] "
                  f"({risk['n_hits']}/{risk['n_risky_probed']} probed), recall {_fmt(risk['recall'], '.2f')} "
                  f"(of {risk['n_fell']} that fell), base rate {_fmt(risk['base_rate'], '.2f')}, "
                  f"hypergeometric p = {_fmt(risk['p'], '.2g')}")
    console.print(f"report: [link=file://{report.resolve()}]{report}[/link]")
