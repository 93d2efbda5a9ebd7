"""Shared pieces of the likelihood-displacement experiments (Razin et al., 2024).

Razin, Malladi, Bhaskar, Chen, Arora & Hanin, "Unintentional Unalignment:
Likelihood Displacement in Direct Preference Optimization" (2024). Used by
:mod:`displacement_tokens`, :mod:`displacement_predictors` and
:mod:`displacement_mitigation`: synonym groups, persona pairs with multi-token
responses, per-pair log-prob changes of a trained policy, a fresh model copy per
run, the DPO+SFT loss, and the report footer of their specs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from prefdyn.data.pairs import load_pairs
from prefdyn.data.persona import list_behaviors, load_persona_dir
from prefdyn.data.records import PreferencePair
from prefdyn.data.tasks import BehaviorData, TaskConfig, build_behaviors
from prefdyn.errors import DataError
from prefdyn.policies.lm import LMPolicy
from prefdyn.experiments._resume import ResumableRun, run_identity
from prefdyn.tracking import metrics as M
from prefdyn.tracking.evaluate import PairScores, pair_metrics, score_pairs
from prefdyn.experiments.spec import ExperimentSpec, Option, check_mode, register
from prefdyn.training.config import TrainConfig
from prefdyn.training.lm_data import pair_batches, tokenize_pair
from prefdyn.training.lm_data import fixed_pair_batches
from prefdyn.training.lm_runner import fit_lm

HH_DEFAULT = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
PERSONA_DEFAULT = "../shared/data/persona"
RAZIN_CITATION = ("Razin, Malladi, Bhaskar, Chen, Arora & Hanin, 'Unintentional Unalignment: Likelihood "
                  "Displacement in Direct Preference Optimization', 2024.")
SFT_LOSS = "dpo_sft"
SFT_WEIGHT = 1.0
"""The SFT weight of :func:`prefdyn.losses.variants.dpo_sft_loss` (its default)."""


# ---------------------------------------------------------------- synonyms ---

def _norm_word(text: str) -> str:
    """A token or word as compared with the synonym list: no spaces/punctuation, lower case."""
    return re.sub(r"[\W_]+", "", text, flags=re.UNICODE).lower()


@dataclass
class Synonyms:
    """Meaning groups of words; ``opposites`` are pairs of groups of opposite meaning."""

    groups: list[set[str]]
    opposites: list[tuple[str, str]]

    def group(self, word: str) -> set[str]:
        w = _norm_word(word)
        for g in self.groups:
            if w in g:
                return g
        return {w} if w else set()

    def same(self, a: str, b: str) -> bool:
        return bool(_norm_word(a)) and _norm_word(a) in self.group(b)

    def opposite(self, a: str, b: str) -> bool:
        ga, gb = self.group(a), self.group(b)
        return any((x in ga and y in gb) or (y in ga and x in gb) for x, y in self.opposites)

    def mark(self, token: str, y_plus: str, y_minus: str) -> str:
        """``benign`` (same meaning as y+), ``catastrophic`` (opposite to y+: listed as
        its opposite, or same meaning as y- when y- is not a synonym of y+) or ``other``."""
        if not _norm_word(token):
            return "other"
        if self.same(token, y_plus):
            return "benign"
        if self.opposite(token, y_plus) or (self.same(token, y_minus) and not self.same(y_minus, y_plus)):
            return "catastrophic"
        return "other"


def default_synonyms_path() -> Path:
    return Path(str(resources.files("prefdyn.experiments").joinpath("displacement_synonyms.yaml")))


def parse_synonyms(data: Any, source: str) -> Synonyms:
    """``{word: [synonyms]}`` or ``{"synonyms": {...}, "opposites": [[a, b], ...]}``."""
    if not isinstance(data, Mapping):
        raise DataError("expected a mapping of word -> list of synonyms", source=source)
    table = data.get("synonyms", data) if "synonyms" in data else data
    opposites_raw = data.get("opposites", []) if "synonyms" in data else []
    if not isinstance(table, Mapping):
        raise DataError("'synonyms' must map a word to a list of synonyms", source=source, field="synonyms")
    groups: list[set[str]] = []
    for word, syns in table.items():
        if isinstance(word, bool) or (isinstance(syns, list) and any(isinstance(s, bool) for s in syns)):
            raise DataError(f"{word!r}: YAML read a bare yes/no/true/false as a boolean; quote the words",
                            source=source, field=str(word))
        if not isinstance(syns, list) or not all(isinstance(s, str) for s in syns):
            raise DataError(f"synonyms of {word!r} must be a list of strings", source=source, field=str(word))
        new = {_norm_word(w) for w in [str(word), *syns]} - {""}
        merged = [g for g in groups if g & new]
        groups = [g for g in groups if not g & new]
        groups.append(new.union(*merged))
    opposites = []
    for i, pair in enumerate(opposites_raw or []):
        if not isinstance(pair, list) or len(pair) != 2:
            raise DataError(f"opposites[{i}] must be a list of two words", source=source, field="opposites")
        opposites.append((_norm_word(pair[0]), _norm_word(pair[1])))
    return Synonyms(groups, opposites)


def load_synonyms(path: str | Path | None = None) -> Synonyms:
    """The synonym file at ``path`` (YAML or JSON), or prefdyn's small default list."""
    path = Path(path) if path is not None else default_synonyms_path()
    if not path.is_file():
        raise DataError("synonym file not found", source=str(path))
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise DataError(f"cannot parse: {e}", source=str(path)) from None
    return parse_synonyms(data, str(path))


