"""Hyperparameters: frozen dataclasses that round-trip to JSON.

Each method declares one dataclass. A run's values are the method's defaults
for the model's architecture, then `--hparams FILE.json`, then `--set k=v`.
The fully resolved result is written into the log record, so a replay never
depends on defaults that a later memedit version might change.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import typing
from pathlib import Path

from memedit_cli.errors import HparamsError


def to_json(hp) -> dict:
    return {f.name: _jsonable(getattr(hp, f.name)) for f in sorted(dataclasses.fields(hp), key=lambda f: f.name)}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def parse_set(items: list[str]) -> dict:
    """`--set lr=0.1 --set layers=[3,4]`: values are JSON when they parse, else strings."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise HparamsError(f"--set {item!r}: expected key=value, e.g. --set lr=0.001")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def parse_layers(text: str) -> list[int]:
    """"3,4", "3-8" or "1,3-5" -> sorted distinct block indices (`memedit stats --layers`, the torchrun entry)."""
    layers: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                if int(hi) < int(lo):
                    raise HparamsError(f"layers {part!r}: the range goes backwards; write {hi}-{lo}")
                layers.update(range(int(lo), int(hi) + 1))
            elif part:
                layers.add(int(part))
        except ValueError:
            raise HparamsError(f"layers {text!r}: {part!r} is not a block index or a range such as 3-8") from None
    if not layers:
        raise HparamsError(f"layers {text!r}: no block given; e.g. 3,4 or 3-8")
    return sorted(layers)


def read_file(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HparamsError(f"{path}: cannot read hyperparameters: {e}") from None
    if not isinstance(data, dict):
        raise HparamsError(f"{path}: expected a JSON object of hyperparameters, found {type(data).__name__}")
    return data


def resolve(defaults, overrides: dict, where: str = "hyperparameters"):
    """Return `defaults` with `overrides` applied, type-checked and validated."""
    cls = type(defaults)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in overrides.items():
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known: {', '.join(sorted(names))}"
            raise HparamsError(f"{where}: unknown hyperparameter {key!r}{hint}")
        values[key] = _coerce(key, value, hints[key], where)
    hp = dataclasses.replace(defaults, **values)
    check = getattr(hp, "check", None)
    problem = check() if check else None
    if problem:
        raise HparamsError(f"{where}: {problem}")
    return hp


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    """A class's field types, evaluated once: materializing 10,000 segments reads hparams 10,000 times."""
    return typing.get_type_hints(cls)


def from_json(cls, data: dict):
    """Rebuild hyperparameters recorded in the log. A field added after a record was written takes the value
    that behaves as the code of that time did (`cls.LEGACY`), else its default."""
    data = {**getattr(cls, "LEGACY", {}), **data}
    hints = _hints(cls)
    kwargs = {f.name: _coerce(f.name, data[f.name], hints[f.name], "log")
              for f in dataclasses.fields(cls) if f.name in data}
    return cls(**kwargs)


def _coerce(key, value, hint, where):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, hint, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise HparamsError(f"{where}: {key} must be a list, got {value!r}")
        return tuple(_coerce(key, v, args[0], where) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise HparamsError(f"{where}: {key} must be a finite number, got {value!r}")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise HparamsError(f"{where}: {key} must be {getattr(hint, '__name__', hint)}, got {value!r}")
