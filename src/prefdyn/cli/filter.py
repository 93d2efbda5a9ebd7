"""``prefdyn filter``: drop the pairs most likely to cause likelihood displacement (Razin et al., 2024).

Registered by ``cli/app.py`` with ``app.command("filter")(filter_command)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from prefdyn.cli._options import user_errors
from prefdyn.errors import PrefdynError

logger = logging.getLogger(__name__)
console = Console()

SCORES = ("ches", "ches_normalized", "edit", "hidden")
_SUFFIXES = (".gz", ".jsonl", ".json")


def report_base(out: Path) -> Path:
    """``out`` without its ``.jsonl``/``.gz`` suffixes: ``x.jsonl.gz`` -> ``x`` (reports go to ``x.report.*``)."""
    name = out.name
    while name.endswith(_SUFFIXES):
        name = name[: name.rfind(".")]
    return out.with_name(name or out.name)


def _input_format(path: Path, format: str) -> Literal["trl", "hh"]:
    from prefdyn.data import detect_format
    from prefdyn.data._jsonl import iter_jsonl

    if format in ("trl", "hh"):
        return format  # type: ignore[return-value]
    for source, record in iter_jsonl(path):
        return detect_format(record, source)
    raise PrefdynError(f"{path}: no preference pairs")


def compute_scores(score: str, pairs, *, model: str | None, cache_dir: str | None,
                   device: str, batch_size: int):
    """The (n,) float64 scores of ``pairs`` under ``score`` (higher = more suspect)."""
    from prefdyn._runtime import resolve_device
    from prefdyn.models import load_model

    loaded = load_model(model, cache_dir=cache_dir, device=resolve_device(device))
    if score in ("ches", "ches_normalized"):
        from prefdyn.diagnostics.ches import cached_pair_hidden_sums, ches_from_sums

        sums = cached_pair_hidden_sums(loaded, pairs, cache_dir=cache_dir, batch_size=batch_size,
                                       progress=True)
        return ches_from_sums(*sums)[score], loaded.name
    if score == "edit":
        from prefdyn.diagnostics.similarity import edit_similarity

        return edit_similarity(loaded.tokenizer, pairs), loaded.name
    from prefdyn.diagnostics.similarity import hidden_inner_products
    from prefdyn.embeddings import cached_embeddings

    def embed(texts: list[str]):
        return cached_embeddings(loaded, texts, cache_dir=cache_dir, batch_size=batch_size, progress=True)

    return hidden_inner_products(embed([p.prompt + p.chosen for p in pairs]),
                                 embed([p.prompt + p.rejected for p in pairs])), loaded.name


def _write_html(path: Path, scores, dropped_idx: list[int], summary: dict) -> None:
    from prefdyn.reports import Report, plot_score_histogram

    fig = plot_score_histogram(scores.numpy(), xlabel=summary["score"],
                               threshold=float(scores[dropped_idx].min()) if dropped_idx else None)
    report = Report("prefdyn filter", subtitle=f"{summary['input']} -> {summary['output']}")
    report.headline("kept", summary["counts"]["kept"])
    report.headline("dropped", summary["counts"]["dropped"], note=f"score: {summary['score']}")
    section = report.section("Score distribution", text="Pairs with the highest scores are dropped "
                             "(Razin et al., 2024: a high CHES predicts likelihood displacement).")
    section.figure(fig, caption=f"{summary['score']} over {len(scores)} pairs")
    report.write(path)


@user_errors
def filter_command(
    pairs: Annotated[Path, typer.Argument(help="Preference pairs: TRL or HH-RLHF JSONL (.gz ok).")],
    out: Annotated[Path, typer.Option(help="Filtered pairs, written in the input's format (.gz ok).")],
    score: Annotated[str, typer.Option(help="ches, ches_normalized, edit or hidden; the highest are dropped.")] = "ches",
    top_percent: Annotated[float | None, typer.Option(help="Drop this percentage of pairs, highest scores first.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Drop every pair whose score is above this.")] = None,
    model: Annotated[str | None, typer.Option(help="Model: local folder, .gguf file or hub id (default: embedded).")] = None,
    cache_dir: Annotated[str | None, typer.Option(help="Cache folder (default: $PREFDYN_CACHE or ~/.cache/prefdyn).")] = None,
    format: Annotated[str, typer.Option(help="Input format: auto, trl or hh.")] = "auto",
    skip_bad: Annotated[bool, typer.Option("--skip-bad/--strict", help="Skip malformed records.")] = False,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    html: Annotated[bool, typer.Option("--html/--no-html", help="Also write OUT.report.html.")] = True,
) -> None:
    """Drop the pairs most likely to cause likelihood displacement (CHES, Razin et al. 2024)."""
    from prefdyn.data import load_pairs
    from prefdyn.data.filtering import drop_indices, write_pairs

    if score not in SCORES:
        raise PrefdynError(f"unknown score {score!r}: use {', '.join(SCORES)}")
    if (top_percent is None) == (threshold is None):
        raise PrefdynError("give exactly one of --top-percent and --threshold")
    if format not in ("auto", "trl", "hh"):
        raise PrefdynError(f"unknown format {format!r}: use auto, trl or hh")
    fmt = _input_format(pairs, format)
    records = load_pairs(pairs, format=fmt, on_error="skip" if skip_bad else "raise")
    scores, model_name = compute_scores(score, records, model=model, cache_dir=cache_dir,
                                        device=device, batch_size=batch_size)
    dropped_idx = drop_indices(scores, top_percent=top_percent, threshold=threshold)
    dropped_set = set(dropped_idx)
    write_pairs(out, [p for i, p in enumerate(records) if i not in dropped_set], fmt)

    summary = {
        "input": str(pairs), "output": str(out), "format": fmt, "score": score, "model": model_name,
        "criterion": {"top_percent": top_percent, "threshold": threshold},
        "counts": {"total": len(records), "kept": len(records) - len(dropped_idx), "dropped": len(dropped_idx)},
        "scores": {"min": float(scores.min()), "max": float(scores.max()),
                   "mean": float(scores.mean()), "median": float(scores.median())},
        "dropped": [{"source": records[i].source, "score": float(scores[i])} for i in dropped_idx],
    }
    base = report_base(out)
    report_json = base.with_name(base.name + ".report.json")
    report_json.write_text(json.dumps(summary, indent=2) + "\n")
    if html:
        _write_html(base.with_name(base.name + ".report.html"), scores, dropped_idx, summary)
    console.print(f"kept [bold]{summary['counts']['kept']}[/bold] of {len(records)} pairs "
                  f"(dropped {len(dropped_idx)} by {score}) -> {out}")
    console.print(f"report: {report_json}")
