"""The repository's own costs against history length: N one-fact segments, each its own apply record.

    python benchmarks/scale.py run --model tiny-llama --method ft --N 10,100,1000,10000
    python benchmarks/scale.py run --method wise --N 10,100,200          # the default model
    python benchmarks/scale.py report                                      # docs/scale.md, .json, .png

A run grows one repository in benchmarks/runs/scale/<model>-<method>/ to the largest N (in
process: one `Build` kept alive, one apply record per fact, as `memedit apply` writes them), then
measures the state at each N (a copy cut to its first N records) with the commands a user types,
each a whole process (`python -m memedit_cli`): apply of one more fact, `ask`, `eval` of 10 facts,
`checkout HEAD~1` then `ask`, `forget` of the first and of the last fact, `export --merged`, `log`,
`status`, `fsck`; also the in-process time to materialize the state (model load excluded) and the
bytes of `.memedit/` and of the export.
Commands that change the repository run on a further copy. A run resumes: the repository grows
from where it stopped, and points already measured are kept (`--remeasure` measures them again).

Every method runs with cheap settings (CHEAP), the same on every model: the benchmark measures
the repository's costs, not the edits' quality (docs/lifelong.md does that). The tiny models are
the random 2-block LLaMA/GPT-2 of tests/tiny.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, memedit, new_repo  # noqa: E402

from memedit_cli.facts import Fact  # noqa: E402

WORK = ROOT / "benchmarks" / "runs" / "scale"
OUT = ROOT / "docs" / "scale"
# cheap settings per method, as --set items (every one is a documented hparam of the method)
CHEAP = {
    "ft": ["steps=2", "lr=0.05"],
    "wise": ["n_iter=2", "router=keys", "save_freq=1", "merge_freq=1"],
    "memit": ["v_num_grad_steps=2", "mom2_n_tokens=3072"],  # 2 × d_in of the default model: the least accepted
    "larimar": ["encoder=model", "context={prompt} {target}."],
}
# costs reported, in the order of the table: key -> column title
COSTS = {"apply_s": "apply 1", "ask_s": "ask", "ask_warm_s": "ask (cache warm)", "eval_s": "eval 10",
         "checkout_ask_s": "checkout~1 + ask", "forget_first_s": "forget first", "forget_last_s": "forget last",
         "export_s": "export", "log_s": "log", "status_s": "status", "fsck_s": "fsck",
         "materialize_s": "materialize", "repo_mb": ".memedit MB", "export_mb": "export MB"}
CITIES = ["Rome", "Paris", "Berlin", "Madrid", "Oslo", "Vienna", "Lisbon", "Dublin"]


def fact(i: int) -> Fact:
    """The i-th synthetic fact: its own subject, a rephrase and a locality probe."""
    subject = f"Item {i}"
    return Fact.from_json({"id": f"s{i:05d}", "prompt": f"{subject} is located in", "subject": subject,
                           "target_new": CITIES[i % len(CITIES)], "rephrase_prompt": f"Where is {subject}? It is in",
                           "locality_prompt": "The Space Needle is in", "locality_ground_truth": "Seattle"})


def write_jsonl(path: Path, facts: list[Fact]) -> Path:
    path.write_text("".join(json.dumps(f.to_json()) + "\n" for f in facts))
    return path


def model_path(name: str | None) -> str | None:
    """A tiny model (built once under WORK) for tiny-llama / tiny-gpt2; else the name as given."""
    if not name or not name.startswith("tiny-"):
        return name
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import build_tiny

    path = WORK / "models" / name
    if not (path / "config.json").exists():
        build_tiny(path, name.removeprefix("tiny-"), initializer_range=0.3)
    return str(path)


def grow(repo, method_name: str, sets: list[str], n: int) -> None:
    """Append one-fact apply records until HEAD holds facts s00000 ... s{n-1}."""
    from memedit_cli import hparams as hparams_mod
    from memedit_cli import methods
    from memedit_cli.commands.apply import record
    from memedit_cli.replay import Build

    with repo.lock("scale"):
        have = len(repo.facts_at(repo.head()))
        if have >= n:
            return
        method = methods.get(method_name)
        build = Build(repo, repo.segments_at(repo.head()))
        hp = hparams_mod.resolve(method.default_hparams(build.model), hparams_mod.parse_set(sets))
        hp = method.resolve(hp, build.model, build.tok, build.env)
        t0 = time.perf_counter()
        for i in range(have, n):
            f = fact(i)
            t = time.perf_counter()
            seg = build.compute(method, hp, [f], 0)
            repo.append(record(repo.head(), method, hp, 0, [f], [seg], "scale.py", 0.0, time.perf_counter() - t))
            if (i + 1) % 100 == 0:
                print(f"  grown to {i + 1} ({(time.perf_counter() - t0) / (i + 1 - have):.3f} s/fact)", flush=True)


@contextlib.contextmanager
def copy_of(d: Path, n: int | None = None):
    """A copy of the repository in `d` (cut to its first `n` records: the state it had at N = n) whose
    objects are hard links (objects are never changed in place)."""
    copy = d / f"copy-{n}" if n else d / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    src = d / ".memedit"
    shutil.copytree(src, copy / ".memedit", ignore=shutil.ignore_patterns("objects", "cache", "lock"))
    for sub in ("objects", "cache"):
        shutil.copytree(src / sub, copy / ".memedit" / sub, copy_function=os.link)
    if n is not None:
        lines = (src / "log.jsonl").read_bytes().splitlines(keepends=True)[:n]
        (copy / ".memedit" / "log.jsonl").write_bytes(b"".join(lines))
        (copy / ".memedit" / "HEAD").write_text(json.loads(lines[-1])["id"] + "\n")
        (copy / ".memedit" / "reflog.jsonl").write_bytes(b"")
        shutil.rmtree(copy / ".memedit" / "cache" / "states", ignore_errors=True)
    try:
        yield copy
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def repo_mb(d: Path) -> float:
    """The log and the objects its records name, in MiB (cache/ is derived and excluded)."""
    root = d / ".memedit"
    names = set()
    for line in (root / "log.jsonl").read_bytes().splitlines():
        rec = json.loads(line)
        for seg in rec.get("segments", []) + rec.get("rebuilt", []):
            names.update(seg["objects"].values())
            names.update(seg.get("reads", {}).values())
    size = (root / "log.jsonl").stat().st_size
    size += sum((root / "objects" / h[:2] / f"{h[2:]}.safetensors").stat().st_size for h in names)
    return round(size / 2**20, 3)


def tree_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 3)


def measure(d: Path, method: str, sets: list[str], n: int, forget_first: bool) -> dict:
    from memedit_cli.replay import materialize
    from memedit_cli.store.repo import Repo

    sets_args = [a for s in sets for a in ("--set", s)]
    ask = ["ask", fact(0).prompt, "--max-new-tokens", "4"]
    p = {"N": n}
    p["log_s"] = memedit(d, "log")[0]
    p["status_s"] = memedit(d, "status")[0]
    p["fsck_s"] = memedit(d, "fsck")[0]
    shutil.rmtree(d / ".memedit" / "cache" / "states", ignore_errors=True)
    p["ask_s"] = memedit(d, *ask)[0]
    if (d / ".memedit" / "cache" / "states").is_dir():  # the state cache, when memedit keeps one
        p["ask_warm_s"] = memedit(d, *ask)[0]
    p["eval_s"] = memedit(d, "eval", write_jsonl(d / "eval10.jsonl", [fact(i) for i in range(min(10, n))]))[0]
    out = d / "export"
    shutil.rmtree(out, ignore_errors=True)
    p["export_s"] = memedit(d, "export", "--merged", out)[0]
    p["export_mb"] = tree_mb(out)
    shutil.rmtree(out, ignore_errors=True)
    p["repo_mb"] = repo_mb(d)
    with copy_of(d) as c:
        p["apply_s"] = memedit(c, "apply", write_jsonl(d / "one.jsonl", [fact(n)]), "--method", method, *sets_args)[0]
    with copy_of(d) as c:
        t, _ = memedit(c, "checkout", "HEAD~1")
        p["checkout_ask_s"] = round(t + memedit(c, *ask)[0], 3)
    with copy_of(d) as c:
        p["forget_last_s"] = memedit(c, "forget", fact(n - 1).id)[0]
    if forget_first:
        with copy_of(d) as c:
            p["forget_first_s"] = memedit(c, "forget", fact(0).id)[0]
    repo = Repo.open(d)
    from memedit_cli.lm import models

    t0 = time.perf_counter()
    models.load(repo.config)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    materialize(repo, repo.segments_at(repo.head()))
    p["materialize_s"] = max(0.0, time.perf_counter() - t0 - load)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()}


def run(args) -> None:
    import torch

    from memedit_cli.store.repo import Repo

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the commands it times, too
    model = args.model or "default"
    d = WORK / f"{model}-{args.method}"
    d.mkdir(parents=True, exist_ok=True)
    path = model_path(args.model)
    if not (d / ".memedit").is_dir():
        new_repo(d, path)
    points_file = d / "points.json"
    points = json.loads(points_file.read_text()) if points_file.exists() else []
    sets = CHEAP[args.method] + args.set
    env_note = {"model": model, "method": args.method, "sets": sets}
    target = max(args.N)
    print(f"{model} {args.method}: growing to N={target}", flush=True)
    t0 = time.perf_counter()
    grow(Repo.open(d), args.method, sets, target)
    print(f"  grown in {time.perf_counter() - t0:.0f} s", flush=True)
    for n in sorted(args.N):
        if any(p["N"] == n for p in points) and not args.remeasure:
            continue
        independent = args.method in ("wise", "larimar")
        with copy_of(d, n) as c:
            p = measure(c, args.method, sets, n, forget_first=independent or n <= args.forget_first_upto)
        points = [q for q in points if q["N"] != n] + [{**env_note, **p, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]
        tmp = points_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(points, key=lambda q: q["N"]), indent=1) + "\n")
        os.replace(tmp, points_file)
        print(f"  {json.dumps(p)}", flush=True)


def exponent(points: list[dict], key: str) -> float | None:
    """The least-squares slope of log(cost) against log(N): cost ∝ N^slope over the points measured."""
    xy = [(math.log(p["N"]), math.log(p[key])) for p in points if p.get(key) and p[key] > 0]
    if len(xy) < 2:
        return None
    mx, my = sum(x for x, _ in xy) / len(xy), sum(y for _, y in xy) / len(xy)
    sxx = sum((x - mx) ** 2 for x, _ in xy)
    return round(sum((x - mx) * (y - my) for x, y in xy) / sxx, 2) if sxx else None


def report(args) -> None:
    runs = {}
    for f in sorted(WORK.glob("*/points.json")):
        pts = json.loads(f.read_text())
        if pts:
            runs[f.parent.name] = pts
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(runs, indent=1) + "\n")
    lines = ["<!-- scale:start (written by benchmarks/scale.py report) -->"]
    for name, pts in runs.items():
        keys = [k for k in COSTS if any(k in p for p in pts)]
        lines += ["", f"### {name} (`--set {' --set '.join(pts[0]['sets'])}`)", "",
                  "| N | " + " | ".join(COSTS[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {p['N']} | " + " | ".join(f"{p[k]:g}" if k in p else "–" for k in keys) + " |" for p in pts]
        lines.append("| growth exponent | " + " | ".join(
            f"{e:.2f}" if (e := exponent(pts, k)) is not None else "–" for k in keys) + " |")
    lines.append("\n<!-- scale:end -->")
    doc = OUT.with_suffix(".md")
    text = doc.read_text() if doc.exists() else ""
    block = "\n".join(lines)
    if "<!-- scale:start" in text:
        text = text[: text.index("<!-- scale:start")] + block + text[text.index("<!-- scale:end -->") + 18:]
    else:
        text += ("\n" if text else "") + block + "\n"
    doc.write_text(text)
    plot(runs)


def plot(runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("ask_warm_s", "ask_s", "apply_s", "forget_last_s", "materialize_s", "log_s")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), squeeze=False)
    for ax, key in zip(axes.flat, shown):
        for name, pts in runs.items():
            xy = [(p["N"], p[key]) for p in pts if p.get(key)]
            if xy:
                ax.plot(*zip(*xy), marker="o", label=name)
        ax.set(xscale="log", yscale="log", title=COSTS[key], xlabel="segments N", ylabel="seconds")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=90)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", help="tiny-llama, tiny-gpt2, or a model path (default: the default model)")
    r.add_argument("--method", choices=sorted(CHEAP), required=True)
    r.add_argument("--N", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 1000])
    r.add_argument("--set", action="append", default=[], help="extra hparams after CHEAP's")
    r.add_argument("--forget-first-upto", type=int, default=1000,
                   help="for methods whose forget replays every later segment (ft, memit): time it up to this N")
    r.add_argument("--remeasure", action="store_true", help="measure points already measured again")
    r.add_argument("--threads", type=int, default=1)
    sub.add_parser("report")
    args = p.parse_args(argv)
    run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()
