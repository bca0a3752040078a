"""The materialized-state cache: `.memedit/cache/states/`, derived data, safe to delete.

Rebuilding the state at a revision attaches every segment of its history (one
object read per segment). The cache keeps what a state adds to the base model,
each method's `snapshot` of it (ft and MEMIT: the final weights they changed;
WISE: its side memories and routing keys; Larimar: its memory and episodes),
in one safetensors file, so that `ask`, `eval` and `export` on a state seen
before read one file instead of N.

    states/<key>.safetensors   tensors "<method>/<name>", metadata: each method's description
    states/<key>.json          {"sha256": of the .safetensors file, "revision": ...}

The key covers the revision id (which covers the whole log before it), the
base weights, the dtype and device type, and memedit's version. An entry is
used only when its file's sha256 matches; a damaged one is dropped and the
state rebuilt from the log. At most `MEMEDIT_STATE_CACHE` entries are kept
(default 2), the least recently used dropped first; 0 turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

from memedit_cli import __version__, methods
from memedit_cli.errors import UserError
from memedit_cli.store.fileio import write_atomic
from memedit_cli.store.jsonutil import canonical, sha256_hex

FORMAT = "memedit-state-v1"
DEFAULT_LIMIT = 2


def limit() -> int:
    raw = os.environ.get("MEMEDIT_STATE_CACHE", str(DEFAULT_LIMIT))
    try:
        n = int(raw)
    except ValueError:
        raise UserError(f"MEMEDIT_STATE_CACHE={raw!r} is not a number of states; unset it, or set 0 to turn "
                        "the state cache off") from None
    return max(n, 0)


def key(repo, model, rid: str) -> str:
    from memedit_cli.lm.models import input_device
    from memedit_cli.replay import model_key

    return sha256_hex(canonical({"format": FORMAT, "memedit": __version__, "model": model_key(repo),
                                 "dtype": str(next(model.parameters()).dtype), "device": input_device(model).type,
                                 "revision": rid}))


def state_at(repo, rid: str | None):
    """(model, tokenizer) of the state at `rid`: one read from the cache when it holds that state."""
    from memedit_cli.lm import models

    model, tok = models.load(repo.config)
    attach(repo, model, tok, rid, repo.segments_at(rid))
    return model, tok


def attach(repo, model, tok, rid: str | None, segments: list[dict]) -> str:
    """Make `model` (the base) the state at `rid` (whose segments are `segments`): from the cache when it
    holds that state, else by attaching the segments (then cached). Returns "cache", "log" or "base"."""
    from memedit_cli.replay import attach_all

    if not segments:
        return "base"
    n = limit()
    if n and rid is not None:
        k = key(repo, model, rid)
        if _restore(repo, model, tok, k, segments):
            return "cache"
    attach_all(repo, model, segments, tok)
    if n and rid is not None:
        _save(repo, model, k, rid, segments, n)
    return "log"


def _dir(repo):
    return repo.root / "cache" / "states"


def _restore(repo, model, tok, k: str, segments: list[dict]) -> bool:
    from safetensors.torch import load

    data_path, info_path = _dir(repo) / f"{k}.safetensors", _dir(repo) / f"{k}.json"
    try:
        info = json.loads(info_path.read_text())
        data = data_path.read_bytes()
    except (OSError, ValueError):
        return False
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        print(f"memedit: note: the cached state {k[:12]} is damaged; rebuilding it from the log", file=sys.stderr)
        for p in (data_path, info_path):
            p.unlink(missing_ok=True)
        return False
    tensors = load(data)
    described = info["methods"]
    for method in methods.of(segments):
        prefix = f"{method.name}/"
        mine = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
        method.restore(model, described[method.name], mine, tok)
    os.utime(info_path)  # most recently used
    return True


def _save(repo, model, k: str, rid: str, segments: list[dict], keep: int) -> None:
    """Write the entry (best effort: a cache that cannot be written is not an error), then trim to `keep`."""
    from safetensors.torch import save

    tensors, described = {}, {}
    for method in methods.of(segments):
        snap = method.snapshot(model, [s for s in segments if s["method"] == method.name])
        if snap is None:  # this method's state cannot be cached: no entry
            return
        described[method.name], mine = snap
        tensors.update({f"{method.name}/{name}": t.detach().to("cpu").contiguous() for name, t in mine.items()})
    data = save(tensors, metadata={"format": FORMAT})
    d = _dir(repo)
    try:
        d.mkdir(parents=True, exist_ok=True)
        # not fsynced: derived data, checked against its sha256 when read
        write_atomic(d / f"{k}.safetensors", data, durable=False)
        write_atomic(d / f"{k}.json", json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "revision": rid,
                                                 "methods": described}).encode(), durable=False)
    except OSError as e:
        print(f"memedit: warning: cannot write the state cache in {d}: {e.strerror}", file=sys.stderr)
        return
    entries = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
