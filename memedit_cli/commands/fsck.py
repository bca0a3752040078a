"""`memedit fsck`: check the whole repository and name everything damaged."""

from __future__ import annotations

import re

from memedit_cli.errors import DamagedRepository, MemeditError
from memedit_cli.store import log as logmod
from memedit_cli.store.jsonutil import loads_strict


def fsck(repo) -> tuple[list[str], list[str]]:
    """Return (problems, notes). Problems make the exit code non-zero; notes are harmless."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        problems += _base_model_problems(repo.config["model"], notes)
    except MemeditError as e:
        problems.append(e.detail)
    try:
        records, log_problems = logmod.scan(repo.read_log_bytes())
    except DamagedRepository as e:  # a missing log is itself the finding
        records, log_problems = [], [e.detail]
    problems += log_problems
    ids = {r["id"] for r in records}
    referenced = set()
    for rec in records:
        for seg in rec.get("segments", []) + rec.get("rebuilt", []):
            # its tensors, and what it read (MEMIT's statistics: a replay reads them from here, not from a cache)
            named = [*seg["objects"].values(), *(seg.get("reads") or {}).values()]
            for h in named:
                if isinstance(h, str) and h in referenced:
                    continue  # checked already (a kept segment is named again by later forget records)
                referenced.add(h)
                problem = repo.objects.problem(h) if isinstance(h, str) else f"invalid object name {h!r}"
                if problem:
                    problems.append(f"record {rec['id'][:12]}: {problem}")
    try:
        head = (repo.root / "HEAD").read_text().strip()
        if head != "base" and head not in ids:
            problems.append(f"HEAD: names {head[:20]!r}, which is not a good record in the log")
    except OSError as e:
        problems.append(f"HEAD: cannot be read ({e})")
    try:
        lines = (repo.root / "reflog.jsonl").read_bytes().split(b"\n")
        for n, line in enumerate(lines[:-1], 1):
            try:
                loads_strict(line.decode())
            except (ValueError, UnicodeDecodeError):
                problems.append(f"reflog.jsonl:{n}: not valid JSON")
        if lines[-1]:
            problems.append(f"reflog.jsonl:{len(lines)}: last line is truncated")
    except OSError as e:
        problems.append(f"reflog.jsonl: cannot be read ({e})")
    orphans = [h for h in repo.objects.all_hashes() if h not in referenced]
    if orphans and log_problems:
        notes.append(f"{len(orphans)} object(s) named by no trusted record: keep them, a repaired log may need them")
    elif orphans:
        notes.append(f"{len(orphans)} object(s) named by no record (left by an interrupted command; harmless)")
    temps = [p.name for p in repo.root.rglob("*") if re.search(r"\.tmp-\d+$", p.name)]
    if temps:
        notes.append(f"{len(temps)} temporary file(s) from an interrupted write (harmless): {', '.join(temps[:3])}")
    return problems, notes


def _base_model_problems(entry: dict, notes: list[str]) -> list[str]:
    """The base weights still hash to what `init` recorded (commands skip this check for speed)."""
    from pathlib import Path

    from memedit_cli.lm.models import default_model_dir, weights_hash

    if entry["kind"] == "hub":
        notes.append(f"base model {entry['id']} comes from the hub; its weights are not checked")
        return []
    folder = default_model_dir() if entry["kind"] == "default" else Path(entry["path"])
    if not folder.is_dir():
        if entry["kind"] == "default":
            notes.append("the default model is not converted on this machine yet; the next command converts it")
            return []
        notes.append(f"the base model folder {folder} is not here; commands that compute a state need it back")
        return []
    if weights_hash(folder) != entry["weights_sha256"]:
        return [f"base model: the weights in {folder} changed since `memedit init` (sha256 differs)"]
    return []
