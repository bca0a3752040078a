"""`memedit status`, `memedit log` and `memedit show`: what the repository holds (no torch)."""

from __future__ import annotations

from memedit_cli.errors import UserError


def status(repo) -> dict:
    """The repository, its base model and what the current state carries."""
    cfg = repo.config
    head = repo.head()
    by_method: dict = {}
    for seg in repo.segments_at(head):
        by_method[seg["method"]] = by_method.get(seg["method"], 0) + len(seg["facts"])
    tip = repo.records[-1]["id"] if repo.records else None
    return {"repository": str(repo.root), "model": cfg["model"], "dtype": cfg["dtype"], "device": cfg["device"],
            "head": head or "base", "records": len(repo.records), "facts": list(repo.facts_at(head)),
            "by_method": by_method, "head_is_newest": head == tip}


def log(repo, show_all: bool = False, limit: int | None = None) -> list[dict]:
    """Records newest first: HEAD's history, or with `show_all` every record in the log."""
    return list(reversed(repo.records if show_all else repo.chain(repo.head())))[:limit]


def show(repo, ref: str) -> dict:
    """{"fact": ..., "applied_in": id} for an applied fact's id, else {"record": ...} for a revision."""
    applied = {f["id"]: (f, r["id"]) for r in repo.records if r["op"] == "apply" for f in r["facts"]}
    if ref in applied:  # an exact fact id wins over a revision it might also spell
        fact, applied_in = applied[ref]
        return {"fact": fact, "applied_in": applied_in}
    rid = repo.resolve(ref)
    if rid is None:
        raise UserError("base is the unedited model; it has no record. `memedit status` describes it")
    return {"record": repo.record(rid)}
