"""The benchmark: every method on the default model, CPU, lifelong protocol (apply all T, then score all T).

    python benchmarks/bench.py [--methods ft,memit,wise,larimar] [--data counterfact,zsre] [--T 1,10,100]

For each dataset of ../shared/data (skipped with a message when absent), method and T, in a
fresh repository, through the CLI as a user runs it (common.memedit):

- `apply` of the first T facts in one command (the method's default batching): seconds per
  edit after loading (the record's timings.per_fact_s);
- `eval` of the same T facts: Rel/Gen/Loc and exact match (docs/metrics.md);
- `forget` of the first fact (seconds, whole command), then `checkout HEAD~1` back to all T
  (seconds), then `export --merged` (seconds);
- generation latency: ms per token of exactly 16 greedy tokens after an edited and an unrelated prompt,
  the edited state against the base model, best of 3 interleaved rounds (in-process);
- repository bytes per fact: the object store's size after the apply, over T.

Writes benchmarks.md (tables with the machine, versions and date), benchmarks.json and, with
matplotlib (`pip install .[plot]`), benchmarks-scores.png and benchmarks-time.png into --out
(default docs/). MEMIT's key statistics are computed once beforehand (`memedit stats`,
cached per user) and timed on their own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import common

UNRELATED = "The Space Needle is located in the city of"
METHODS = ("ft", "memit", "wise", "larimar")


def latency(work, prompt: str) -> dict:
    """ms per token of 16 greedy tokens, edited state and base model, best of 3 interleaved rounds."""
    import torch

    from memedit_cli import methods
    from memedit_cli.lm import models
    from memedit_cli.replay import materialize
    from memedit_cli.store.repo import Repo

    repo = Repo.open(work)
    segments = repo.segments_at(repo.head())
    edited, tok = materialize(repo, segments)
    base, _ = models.load(repo.config)
    out = {}
    for label, text in (("edited", prompt), ("unrelated", UNRELATED)):
        best = {"base": float("inf"), "edited": float("inf")}
        enc = tok(text, return_tensors="pt").to(models.input_device(base))
        for _ in range(3):
            for name, model in (("base", base), ("edited", edited)):
                methods.reset(model, segments if model is edited else [])  # a new sequence, as `ask` starts one
                t0 = time.perf_counter()
                with torch.no_grad():  # exactly 16 tokens: an early end of text would shorten one side only
                    model.generate(**enc, min_new_tokens=16, max_new_tokens=16, do_sample=False,
                                   pad_token_id=tok.pad_token_id)
                best[name] = min(best[name], (time.perf_counter() - t0) / 16 * 1000)
        out[label] = {"base_ms": round(best["base"], 2), "edited_ms": round(best["edited"], 2),
                      "overhead": round(best["edited"] / best["base"] - 1, 4), "tokens": 16}
    return out


def run_one(data: str, method: str, T: int, latency_only: bool = False) -> dict:
    memedit = common.memedit
    with tempfile.TemporaryDirectory() as work:
        memedit(work, "init")
        facts = common.load(data, T)
        path = common.write_facts(facts, Path(work) / "facts.jsonl")
        if latency_only:
            memedit(work, "apply", path, "--method", method)
            return {"data": data, "method": method, "T": T, "latency": latency(work, facts[0].prompt)}
        if method == "memit":
            stats_s, _ = memedit(work, "stats")
        _, out = memedit(work, "apply", path, "--method", method, "--json")
        rec = json.loads(out)
        objects = Path(work) / ".memedit" / "objects"
        nbytes = sum(p.stat().st_size for p in objects.rglob("*") if p.is_file())
        _, out = memedit(work, "eval", path, "--json")
        scores = json.loads(out)["scores"]
        lat = latency(work, facts[0].prompt)
        forget_s, _ = memedit(work, "forget", facts[0].id)
        checkout_s, _ = memedit(work, "checkout", "HEAD~1")
        export_s, _ = memedit(work, "export", "--merged", Path(work) / "out")
        row = {"data": data, "method": method, "T": T, **scores,
               "s_per_edit": rec["timings"]["per_fact_s"], "apply_s": rec["timings"]["total_s"],
               "forget_s": round(forget_s, 2), "checkout_s": round(checkout_s, 2), "export_s": round(export_s, 2),
               "latency": lat, "bytes_per_fact": round(nbytes / T)}
        if method == "memit":
            row["stats_s"] = round(stats_s, 1)
        return row


def versions() -> dict:
    import torch
    import transformers

    from memedit_cli import __version__

    return {"memedit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def write_markdown(rows: list[dict], meta: dict, out: Path, plots: list[str]) -> None:
    lines = ["# Benchmarks", "",
             f"Produced by `{meta['command']}` on {meta['date']} ({meta['machine']}; "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ").", "",
             "The default model (SmolLM2-135M-Instruct), CPU, each method with its defaults, lifelong protocol: "
             "the first T facts applied in one `apply` (the method's own batching), then all T scored by "
             "`memedit eval` ([metrics](metrics.md)). Times are wall-clock on a shared machine: compare rows of "
             "one run only. Forget, checkout and export times are whole CLI commands (model loading included); "
             "latency is the edited state's extra time per generated token over the base model.", ""]
    timed = [r for r in rows if "rel" not in r]  # --latency-only rows
    rows = [r for r in rows if "rel" in r]
    for data in sorted({r["data"] for r in rows}):
        lines += [f"## {data}", "",
                  "| method | T | Rel | Gen | Loc | Rel EM | Gen EM | s/edit | forget s | checkout s | export s "
                  "| latency edited | latency unrelated | bytes/fact |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in [r for r in rows if r["data"] == data]:
            f = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
            # runs before the fix timed greedy answers that could stop early (no "tokens"): not shown
            lat = {k: f"{v['overhead']:+.1%}" if "tokens" in v else "—" for k, v in r["latency"].items()}
            size = r["bytes_per_fact"]
            size = f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} KB"
            lines.append(f"| {r['method']} | {r['T']} | {f(r['rel'])} | {f(r['gen'])} | {f(r['loc'])} | "
                         f"{f(r['rel_em'])} | {f(r['gen_em'])} | {r['s_per_edit']:.2f} | {r['forget_s']:.1f} | "
                         f"{r['checkout_s']:.1f} | {r['export_s']:.1f} | {lat['edited']} | {lat['unrelated']} | "
                         f"{size} |")
        stats = [r for r in rows if r["data"] == data and "stats_s" in r]
        if stats:
            lines += ["", f"MEMIT's key statistics (`memedit stats`, before the first apply): {stats[0]['stats_s']} s "
                          "the first time, then from the cache."]
        lines.append("")
    if timed:
        lines += ["## Generation latency", "",
                  "ms per token of exactly 16 greedy tokens (`--latency-only`: apply, then time), best of 3 "
                  "interleaved rounds, the edited state against the base model in the same process.", "",
                  "| data | method | T | edited prompt: base ms | edited ms | overhead | unrelated prompt: base ms "
                  "| edited ms | overhead |", "|---|---|---|---|---|---|---|---|---|"]
        for r in timed:
            e, u = r["latency"]["edited"], r["latency"]["unrelated"]
            lines.append(f"| {r['data']} | {r['method']} | {r['T']} | {e['base_ms']:.1f} | {e['edited_ms']:.1f} | "
                         f"{e['overhead']:+.1%} | {u['base_ms']:.1f} | {u['edited_ms']:.1f} | {u['overhead']:+.1%} |")
        lines.append("")
    Ts = sorted({r["T"] for r in rows})
    have = {(r["data"], r["method"], r["T"]) for r in rows}
    absent = [f"{d} × {m} × T={t}" for d in sorted({r["data"] for r in rows}) for m in METHODS for t in Ts
              if (d, m, t) not in have]
    if absent:
        lines += ["Not measured in these runs: " + "; ".join(absent) + ".", ""]
    lines += [f"![{p}]({p})" for p in plots]
    out.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install .[plot])", file=sys.stderr)
        return []
    rows = [r for r in rows if "rel" in r]
    datas = sorted({r["data"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]

    def panel(ax, data, key, title, log_y=False):
        """One line per method: `key` against T on `data`."""
        for m in methods:
            pts = [(r["T"], r[key]) for r in rows if r["data"] == data and r["method"] == m and r[key] is not None]
            if pts:  # one colour per method in every panel
                ax.plot(*zip(*pts), marker="o", label=m, color=f"C{METHODS.index(m)}")
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{data}: {title}")
        ax.set_xlabel("T (facts applied)")
        ax.grid(alpha=0.3)

    for name, keys in (("benchmarks-scores.png", [("rel", "Rel"), ("gen", "Gen"), ("loc", "Loc")]),
                       ("benchmarks-time.png", [("s_per_edit", "seconds per edit")])):
        fig, axes = plt.subplots(len(datas), len(keys), figsize=(4 * max(len(keys), 1.5), 3.6 * len(datas)),
                                 squeeze=False)
        for i, data in enumerate(datas):
            for j, (key, title) in enumerate(keys):
                panel(axes[i][j], data, key, title, log_y=key == "s_per_edit")
        for i in range(len(datas)):
            axes[i][0].legend()
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
    return ["benchmarks-scores.png", "benchmarks-time.png"]


def render(files: list[str], out: Path) -> None:
    """Write benchmarks.md/.json/.png from earlier runs' JSON (e.g. the datasets run as two commands)."""
    loaded = [json.loads(Path(f).read_text()) for f in files]
    rows = [r for d in loaded for r in d["rows"]]
    meta = dict(loaded[0]["meta"], command="` and `".join(d["meta"]["command"].strip() for d in loaded))
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps({"meta": meta, "runs": [d["meta"] for d in loaded], "rows": rows},
                                                    indent=1) + "\n")
    write_markdown(rows, meta, out / "benchmarks.md", plot(rows, out))
    print(f"wrote {out / 'benchmarks.md'} from {len(rows)} rows")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--data", default="counterfact,zsre")
    ap.add_argument("--T", default="1,10,100")
    ap.add_argument("--out", default=str(common.ROOT / "docs"), help="folder for benchmarks.md/.json/.png")
    ap.add_argument("--latency-only", action="store_true",
                    help="only apply and time generation (a separate table; written to benchmarks-latency.json)")
    ap.add_argument("--render", metavar="JSON,...",
                    help="measure nothing: merge the rows of these benchmarks.json files into --out")
    args = ap.parse_args()
    if args.render:
        render(args.render.split(","), Path(args.out))
        return
    for name in args.data.split(","):
        common.data_path(name)  # all present before the first run, or a "skipped" message now
    os.environ.setdefault("MEMEDIT_QUIET", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    jpath = out / ("benchmarks-latency.json" if args.latency_only else "benchmarks.json")
    for data in args.data.split(","):
        for method in args.methods.split(","):
            for T in [int(t) for t in args.T.split(",")]:
                t0 = time.perf_counter()
                rows.append(run_one(data, method, T, args.latency_only))
                r = rows[-1]
                print(f"{data} {method} T={T}: " + (json.dumps(r["latency"]) if args.latency_only else
                      f"Rel {r['rel']} Gen {r['gen']} Loc {r['loc']} {r['s_per_edit']} s/edit")
                      + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
                meta = {"command": "python benchmarks/bench.py " + " ".join(sys.argv[1:]),
                        "date": datetime.date.today().isoformat(),
                        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
                        "versions": versions()}
                # after every run, so an interrupted benchmark still leaves what it measured
                jpath.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
                if not args.latency_only:
                    write_markdown(rows, meta, out / "benchmarks.md", plot(rows, out))
    print(f"wrote {out / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
