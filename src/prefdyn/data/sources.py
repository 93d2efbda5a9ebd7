"""One loader for preference pairs from any source: :func:`load_source`.

DATA is dispatched on what it is, never on what it might be meant to be
(:func:`detect_source`):

* a ``.jsonl`` / ``.jsonl.gz`` / ``.gz`` file: JSON lines, read by prefdyn (errors name ``file:line``);
* a ``.parquet``, ``.json`` or ``.csv`` file: read by ``datasets`` (``load_dataset(<kind>, data_files=...)``);
* a folder written by ``datasets``' ``save_to_disk`` (it holds ``state.json`` or
  ``dataset_dict.json``): ``datasets.load_from_disk``;
* a folder of ``*.jsonl`` persona files (anthropics/evals ``persona/``): one pair per
  statement, the behavior as the column ``behavior``;
* no such path, but an ``org/name`` id: a Hugging Face hub data set (``datasets.load_dataset``).

Every record becomes one :class:`~prefdyn.data.records.PreferencePair` in load order
(record ``i`` is pair ``i``; see :mod:`prefdyn.data._records` for the record shapes);
records that are bad but readable are kept and reported as
:class:`~prefdyn.data.problems.Problem` s. ``datasets`` is imported only for the
sources that need it (``pip install 'prefdyn[data]'``).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefdyn._hashing import hash_texts
from prefdyn.data._jsonl import iter_jsonl
from prefdyn.data._records import ChatRenderer, check_column, record_style, scalar_columns, to_pair
from prefdyn.data.persona import list_behaviors, load_persona_dir
from prefdyn.data.problems import Problem
from prefdyn.data.records import PreferencePair
from prefdyn.data.tasks import DEFAULT_TEMPLATE
from prefdyn.errors import DataError

SOURCE_KINDS = ("jsonl", "parquet", "json", "csv", "disk", "persona", "hub")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATASETS_FILES = {".parquet": "parquet", ".json": "json", ".csv": "csv"}


@dataclass
class PairsData:
    """Pairs in load order with their other scalar columns and the problems the loader found.

    ``format`` is ``"<source kind>:<record style>"``, e.g. ``"jsonl:hh"`` or ``"disk:trl-chat"``;
    ``fingerprint`` hashes the pairs' texts (equal pairs, equal fingerprint, whatever the source).
    """

    pairs: list[PreferencePair]
    columns: dict[str, list[Any]]
    source: str
    format: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return hash_texts(t for p in self.pairs for t in (p.prompt, p.chosen, p.rejected))

    def column(self, name: str) -> list[Any]:
        """The values of column ``name``, one per pair; an unknown name is a one-line error."""
        check_column(list(self.columns), name, self.source)
        return self.columns[name]


def detect_source(data: str | os.PathLike) -> str:
    """The kind of ``data`` (one of :data:`SOURCE_KINDS`) from what is on disk (module docstring)."""
    path = Path(data).expanduser()
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "disk"
        if list_behaviors(path):
            return "persona"
        raise DataError("a folder, but neither saved by datasets (no state.json or dataset_dict.json) "
                        "nor of *.jsonl persona files", source=str(path))
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".gz")):
            return "jsonl"
        kind = _DATASETS_FILES.get(path.suffix.lower())
        if kind:
            return kind
        raise DataError("unknown file type: use .jsonl[.gz], .parquet, .json or .csv", source=str(path))
    if _HUB_ID.match(str(data)):
        return "hub"
    raise DataError("no such file or folder (and not a hub id like 'org/name')", source=str(data))


def _datasets():
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - an optional extra
        raise DataError("this source needs the datasets package: pip install 'prefdyn[data]'") from e
    return datasets


def _pick_split(ds: Any, split: str | None, source: str) -> Any:
    if not hasattr(ds, "keys"):  # a Dataset, not a DatasetDict
        return ds
    names = list(ds.keys())
    if split is None and len(names) == 1:
        split = names[0]
    if split is None:
        split = "train" if "train" in names else None
    if split not in names:
        raise DataError(f"choose a split with --split: {', '.join(names)}", source=source)
    return ds[split]


def _dataset_rows(kind: str, data: str, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    datasets = _datasets()
    try:
        if kind == "disk":
            ds = _pick_split(datasets.load_from_disk(data), split, data)
        elif kind == "hub":
            ds = datasets.load_dataset(data, split=split or "train")
        else:
            ds = datasets.load_dataset(kind, data_files=data, split="train")
    except DataError:
        raise
    except Exception as e:  # datasets raises many kinds; all mean "cannot read this"
        raise DataError(f"cannot read with datasets ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                        source=data) from None
    for i, row in enumerate(ds):
        yield f"{data}[{i}]", dict(row)


def _persona_rows(data: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for behavior, items in load_persona_dir(data).items():
        for item in items:
            yield item.source, {"prompt": DEFAULT_TEMPLATE.format(statement=item.statement),
                                "chosen": item.answer_matching, "rejected": item.answer_not_matching,
                                "behavior": behavior}


def iter_rows(data: str | os.PathLike, kind: str, *, split: str | None = None
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(source, record)`` of every record of ``data`` read as ``kind``, in order."""
    data = str(Path(data).expanduser()) if kind != "hub" else str(data)
    if kind == "jsonl":
        return iter_jsonl(data)
    if kind == "persona":
        return _persona_rows(data)
    return _dataset_rows(kind, data, split)


def load_source(data: str | os.PathLike, *, split: str | None = None, limit: int | None = None,
                tokenizer: Any | None = None) -> PairsData:
    """Every pair of ``data`` (the first ``limit`` records when given), in load order.

    Chat-message records are rendered with ``tokenizer``'s chat template, or plainly
    (HH-RLHF's turns) when ``tokenizer`` is None. The first record fixes the record
    style; a missing field, an unreadable file or an empty data set is a
    :class:`DataError`; bad pairs are kept and listed in ``problems``.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    kind = detect_source(data)
    renderer = ChatRenderer(tokenizer)
    pairs: list[PreferencePair] = []
    problems: list[Problem] = []
    columns: dict[str, list[Any]] = {}
    style = None
    for row, (source, record) in enumerate(itertools.islice(iter_rows(data, kind, split=split), limit)):
        style = style or record_style(record, source)
        pair, found = to_pair(record, style, row, source, renderer)
        pairs.append(pair)
        problems.extend(found)
        extra = scalar_columns(record)
        for name in set(columns) | set(extra):
            columns.setdefault(name, [None] * row).append(extra.get(name))
    if not pairs:
        raise DataError("no preference pairs", source=str(data))
    return PairsData(pairs=pairs, columns=columns, source=str(data), format=f"{kind}:{style}", problems=problems)