# ------------------------------------------------------------------- data ---

def persona_pairs(behaviors: Sequence[BehaviorData], eos: str, rows: str = "all") -> list[PreferencePair]:
    """Persona prompts with two-token responses: ``answer + eos`` (e.g. ``"Yes<|im_end|>"``).

    Why not the single answer token: CHES sums the hidden states that *predict* the
    response tokens, and for one-token responses that is the same state h(x) for y+
    and y-, so CHES = <h, h> - ||h||^2 = 0 for every pair. Closing the turn adds a
    second, answer-dependent state h(x, y) and makes the score informative.
    ``rows``: ``all``, ``train`` or ``test`` (each behavior's own split).
    """
    out: list[PreferencePair] = []
    for b in behaviors:
        idx = {"all": None, "train": b.train_idx, "test": b.test_idx}[rows]
        for p in b.to_pairs(idx):
            out.append(PreferencePair(p.prompt, p.chosen + eos, p.rejected + eos, p.source, p.group or b.name))
    return out


def subsample_pairs(pairs: Sequence[PreferencePair], tokenizer, n: int, max_tokens: int | None,
                    seed: int) -> list[PreferencePair]:
    """Up to ``n`` pairs, drawn in a seeded random order among those whose prompt+chosen and
    prompt+rejected are at most ``max_tokens`` tokens. A drawn pair that is malformed (empty
    response, prompt not a token prefix) raises the :class:`DataError` naming it."""
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    picked = []
    for i in order:
        if len(picked) >= n:
            break
        chosen_ids, _, rejected_ids, _ = tokenize_pair(pairs[i], tokenizer, i, None)
        if max_tokens is None or max(len(chosen_ids), len(rejected_ids)) <= max_tokens:
            picked.append(pairs[i])
    return picked


# ---------------------------------------------------------------- training ---

def pair_scores(policy: LMPolicy, pairs: Sequence[PreferencePair], tokenizer, *, batch_size: int = 8,
                max_length: int | None = None) -> PairScores:
    """Chosen/rejected summed log-probs of ``pairs`` under the policy and its reference
    (:func:`prefdyn.tracking.evaluate.score_pairs`); bad records raise the
    :class:`DataError` of :func:`tokenize_pair`."""
    return score_pairs(policy, fixed_pair_batches(pairs, tokenizer, batch_size, max_length))


def displacement_stats(scores: PairScores) -> dict[str, float]:
    """Means over the pairs of ``chosen_logp_change``, ``chosen_fell`` (share displaced),
    ``reward_acc`` (chosen log-ratio > rejected log-ratio) and ``rejected_logp_change``
    (names: :mod:`prefdyn.tracking.metrics`)."""
    values = pair_metrics(scores.to(torch.float64))
    return {k: float(values[k].mean())
            for k in (M.CHOSEN_LOGP_CHANGE, M.CHOSEN_FELL, M.REWARD_ACC, M.REJECTED_LOGP_CHANGE)}


DEFAULT_BATCH = 8


