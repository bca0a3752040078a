"""The lifelong benchmark: a stream of edits, scored on every fact seen so far at T = 10, 100, 300, 1000.

    python benchmarks/lifelong.py run --data counterfact --method wise      # edit, time, score (resumable)
    python benchmarks/lifelong.py run --data zsre --method base             # the unedited model's scores
    python benchmarks/lifelong.py report                                    # docs/lifelong.md, .json, PNGs

Protocol (docs/lifelong.md): the default model, CPU, each method at its defaults,
facts applied in the method's natural unit — WISE, Larimar and ft one fact per
edit (each edit a segment computed on top of the last, as the WISE paper's
sequential protocol), MEMIT batches of 100. At each point the state is scored
by `memedit eval`'s scorer on all facts applied so far.

Per point: the scores and their counts, seconds per edit so far (compute, as
`apply` records it; model loading excluded), bytes on disk per edit (objects
and log), `ask` latency (ms per token of 16 greedy tokens, the state and the
base model in the same process), and `forget` of the first fact (on a copy of
the repository whose objects are hard links, so the stream goes on untouched);
for MEMIT also `forget --resolve` of it, against the exact forget: both times,
max and mean |Δlogit| between the two states on 50 remaining facts' prompts and
locality prompts, and both states' scores on those facts (`forget_resolve`).

A run lives in `--work` (default benchmarks/runs/, ignored by git):
<data>-<method>/ holds a memedit repository and points.json. Each `apply`
covers at most `--chunk` facts, so a killed run loses one chunk at most and
`run` continues from the repository's HEAD. Scoring costs about as much as
editing at T = 1000 on this machine, so `--score-sample N` scores N of the
facts seen, evenly spaced over the stream (early and late edits alike; the
point's counts say how many). `--score-only` fills in points
whose scores are missing (or all of them with `--rescore`), from the revision
each point recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FILES, ROOT, load, new_repo, sample, set_threads, with_subject_probes  # noqa: E402

from memedit_cli.facts import load_facts  # noqa: E402
from memedit_cli.hparams import parse_set  # noqa: E402

POINTS = (10, 100, 300, 1000)
UNIT = {"memit": 100}  # facts per edit; every other method edits one fact at a time
METHODS = ("wise", "memit", "larimar", "ft")
ASK_TOKENS = 16
RESOLVE_SAMPLE = 50  # facts the exact and the --resolve forget are compared on (MEMIT)


def run_dir(work: Path, data: str, method: str, label: str | None = None) -> Path:
    """<data>-<method>, or <data>-<method>.<label> for a run with other hparams (`--set`, `--label`)."""
    return work / f"{data}-{method}{f'.{label}' if label else ''}"


def read_points(d: Path) -> list[dict]:
    f = d / "points.json"
    return json.loads(f.read_text()) if f.exists() else []


def write_points(d: Path, points: list[dict]) -> None:
    tmp = d / "points.json.tmp"
    tmp.write_text(json.dumps(sorted(points, key=lambda p: p["T"]), indent=1) + "\n")
    os.replace(tmp, d / "points.json")


def open_repo(d: Path, model: str | None):
    from memedit_cli.store.repo import Repo

    return Repo.open(d) if (d / ".memedit").is_dir() else new_repo(d, model)


def disk_bytes(repo) -> int:
    """Objects and the log: what the repository keeps for its edits (cache/ is derived and excluded)."""
    total = (repo.root / "log.jsonl").stat().st_size
    return total + sum(p.stat().st_size for p in (repo.root / "objects").rglob("*") if p.is_file())


def edit_seconds(repo, head) -> float:
    """Compute seconds of every apply in HEAD's chain, as apply recorded them (loading excluded)."""
    return sum(r["timings"]["total_s"] - r["timings"]["load_s"] for r in repo.chain(head) if r["op"] == "apply")


def ask_ms(repo, rev, prompt: str) -> tuple[float, float]:
    """(state, base) ms per token of exactly ASK_TOKENS greedy tokens; best of 3 interleaved rounds."""
    import torch

    from memedit_cli import methods
    from memedit_cli.lm import models
    from memedit_cli.lm.models import input_device
    from memedit_cli.replay import materialize

    segments = repo.segments_at(rev)
    state, tok = materialize(repo, segments)
    base, _ = models.load(repo.config)

    def once(model, reset):
        reset()
        enc = tok(prompt, return_tensors="pt").to(input_device(model))
        t0 = time.perf_counter()
        with torch.no_grad():  # min_new_tokens: an early end-of-text must not shorten the timed answer
            model.generate(**enc, max_new_tokens=ASK_TOKENS, min_new_tokens=ASK_TOKENS, do_sample=False,
                           pad_token_id=tok.pad_token_id)
        return (time.perf_counter() - t0) * 1000 / ASK_TOKENS

    rounds = [(once(state, lambda: methods.reset(state, segments)), once(base, lambda: None)) for _ in range(3)]
    return round(min(r[0] for r in rounds), 2), round(min(r[1] for r in rounds), 2)


