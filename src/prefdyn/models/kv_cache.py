"""Hand a key/value cache to a decoder and read it back, by the names its transformers uses.

transformers 5 renamed ``past_key_values`` to ``cache``, both the forward argument and the
output field; the old names still work but warn that they "will be removed in version
5.40.0". prefdyn supports ``transformers>=4.46``, whose models know only the old names, so
the name is read off the model's own ``forward`` signature instead of being guessed from a
version number: the current API wherever it exists, and never a silently ignored keyword.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=None)
def _cache_argument(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(decoder, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``decoder(**inputs, **cache_kwargs(decoder, cache), use_cache=True)``."""
    return {_cache_argument(type(decoder)): cache}


def output_cache(output) -> Any:
    """The key/value cache a forward pass returned (``use_cache=True``)."""
    names = {f.name for f in dataclasses.fields(output)}
    return output.cache if "cache" in names else output.past_key_values
