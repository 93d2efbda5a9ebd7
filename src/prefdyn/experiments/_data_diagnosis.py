"""``prefdyn diagnose DATA``: what a preference data set predicts before training, for any data.

Stages (each heavy one cached in prefdyn's store, so an interrupted run reuses them):
problems -> concepts (a column, or clusters of the prompts' g(x)) -> per-concept D and
priority (:mod:`prefdyn.diagnostics.multitoken`, prefdyn's extension of Im & Li to
multi-token pairs) and displacement risk per pair (CHES, Razin et al. 2024; the token
geometry for single-token pairs) -> reward spread (optional). The clusters' g(x), the
concepts' Gram and the CHES sums come from one forward pass over the pairs
(:class:`~prefdyn.diagnostics.pair_pass.PairPass`). The outcome is
:class:`DataDiagnosis`, whose :meth:`~DataDiagnosis.to_json` is ``diagnosis.json``
(shape: ``prefdyn.diagnosis/1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from prefdyn.data.problems import Problem, find_problems, raise_if_strict, unusable_records
from prefdyn.data.sources import PairsData
from prefdyn.diagnostics.ches import ches_from_sums
from prefdyn.diagnostics.clusters import Clustering, choose_clusters
from prefdyn.diagnostics.multitoken import ConceptPriority, concept_priority
from prefdyn.diagnostics.pair_pass import PairPass
from prefdyn.diagnostics.summary import LOW_PRIORITY
from prefdyn.diagnostics.token_geometry import predicted_gainers, token_pair_geometry
from prefdyn.errors import DataError
from prefdyn.models.tokens import unembedding

SCHEMA = "prefdyn.diagnosis/1"
MIN_CONCEPT_PAIRS = 20
"""prefdyn's heuristic: a concept with fewer usable pairs has a D too noisy to rank (recommend more data)."""


@dataclass
class DiagnoseSettings:
    """What the data stages need besides the data and the model."""

    concept_column: str | None = None
    clusters: int | None = None
    risk_threshold: float = 0.0
    strict: bool = False
    seed: int = 0
    batch_size: int = 8
    cache_dir: str | None = None
    progress: bool = False


@dataclass
class DataDiagnosis:
    """Everything the report and diagnosis.json show; per-pair lists are in load order."""

    data: PairsData
    model: str
    problems: list[Problem]
    usable: list[int]
    concept_source: str
    concept_names: list[str]
    assignment: list[int]
    concept_n: list[int]
    priority: ConceptPriority
    starved: list[bool]
    ches: list[float | None]
    ches_norm: list[float | None]
    geometry_risk: dict[int, dict[str, Any]]
    risk_threshold: float
    risky: list[int]
    clustering: Clustering | None = None
    reward: dict[str, Any] | None = None
    recommendations: list[dict[str, Any]] = field(default_factory=list)

    def examples(self) -> list[str | None]:
        """Per concept, the end of its representative prompt (the medoid's; clusters only)."""
        if self.clustering is None:
            return [None] * len(self.concept_names)
        return [_short(self.data.pairs[self.usable[m]].prompt) for m in self.clustering.medoids]

    @property
    def n_scored(self) -> int:
        return sum(v is not None for v in self.ches) + len(self.geometry_risk)

    def metrics(self) -> dict[str, float | None]:
        """The ``--fail-on`` vocabulary (:mod:`prefdyn.experiments._fail_on`)."""
        n = len(self.data.pairs)
        return {
            "ches_share": len(self.risky) / self.n_scored if self.n_scored else 0.0,
            "risky_pairs": float(len(self.risky)),
            "starved_concepts": float(sum(self.starved)),
            "problems": float(len(self.problems)),
            "problem_share": len({p.record for p in self.problems}) / n,
            "duplicates": float(sum(p.kind == "duplicate" for p in self.problems)),
            "zero_std_share": None if self.reward is None else self.reward["zero_std_share"],
        }

    def to_json(self) -> dict[str, Any]:
        pr = self.priority.priority
        items = [{"name": name, "n": self.concept_n[c], "distinguishability": _num(pr.D[c]),
                  "priority": _num(pr.P[c]), "projection": _num(pr.projection[c]),
                  "predicted_rank": self.priority.rank[c], "starved": self.starved[c], "example": example}
                 for c, (name, example) in enumerate(zip(self.concept_names, self.examples()))]
        concepts: dict[str, Any] = {"source": self.concept_source, "k": len(self.concept_names),
                                    "assignment": self.assignment, "items": items,
                                    "priority_gap": [[_num(v) for v in row] for row in self.priority.gaps.gap]}
        if self.clustering is not None:
            concepts["silhouette"] = {str(k): v for k, v in self.clustering.scores.items()}
        return {
            "schema": SCHEMA,
            "data": {"source": self.data.source, "format": self.data.format,
                     "n_pairs": len(self.data.pairs), "fingerprint": self.data.fingerprint},
            "model": self.model,
            "concepts": concepts,
            "pairs": {"ches": self.ches, "ches_norm": self.ches_norm, "risk_threshold": self.risk_threshold,
                      "risky": self.risky, "token_geometry": {str(i): g for i, g in self.geometry_risk.items()},
                      "usable": self.usable},
            "problems": [p.to_dict() for p in self.problems],
            "recommendations": self.recommendations,
            "metrics": self.metrics(),
            **({"reward_spread": self.reward} if self.reward is not None else {}),
        }


