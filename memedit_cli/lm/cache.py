"""The KV cache argument of a model's forward, across transformers versions.

transformers 5.24 renamed `past_key_values` to `cache` (the old name still works there, deprecated,
to be removed in 5.40); outputs carry both names. memedit passes whichever the model's forward
declares, and reads a cache from an output under either name.
"""

from __future__ import annotations

import functools
import inspect


@functools.lru_cache(maxsize=None)
def _name(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """{the forward's cache argument: cache}."""
    return {_name(type(model)): cache}


def cache_of(output):
    """The cache a forward returned (None when it returned none)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
