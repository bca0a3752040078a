"""`memedit checkout REV`: make REV the current state."""

from __future__ import annotations


def checkout(repo, rev: str) -> str | None:
    """Point HEAD at `rev` (an id prefix, HEAD~N, or base); returns the revision id (None: base)."""
    with repo.lock("checkout"):
        rid = repo.resolve(rev)
        for seg in repo.segments_at(rid):  # refuse to point HEAD at a state we could not rebuild
            for h in seg["objects"].values():
                repo.objects.read_bytes(h)
        repo.set_head(rid, f"checkout {rev}")
    return rid