def _num(x) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


def data_problems(loaded, data: PairsData, strict: bool) -> list[Problem]:
    """The loader's problems and :func:`find_problems`' (with the model's context), by record."""
    tok = loaded.tokenizer
    max_length = getattr(loaded.model.config, "max_position_embeddings", None)

    def token_length(prompt: str, response: str) -> int:
        return len(tok(prompt + response, add_special_tokens=False)["input_ids"])

    problems = sorted(data.problems + find_problems(data.pairs, token_length=token_length, max_length=max_length),
                      key=lambda p: p.record)
    raise_if_strict(problems, strict, data.source)
    return problems


def assign_concepts(model_pass: PairPass, data: PairsData, usable: list[int], s: DiagnoseSettings
                    ) -> tuple[str, list[str], list[int], Clustering | None]:
    """(source, names, assignment, clustering): from ``s.concept_column``, else clusters of the
    usable pairs' prompts' g(x) (from ``model_pass`` over the usable pairs; pairs not run
    through the model get concept -1; each cluster's representative prompt is
    :meth:`DataDiagnosis.examples`)."""
    if s.concept_column is not None:
        values = [str(v) for v in data.column(s.concept_column)]
        names = sorted(set(values))
        index = {name: c for c, name in enumerate(names)}
        return f"column:{s.concept_column}", names, [index[v] for v in values], None
    clustering = choose_clusters(model_pass.prompt_states(), seed=s.seed, k=s.clusters)
    assignment = [-1] * len(data.pairs)
    for i, label in zip(usable, clustering.labels.tolist()):
        assignment[i] = label
    names = [f"cluster {c + 1}" for c in range(clustering.k)]
    return "clusters", names, assignment, clustering


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split()[-12:])  # the end of a prompt says most about it
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _single_token(tok, pair) -> tuple[int, int] | None:
    """(y+, y-) when both responses are one token after the prompt, else None."""
    ids = []
    for response in (pair.chosen, pair.rejected):
        full = tok(pair.prompt + response, add_special_tokens=False)["input_ids"]
        prompt = tok(pair.prompt, add_special_tokens=False)["input_ids"]
        if full[:len(prompt)] != prompt or len(full) != len(prompt) + 1:
            return None
        ids.append(full[-1])
    return ids[0], ids[1]