@contextlib.contextmanager
def repo_copy(d: Path, name: str):
    """A copy of d's repository whose objects are hard links (immutable files), removed on exit."""
    from memedit_cli.store.repo import Repo

    copy = d / name
    shutil.rmtree(copy, ignore_errors=True)
    src = d / ".memedit"
    shutil.copytree(src, copy / ".memedit", ignore=shutil.ignore_patterns("objects", "cache", "lock"))
    for sub in ("objects", "cache"):
        shutil.copytree(src / sub, copy / ".memedit" / sub, copy_function=os.link)
    try:
        yield Repo.open(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def forget_first(d: Path, fact_id: str) -> float:
    """Seconds of `forget` of the first fact, on a copy of the repository."""
    from memedit_cli.commands.forget import forget

    with repo_copy(d, "forget-copy") as copy:
        t0 = time.perf_counter()
        forget(copy, [fact_id])
        return round(time.perf_counter() - t0, 2)


def forget_resolved(d: Path, fact_id: str, facts: list, exact: bool = True, stored_keys: bool = False) -> dict:
    """`forget --resolve` of the first fact against the exact forget, each on a copy: both times, the
    largest and mean |Δlogit| of the two states' next-token logits on `facts`' prompts and locality
    prompts, and each state's scores on `facts` (the remaining ones). `exact=False`: the resolve alone
    (where the exact replay, z of every later batch recomputed, costs hours). `stored_keys`: also
    `--resolve --stored-keys`, its time, scores and `stored_keys_max_dlogit` / `_mean_dlogit` against the
    exact forget (or, without it, against the plain resolve: `reference` says which)."""
    import torch

    from memedit_cli.commands.evaluate import evaluate
    from memedit_cli.commands.forget import forget
    from memedit_cli.replay import materialize

    out, logits = {}, {}
    prompts = [f.prompt for f in facts] + [f.locality_prompt for f in facts if f.locality_prompt]
    forms = ([("exact", {})] if exact else []) + [("resolve", {"resolve": True})]
    forms += [("stored_keys", {"resolve": True, "stored_keys": True})] if stored_keys else []
    for label, how in forms:
        with repo_copy(d, f"forget-{label}") as copy:
            t0 = time.perf_counter()
            rec = forget(copy, [fact_id], **how)
            out[f"{label}_s"] = round(time.perf_counter() - t0, 2)
            model, tok = materialize(copy, copy.segments_at(rec["id"]))
            with torch.no_grad():
                logits[label] = torch.stack([model(**tok(p, return_tensors="pt")).logits[0, -1] for p in prompts])
            out[f"{label}_scores"] = evaluate(copy, facts, rev=rec["id"]).scores
    reference = forms[0][0]
    for label in logits:
        if label != reference:
            diff = (logits[reference] - logits[label]).abs()
            key = "" if label == "resolve" else f"{label}_"  # the resolve's keys keep their names
            out[f"{key}max_dlogit"] = round(float(diff.max()), 4)
            out[f"{key}mean_dlogit"] = round(float(diff.mean()), 5)
    if len(logits) > 1:
        out.update(reference=reference, prompts=len(prompts))
    return out


def score_point(repo, rev, facts) -> dict:
    from memedit_cli.commands.evaluate import evaluate

    report = evaluate(repo, facts, rev=rev)
    return {"scores": report.scores, "counts": report.counts}


def run(args) -> None:
    if args.facts:
        data, facts = args.facts.stem, load_facts(args.facts)[:max(args.T)]
    else:
        data, facts = args.data, load(args.data, max(args.T))
        if args.spec_probes:  # neither dataset has same-subject probes: other relations' prompts, this subject
            facts = with_subject_probes(facts, load(args.data, 1000), args.spec_probes)
    # a dataset shorter than the last point ends there (ZsRE's file has 998 usable facts)
    points = sorted({min(T, len(facts)) for T in args.T})
    if args.set and not args.label:
        sys.exit("a run with --set needs a --label: its folder and its rows in the report are named after it")
    d = run_dir(args.work, data, args.method, args.label)
    d.mkdir(parents=True, exist_ok=True)
    repo = open_repo(d, args.model)
    for T in points:
        have = {p["T"]: p for p in read_points(d)}.get(T)
        if args.score_only:
            if have is None or (have.get("scores") and not args.rescore):
                continue
            point = have
        elif have is not None:
            continue  # edited (and scored, unless --no-score) by an earlier run
        elif args.method == "base":
            point = {"T": T, "rev": None}
        else:
            point = advance(repo, facts, T, args)
        if not args.no_score:
            t0 = time.perf_counter()
            point.update(score_point(repo, point["rev"], sample(facts[:T], args.score_sample)))
            point["score_s"] = round(time.perf_counter() - t0, 1)
        write_points(d, [p for p in read_points(d) if p["T"] != T] + [point])
        print(f"{data} {args.method} T={T}: {json.dumps(point.get('scores'))}", flush=True)


def advance(repo, facts, T: int, args) -> dict:
    """Apply facts up to T (resuming from HEAD), then time the point; the point without scores."""
    from memedit_cli import methods
    from memedit_cli.commands.apply import apply

    unit = args.unit or UNIT.get(args.method, 1)
    n = len(repo.facts_at(repo.head()))
    ids = [f.id for f in facts[:n]]
    if list(repo.facts_at(repo.head())) != ids:
        sys.exit(f"{repo.root}: HEAD does not hold the first {n} facts in order; remove the folder and run again")
    while n < T:
        chunk = facts[n:min(T, n + max(args.chunk, unit))]
        t0 = time.perf_counter()
        source = f"{args.facts or FILES[args.data]}[{n}:{n + len(chunk)}]"
        apply(repo, chunk, args.method, parse_set(args.set), unit, 0, source)
        n += len(chunk)
        print(f"  {args.method}: {n} facts ({(time.perf_counter() - t0) / len(chunk):.2f} s/fact wall)", flush=True)
    head = repo.head()
    point = {"T": T, "rev": head, "edit_s_per_edit": round(edit_seconds(repo, head) / T, 3),
             "bytes_per_edit": round(disk_bytes(repo) / T)}
    point["ask_ms"], point["base_ask_ms"] = ask_ms(repo, head, facts[0].prompt)
    if T <= args.forget_upto:
        d, exact = Path(repo.root).parent, T <= args.exact_forget_upto
        if methods.get(args.method).resolvable:  # MEMIT: forget --resolve against the exact replay
            point["forget_resolve"] = forget_resolved(d, facts[0].id, sample(facts[1:T], RESOLVE_SAMPLE), exact)
            if exact:  # the exact forget was timed there: not run twice
                point["forget_first_s"] = point["forget_resolve"]["exact_s"]
        else:
            point["forget_first_s"] = forget_first(d, facts[0].id)
    return point


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="edit, time and score one method on one dataset (resumable)")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--data", choices=sorted(FILES))
    which.add_argument("--facts", type=Path, help="a facts file instead of a dataset (the run is named after it)")
    r.add_argument("--model", help="the base model (default: the default model)")
    r.add_argument("--method", choices=METHODS + ("base",), required=True)
    r.add_argument("--T", type=lambda s: [int(x) for x in s.split(",")], default=list(POINTS))
    r.add_argument("--chunk", type=int, default=10, help="facts per apply (a kill loses one chunk at most)")
    r.add_argument("--forget-upto", type=int, default=max(POINTS), help="time forget only at points T <= this")
    r.add_argument("--exact-forget-upto", type=int, default=max(POINTS), metavar="T",
                   help="MEMIT: beyond this point time `forget --resolve` alone, not the exact replay "
                        "(which recomputes z for every later batch)")
    r.add_argument("--no-score", action="store_true", help="edit and time only; score later with --score-only")
    r.add_argument("--score-only", action="store_true", help="only score points already edited")
    r.add_argument("--rescore", action="store_true", help="with --score-only: score every point again")
    r.add_argument("--score-sample", type=int, default=None, metavar="N",
                   help="score N of the facts seen, evenly spaced over the stream (default: all of them)")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--spec-probes", type=int, default=2, metavar="N",
                   help="--data: N same-subject probes per fact, made from the dataset's other prompts (scored as "
                        "spec; common.with_subject_probes); 0: none")
    r.add_argument("--set", action="append", default=[], metavar="K=V",
                   help="an hparam of the method (repeatable), as `memedit apply --set`; needs --label")
    r.add_argument("--label", help="names a run with other hparams: its folder <data>-<method>.<label>")
    r.add_argument("--unit", type=int, default=None,
                   help="facts per edit (one segment; WISE: one shard) instead of the method's natural unit")
    for q in (r, sub.add_parser("report", help="write docs/lifelong.md, .json and one PNG per dataset")):
        q.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "runs")
    rep = sub.choices["report"]
    rep.add_argument("--out", type=Path, default=ROOT / "docs" / "lifelong")
    args = p.parse_args(argv)
    if args.cmd == "run":
        set_threads(args.threads)
        run(args)
    else:
        from lifelong_report import report

        report(args.work, args.out, (ROOT / "docs" / "benchmarks.md", ROOT / "README.md"))


if __name__ == "__main__":
    main()
