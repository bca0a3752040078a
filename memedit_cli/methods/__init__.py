"""The method registry. A method plugs in by adding a line here and a module
that defines a `Method` subclass (see base.py). Names resolve lazily so that
listing them does not import torch."""

from __future__ import annotations

import difflib
import importlib

from memedit_cli.errors import UserError

# name -> "module:Class"
REGISTRY = {
    "ft": "memedit_cli.methods.ft:FT",
    "memit": "memedit_cli.methods.memit:MEMIT",
    "wise": "memedit_cli.methods.wise:WISE",
    "larimar": "memedit_cli.methods.larimar:Larimar",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str):
    if name not in REGISTRY:
        near = difflib.get_close_matches(name, names(), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(f"unknown method {name!r}{hint}; available: {', '.join(names())}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def of(segments: list[dict]) -> list:
    """The methods of `segments`, each once, in the order they first appear."""
    return [get(name) for name in dict.fromkeys(seg["method"] for seg in segments)]


def reset(model, segments: list[dict]) -> None:
    """A new sequence starts: every method attached to `model` drops its per-sequence state."""
    for method in of(segments):
        method.reset(model)
