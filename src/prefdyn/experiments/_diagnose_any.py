"""The ``diagnose`` verb on any pairs data (not a persona folder): params, run, ``--fail-on`` check.

Writes into its run folder, besides the harness' files: ``diagnosis.json`` (the
``prefdyn.diagnosis/1`` contract that ``prefdyn compare`` reads) and ``pairs.jsonl``
(the pairs that were run through the model, TRL format, in load order), the input of
the ``prefdyn filter`` command the recommendations give.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from prefdyn.data.filtering import write_pairs
from prefdyn.data.sources import load_source
from prefdyn.errors import PrefdynError
from prefdyn.experiments._data_diagnosis import DiagnoseSettings, diagnose_data
from prefdyn.experiments._diagnosis_report import diagnosis_result, recommendations
from prefdyn.experiments._diagnosis_reward import reward_spread
from prefdyn.experiments._fail_on import ThresholdCrossed, crossed, parse_fail_on
from prefdyn.experiments.result import ExperimentResult
from prefdyn.experiments.spec import Option, RunContext


@dataclass
class DiagnoseParams:
    """``prefdyn diagnose`` options (those other than persona's are used on any pairs data)."""

    concept_column: str | None = None
    clusters: int | None = None
    max_pairs: int | None = None
    split: str | None = None
    risk_threshold: float = 0.0
    reward: str | None = None
    reward_k: int = 4
    reward_prompts: int = 8
    max_new_tokens: int = 16
    fail_on: str | None = None
    strict: bool = False
    top_risky: int = 10

    def __post_init__(self) -> None:
        for name in ("clusters", "max_pairs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PrefdynError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.reward_k < 2 or self.reward_prompts < 1 or self.max_new_tokens < 1:
            raise PrefdynError("--reward-k must be >= 2, --reward-prompts and --max-new-tokens >= 1")
        parse_fail_on(self.fail_on)  # a typo fails before any work


OPTIONS = {
    "concept_column": Option("Column that names each pair's concept (default: clusters of the prompts)."),
    "clusters": Option("Number of prompt clusters (default: best silhouette for K in 2..8)."),
    "max_pairs": Option("Read only the first N pairs."),
    "split": Option("Split of a datasets folder or hub data set (default: train, or the only one)."),
    "risk_threshold": Option("CHES above this marks a pair as a displacement risk (default 0)."),
    "reward": Option("Reward name: also measure the reward spread per prompt."),
    "reward_k": Option("Samples per prompt for the reward spread (multi-token data)."),
    "reward_prompts": Option("Distinct prompts for the reward spread."),
    "max_new_tokens": Option("Tokens per sampled response for the reward spread."),
    "fail_on": Option("Exit non-zero when crossed, e.g. 'ches_share>0.2,starved_concepts>0'."),
    "strict": Option("Stop at the first data problem instead of reporting it."),
    "top_risky": Option("Riskiest pairs listed with their text."),
}


def run_any(ctx: RunContext) -> ExperimentResult:
    """Diagnose the pairs at ``data.path`` with the model, write diagnosis.json and pairs.jsonl."""
    p: DiagnoseParams = ctx.params
    cfg = ctx.cfg
    conditions = parse_fail_on(p.fail_on)
    loaded = ctx.model()
    tokenizer = loaded.tokenizer if cfg.task.chat_template and loaded.has_chat_template else None
    data = load_source(cfg.data.path, split=p.split, limit=p.max_pairs, tokenizer=tokenizer)
    if p.concept_column is not None:
        data.column(p.concept_column)  # an unknown column fails before any model work
    settings = DiagnoseSettings(concept_column=p.concept_column, clusters=p.clusters,
                                risk_threshold=p.risk_threshold, strict=p.strict, seed=cfg.seed,
                                batch_size=cfg.model.batch_size, cache_dir=cfg.model.cache_dir,
                                progress=ctx.progress)
    diag = diagnose_data(loaded, data, settings)
    if p.reward is not None:
        single = len(diag.geometry_risk) == len(diag.usable)
        diag.reward = reward_spread(loaded, data, diag.usable, single, p.reward, k=p.reward_k,
                                    max_new_tokens=p.max_new_tokens, n_prompts=p.reward_prompts,
                                    seed=cfg.seed, progress=ctx.progress)
    pairs_file = write_pairs(ctx.sink.file("pairs.jsonl"), [data.pairs[i] for i in diag.usable], "trl")
    diag.recommendations = recommendations(diag, str(pairs_file), cfg.model.name)
    reasons = crossed(conditions, diag.metrics())
    record = {**diag.to_json(), "fail_on": {"conditions": [str(c) for c in conditions], "crossed": reasons}}
    ctx.sink.file("diagnosis.json").write_text(json.dumps(record, indent=1) + "\n")
    result = diagnosis_result(diag, top_risky=p.top_risky)
    result.summary = {"diagnosis": "diagnosis.json", "data": record["data"], "metrics": record["metrics"],
                      "fail_on": record["fail_on"]}
    for reason in reasons:
        result.warnings.append(f"--fail-on crossed: {reason}")
    ctx.subtitle = f"{loaded.name} on {len(data.pairs)} pairs ({data.format})"
    return result


def check_fail_on(result: ExperimentResult) -> None:
    """Raise :class:`ThresholdCrossed` (exit 1) when a ``--fail-on`` condition held."""
    reasons = (result.summary.get("fail_on") or {}).get("crossed") or []
    if reasons:
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        raise ThresholdCrossed(f"--fail-on: {reasons[0]}{more}")
