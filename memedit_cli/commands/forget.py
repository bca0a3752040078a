"""`memedit forget`: remove facts from the current state, exactly.

The forgotten facts leave their segment; every later segment is recomputed
from the log with its recorded method, hparams and seed on top of the
segments before it. The result equals a fresh repository in which the same
facts, minus the forgotten ones, were applied in the same order with the same
seeds. The log keeps everything: the forget record names the untouched prefix
(`keep`) and the rebuilt segments.

`resolve=True` (`memit forget --resolve`) trades that exactness for time:
later segments of a method that can (MEMIT) keep what they stored (MEMIT's z)
and are only solved again in closed form on the new state, no gradient
steps; the record says `"resolve": true`. `stored_keys=True` goes further:
every rebuilt MEMIT segment that stored its keys (update=sequential or
alphaedit) is solved with those keys too, as read when it was made, and only
reads h again (one row a fact instead of one per context template); the
record says `"stored_keys": true`. docs/methods/memit.md measures how far
each lands from the exact replay.
"""

from __future__ import annotations

import time

from memedit_cli import hparams as hparams_mod
from memedit_cli import methods
from memedit_cli.errors import RevisionError, UserError
from memedit_cli.facts import Fact
from memedit_cli.lm.progress import bar
from memedit_cli.store import log as logmod


def resolve_ids(repo, ids: list[str], head) -> list[str]:
    """Fact ids (or unique prefixes) and apply-record id prefixes -> active fact ids, in order."""
    active = repo.facts_at(head)
    chain = repo.chain(head)
    chosen: set = set()
    for arg in ids:
        if arg in active:
            chosen.add(arg)
            continue
        facts = [fid for fid in active if fid.startswith(arg)]
        recs = [r for r in chain if r["op"] == "apply" and len(arg) >= 4 and r["id"].startswith(arg)]
        if len(facts) + len(recs) > 1:
            names = [f"fact {f}" for f in facts] + [f"apply record {r['id'][:12]}" for r in recs]
            raise RevisionError(f"{arg!r} is ambiguous: it matches {', '.join(names[:5])}; give more characters")
        if facts:
            chosen.add(facts[0])
        elif recs:
            still = [f["id"] for f in recs[0]["facts"] if f["id"] in active]
            if not still:
                raise UserError(f"every fact of apply record {recs[0]['id'][:12]} is already forgotten")
            chosen.update(still)
        else:
            known = any(f["id"] == arg for r in chain if r["op"] == "apply" for f in r["facts"])
            why = "it was already forgotten" if known else "no active fact or apply record has that id"
            raise UserError(f"cannot forget {arg!r}: {why}; `memedit status` and `memedit log` list what is applied")
    return [fid for fid in active if fid in chosen]


def forget(repo, ids: list[str], allow_drift: bool = False, resolve: bool = False, stored_keys: bool = False) -> dict:
    from memedit_cli.replay import Build, load_segment_tensors

    if stored_keys and not resolve:
        raise UserError("--stored-keys is a form of --resolve: give both (forget without them is the exact replay)")
    t0 = time.perf_counter()
    with repo.lock("forget"):
        head = repo.head()
        gone = resolve_ids(repo, ids, head)
        gone_set = set(gone)
        segments = repo.segments_at(head)
        kept_as_is = {id(s) for s in segments}  # by identity: comparing segments' contents is O(N²)
        first = next(i for i, s in enumerate(segments) if gone_set & set(s["facts"]))
        facts = {f["id"]: Fact.from_json(f) for r in repo.chain(head) if r["op"] == "apply" for f in r["facts"]}
        build = Build(repo, segments[:first], allow_drift)
        rebuilt = []
        changed: set[str] = set()  # the methods of segments dropped, shrunk or computed again so far
        for n, seg in enumerate(bar(segments[first:], desc="forget: replay", unit="segment")):
            keep = [facts[fid] for fid in seg["facts"] if fid not in gone_set]
            if not keep:
                changed.add(seg["method"])
                continue
            method = methods.get(seg["method"])
            if n > 0 and len(keep) == len(seg["facts"]) and _unaffected(method, changed):
                build.keep(seg)  # its result cannot have changed: kept as it is
                rebuilt.append(seg)
                continue
            changed.add(seg["method"])
            hp = hparams_mod.from_json(method.hparams_class, seg["hparams"])
            # only the first affected segment starts from the same state as before; with `resolve`, later
            # segments that can keep their stored results too (then the state is no longer the exact replay)
            reused = n == 0 or resolve and method.resolvable
            reuse = ({"facts": seg["facts"], "tensors": load_segment_tensors(repo, seg), "stored_keys": stored_keys}
                     if reused else None)
            rebuilt.append(build.compute(method, hp, keep, seg["seed"], reuse, replaying=seg))
        names = sorted({seg["method"] for seg in segments if gone_set & set(seg["facts"])})
        return repo.append({
            "parent": head,
            "op": "forget",
            "method": ",".join(names),
            "forgot": gone,
            "facts": [facts[fid].to_json() for fid in gone],
            "keep": first,
            "rebuilt": rebuilt,
            "versions": logmod.versions(),
            **({"drift": build.drift} if build.drift else {}),  # replays made under --allow-drift
            **({"resolve": True} if resolve else {}),  # later segments re-solved from stored results, not replayed
            **({"stored_keys": True} if stored_keys else {}),  # ... with their stored keys
            "timings": {"total_s": round(time.perf_counter() - t0, 3),
                        "replayed_segments": sum(1 for s in rebuilt if id(s) not in kept_as_is)},
            "time": logmod.now(),
        })


def _unaffected(method, changed: set[str]) -> bool:
    """Whether a segment of `method` computed after segments of the methods `changed` changed is the same:
    each change was of its own method and its segments are independent of each other, or of a method
    whose wrappers are off while others compute (Larimar)."""
    return all(c == method.name and method.independent or c != method.name and not methods.get(c).visible_to_others
               for c in changed)