def train_and_measure(loaded, train_pairs: Sequence[PreferencePair],
                      eval_sets: Mapping[str, Sequence[PreferencePair]], train: TrainConfig, *,
                      mode: str = "lora", sink=None, name: str = "lm") -> dict[str, PairScores]:
    """DPO (``train.loss``) on ``train_pairs`` from a fresh copy of ``loaded`` through
    :func:`fit_lm` (checkpointed into ``<sink's folder>/checkpoints/<name>`` and resumed
    from there); then :func:`pair_scores` of every evaluation set under the trained policy."""
    if not train_pairs:
        raise DataError(f"{name}: no training pairs left")
    work = loaded.copy()
    max_length = getattr(work.model.config, "max_position_embeddings", None)
    batches = pair_batches(train_pairs, work.tokenizer, train.batch_size or DEFAULT_BATCH, train.seed,
                           max_length)
    resumable = ResumableRun(sink, name, run_identity(work, batches, train, mode))
    run = fit_lm(work, batches, train, mode=mode, sink=sink, name=name,
                 callbacks=resumable.callbacks(), **resumable.fit_kwargs(train.steps, train.eval_every))
    out = {key: pair_scores(run.policy, pairs, work.tokenizer, max_length=max_length)
           for key, pairs in eval_sets.items()}
    del work, run
    return out


def load_source(source: str, tokenizer, *, hh_path: str, persona_path: str | None,
                behaviors: Sequence[str] | None, n: int, max_tokens: int | None, seed: int,
                chat_template: bool = True) -> tuple[list[PreferencePair], str]:
    """Up to ``n`` seeded pairs of ``source`` (``hh`` or ``persona``) and a sentence saying
    exactly what was chosen (for the report)."""
    if source == "hh":
        pairs = load_pairs(hh_path, on_error="skip")
        picked = subsample_pairs(pairs, tokenizer, n, max_tokens, seed)
        return picked, (f"HH-RLHF {hh_path}: {len(picked)} of {len(pairs)} pairs, drawn in a seeded "
                        f"(seed {seed}) random order among those with prompt+response <= {max_tokens} tokens")
    if source != "persona":
        raise DataError(f"unknown source {source!r}: use hh or persona")
    path = persona_path or PERSONA_DEFAULT
    names = list(behaviors) if behaviors else list_behaviors(path)
    if not behaviors:
        pick = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))[:4].tolist()
        names = sorted(names[i] for i in pick)
    per = max(2, -(-n // len(names)))
    per += per % 2  # balanced Yes/No subsample needs an even count
    data = build_behaviors(load_persona_dir(path, names), tokenizer,
                           TaskConfig(n_per_behavior=per, seed=seed, chat_template=chat_template))
    eos = tokenizer.eos_token or ""
    pairs = subsample_pairs(persona_pairs(data, eos), tokenizer, n, max_tokens, seed)
    return pairs, (f"persona {path}: behaviors {', '.join(names)}, {per} statements each (seeded, "
                   f"balanced), {len(pairs)} pairs; responses are the answer word followed by "
                   f"{eos!r} (single-token responses would give CHES = 0 identically)")


# ------------------------------------------------------------------- specs ---

DISPLACEMENT_OPTIONS = {
    "pairs_file": Option("HH-RLHF pairs (JSONL .gz); bad records are skipped."),
    "max_tokens": Option("Longest prompt+response kept, in tokens."),
    "mode": Option("lora or full."),
}


@dataclass
class PairSourceParams:
    """What the predictors and mitigation params share: where the pairs come from, the token
    cap and the training mode."""

    source: str = "hh"
    pairs_file: str = HH_DEFAULT
    max_tokens: int | None = 64
    mode: str = "lora"

    def __post_init__(self) -> None:
        check_mode(self.mode)

    def source_kwargs(self, cfg) -> dict[str, Any]:
        """The pair-source fields of :class:`SourceConfig` / :class:`MitigationConfig`."""
        return {"hh_path": self.pairs_file, "persona_path": cfg.data.path or PERSONA_DEFAULT,
                "behaviors": cfg.data.behaviors, "max_tokens": self.max_tokens,
                "chat_template": cfg.task.chat_template}


def displacement_spec(name: str, title: str, help: str, fn: Callable[..., Any], params: type,
                      options: dict[str, Option]) -> ExperimentSpec:
    """Register a displacement experiment ``fn(ctx, loaded)`` (``quick`` preset by default)."""
    return register(ExperimentSpec(name=name, title=title, help=help, run=on_model(fn), params=params,
                                   default_preset="quick", options=options))


def on_model(fn: Callable[..., Any], **kwargs: Any) -> Callable[[Any], Any]:
    """The report's subtitle and footer every displacement run shares, around
    ``fn(ctx, loaded)`` (the model loaded once by the harness)."""

    def run(ctx):
        loaded = ctx.model()
        ctx.subtitle = f"{loaded.name} ({loaded.fingerprint[:12]})"
        ctx.footer["paper"] = RAZIN_CITATION
        return fn(ctx, loaded, **kwargs)

    run.__doc__ = fn.__doc__
    return run
