"""Drop the preference pairs most likely to cause likelihood displacement, and write the rest.

Razin et al. (2024, Section 6) filter a data set by removing the pairs with the
highest CHES scores; :func:`filter_pairs` does that for any score where *higher
means more suspect* (CHES, length-normalised CHES, edit similarity, hidden
inner product). :func:`write_pairs` writes pairs back in the format they were
read in (:func:`prefdyn.data.load_pairs` reads them again).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from prefdyn._store import atomic_file
from prefdyn.data.records import PreferencePair
from prefdyn.errors import DataError


def drop_indices(scores: Sequence[float] | torch.Tensor, *, top_percent: float | None = None,
                 threshold: float | None = None) -> list[int]:
    """Indices (ascending) of the pairs to drop: the top ``top_percent`` % by score, or those with
    ``score > threshold``. Give exactly one of the two.

    ``top_percent`` drops ``floor(n * top_percent / 100)`` pairs, highest scores
    first; equal scores are broken by position (earlier dropped first), so the
    result is deterministic. NaN scores are an error.
    """
    if (top_percent is None) == (threshold is None):
        raise DataError("give exactly one of top_percent and threshold")
    values = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if torch.isnan(values).any():
        raise DataError(f"{int(torch.isnan(values).sum())} score(s) are NaN")
    if threshold is not None:
        return torch.nonzero(values > threshold).reshape(-1).tolist()
    if not 0.0 <= top_percent <= 100.0:
        raise DataError(f"top_percent must be in [0, 100], got {top_percent}")
    # round() first so that 20 * 15 / 100 = 3.0000000000000004 still drops 3.
    n_drop = math.floor(round(len(values) * top_percent / 100.0, 9))
    order = torch.sort(-values, stable=True).indices[:n_drop]
    return sorted(order.tolist())


def filter_pairs(pairs: Sequence[PreferencePair], scores: Sequence[float] | torch.Tensor, *,
                 top_percent: float | None = None, threshold: float | None = None,
                 ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(kept, dropped)``, both in input order; see :func:`drop_indices` for the rule."""
    if len(scores) != len(pairs):
        raise DataError(f"{len(scores)} scores for {len(pairs)} pairs")
    dropped_idx = set(drop_indices(scores, top_percent=top_percent, threshold=threshold))
    kept = [p for i, p in enumerate(pairs) if i not in dropped_idx]
    dropped = [p for i, p in enumerate(pairs) if i in dropped_idx]
    return kept, dropped


def pair_record(pair: PreferencePair, format: Literal["trl", "hh"]) -> dict[str, str]:
    """The JSON record of ``pair``: TRL ``prompt/chosen/rejected``, or HH whole dialogues."""
    if format == "trl":
        return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    if format == "hh":
        return {"chosen": pair.prompt + pair.chosen, "rejected": pair.prompt + pair.rejected}
    raise DataError(f"unknown pair format {format!r}: use trl or hh")


def write_pairs(path: str | os.PathLike, pairs: Sequence[PreferencePair],
                format: Literal["trl", "hh"]) -> Path:
    """Write ``pairs`` as JSON lines (gzip when the name ends with ``.gz``), atomically.

    HH records hold ``prompt + response`` per side, so reading them back splits
    at the same last ``"\\n\\nAssistant:"`` and yields the same pairs.
    """
    path = Path(path)
    records = [pair_record(p, format) for p in pairs]
    with atomic_file(path) as f:
        # mtime=0 and no file name in the header: the same pairs give byte-identical .gz files.
        with (gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) if path.name.endswith(".gz")
              else contextlib.nullcontext(f)) as raw:
            for record in records:
                raw.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    return path