def token_geometry_risk(loaded, data: PairsData, usable: list[int]
                        ) -> tuple[list[int], dict[int, dict[str, Any]]]:
    """(the multi-token pairs, the token-geometry prediction of each single-token pair): the
    logit of y+ itself falls to first order when <W_y+, W_y-> > ||W_y+||^2, with the tokens
    predicted to gain most."""
    geometry: dict[int, dict[str, Any]] = {}
    multi = []
    by_tokens: dict[tuple[int, int], dict[str, Any]] = {}  # one geometry per (y+, y-)
    W_U = unembedding(loaded.model)
    for i in usable:
        tokens = _single_token(loaded.tokenizer, data.pairs[i])
        if tokens is None:
            multi.append(i)
            continue
        if tokens not in by_tokens:
            geo = token_pair_geometry(W_U, *tokens)
            gainers = predicted_gainers(W_U, *tokens, loaded.tokenizer, k=5)
            by_tokens[tokens] = {"y_plus": geo.y_plus, "y_minus": geo.y_minus, "inner": geo.inner,
                                 "norm_plus_sq": geo.norm_plus_sq, "risky": geo.inner > geo.norm_plus_sq,
                                 "top_gainers": [text for _, text, _ in gainers]}
        geometry[i] = by_tokens[tokens]
    return multi, geometry


def displacement_risk(data: PairsData, multi: list[int], geometry: dict[int, dict[str, Any]],
                      scores: dict[str, torch.Tensor] | None, threshold: float):
    """Per pair: CHES and length-normalised CHES (multi-token pairs, from ``scores``), and the
    risky pairs (CHES above ``threshold``, or a risky token geometry)."""
    n = len(data.pairs)
    ches, ches_norm = [None] * n, [None] * n
    for j, i in enumerate(multi):
        ches[i], ches_norm[i] = float(scores["ches"][j]), float(scores["ches_normalized"][j])
    return ches, ches_norm, sorted([i for i in multi if ches[i] > threshold]
                                   + [i for i, g in geometry.items() if g["risky"]])


def concept_dynamics(gram: torch.Tensor, usable: list[int], assignment: list[int], k: int
                     ) -> tuple[ConceptPriority, list[bool]]:
    """D, priority and predicted order of the concepts, and which starve: a projection on the
    mean direction <= 0 (pushed the wrong way first) or P below prefdyn's LOW_PRIORITY."""
    concepts = torch.tensor([assignment[i] for i in usable if assignment[i] >= 0], dtype=torch.long)
    counts = torch.bincount(concepts, minlength=k)
    result = concept_priority(gram, counts)
    proj, P = result.priority.projection.tolist(), result.priority.P.tolist()
    starved = [k > 1 and (not proj[c] > 0 or not P[c] >= LOW_PRIORITY) for c in range(k)]
    return result, starved


def diagnose_data(loaded, data: PairsData, s: DiagnoseSettings) -> DataDiagnosis:
    """Run every stage but the reward spread (:mod:`prefdyn.experiments._diagnosis_reward`)."""
    problems = data_problems(loaded, data, s.strict)
    bad = unusable_records(problems)
    usable = [i for i in range(len(data.pairs)) if i not in bad]
    if not usable:
        raise DataError(f"none of the {len(data.pairs)} pairs can be run through the model "
                        f"({len(problems)} problems, first: record {problems[0].record}: {problems[0].kind})",
                        source=data.source)
    # One forward pass over the usable pairs gives the prompts' g(x), the concepts' Gram and
    # the CHES sums (each from its store when cached).
    model_pass = PairPass(loaded, [data.pairs[i] for i in usable], cache_dir=s.cache_dir,
                          batch_size=s.batch_size, progress=s.progress)
    source, names, assignment, clustering = assign_concepts(model_pass, data, usable, s)
    multi, geometry = token_geometry_risk(loaded, data, usable)
    at = {i: r for r, i in enumerate(usable)}
    gram = model_pass.gram(torch.tensor([assignment[i] for i in usable], dtype=torch.long), len(names))
    scores = ches_from_sums(*model_pass.ches_sums([at[i] for i in multi])) if multi else None
    priority, starved = concept_dynamics(gram, usable, assignment, len(names))
    ches, ches_norm, risky = displacement_risk(data, multi, geometry, scores, s.risk_threshold)
    counts = [assignment.count(c) for c in range(len(names))]
    return DataDiagnosis(data=data, model=loaded.name, problems=problems, usable=usable,
                         concept_source=source, concept_names=names, assignment=assignment,
                         concept_n=counts, priority=priority, starved=starved, ches=ches,
                         ches_norm=ches_norm, geometry_risk=geometry, risk_threshold=s.risk_threshold,
                         risky=risky, clustering=clustering)
