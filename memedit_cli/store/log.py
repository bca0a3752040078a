"""The edit log: `.memedit/log.jsonl`, one JSON record per state-changing operation.

A record's `id` is the sha256 of its canonical JSON without the `id` field; it
covers `parent`, so the log is a hash chain like git's commits. Records are
only ever appended. A record lists *segments*: each segment is one batch of
facts edited by one method, with the tensor objects it produced:

    {"method": "ft", "hparams": {...}, "seed": 0, "facts": ["id1", ...],
     "objects": {"tensors": "<sha256>"}, "info": {...}, "compute_s": 1.2}

The state at a revision is the base model with the segments of its history
attached in order (see `Repo.segments_at`).
"""

from __future__ import annotations

import datetime as _dt

from memedit_cli.store.jsonutil import canonical, loads_strict, sha256_hex

OPS = ("apply", "forget")


def make_record(fields: dict) -> dict:
    """Add `id` (content hash) to a record's fields; returns a new dict."""
    body = {k: v for k, v in fields.items() if k != "id"}
    return {"id": sha256_hex(canonical(body)), **body}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    """Versions of what computed a record. Read from package metadata so torch is not imported."""
    from importlib.metadata import PackageNotFoundError, version

    from memedit_cli import __version__

    out = {"memedit": __version__}
    for pkg in ("torch", "transformers", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def record_problem(rec, known_ids: set) -> str | None:
    """What is structurally wrong with one parsed record, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("op") not in OPS:
        return f"unknown op {rec.get('op')!r}"
    segs_key = "segments" if rec["op"] == "apply" else "rebuilt"
    for key in ("id", "parent", "facts", segs_key) + (("keep", "forgot") if rec["op"] == "forget" else ()):
        if key not in rec:
            return f"missing field {key!r}"
    if make_record(rec)["id"] != rec["id"]:
        return "its id does not match its content (the record was changed)"
    if rec["parent"] is not None and rec["parent"] not in known_ids:
        return f"its parent {str(rec['parent'])[:12]} is not an earlier record"
    segs = rec[segs_key]
    if not isinstance(segs, list) or not all(
        isinstance(s, dict) and isinstance(s.get("objects"), dict) and isinstance(s.get("facts"), list)
        and isinstance(s.get("method"), str) and isinstance(s.get("hparams"), dict) for s in segs
    ):
        return "malformed segments"
    if not isinstance(rec["facts"], list) or not all(
        isinstance(f, dict) and isinstance(f.get("id"), str) for f in rec["facts"]
    ):
        return "malformed facts"
    if rec["op"] == "forget" and (not isinstance(rec["keep"], int) or isinstance(rec["keep"], bool) or rec["keep"] < 0
                                  or not isinstance(rec["forgot"], list)):
        return "malformed keep or forgot"
    return None


def scan(data: bytes) -> tuple[list[dict], list[str]]:
    """Parse log bytes; return the good records (up to the first bad one) and problems found.

    A record after a damaged one is not trusted: its parent chain passes
    through data we cannot verify.
    """
    records: list[dict] = []
    problems: list[str] = []
    known: set = set()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        problems.append(f"log.jsonl:{len(lines)}: last line is truncated (no newline at the end: an interrupted write)")
        lines.pop()
    for n, raw in enumerate(lines, 1):
        try:
            rec = loads_strict(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            problems.append(f"log.jsonl:{n}: not valid JSON ({e})")
            break
        problem = record_problem(rec, known)
        if problem is None and canonical(rec) != raw:
            # records are written in canonical form; a changed digit beyond a float's precision
            # parses to the same value (and the same id), but not to the same bytes
            problem = "its bytes are not the canonical form it was written in (the record was changed)"
        if problem:
            problems.append(f"log.jsonl:{n}: "
                            f"record {str(rec.get('id', '?'))[:12] if isinstance(rec, dict) else '?'}: {problem}")
            break
        known.add(rec["id"])
        records.append(rec)
    return records, problems

