"""docs/lifelong.md, docs/lifelong.json and docs/lifelong-<data>.png from the runs of benchmarks/lifelong.py.

The summary tables of docs/benchmarks.md and README.md (between the
`<!-- lifelong:... -->` markers) are written from the same points, so every
figure on those pages comes from this benchmark.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path

from common import FILES

SCORES = ("rel", "gen", "loc", "rel_gen", "gen_gen", "loc_gen", "spec", "port")
ORDER = ("base", "wise", "memit", "larimar", "ft")
LABEL = {"rel": "Rel", "gen": "Gen", "loc": "Loc", "rel_gen": "Rel gen", "gen_gen": "Gen gen",
         "loc_gen": "Loc gen", "spec": "Spec", "port": "Port"}


def collect(work: Path, earlier: Path | None = None) -> list[dict]:
    """The points of the runs under `work`; a run that is not there (an earlier session's) keeps its points
    from `earlier` (the last report's JSON): each (data, method) comes whole from one place."""
    rows = []
    for d in sorted(work.glob("*-*/points.json")):
        data, method = d.parent.name.split("-", 1)
        rows += [dict(p, data=data, method=method) for p in json.loads(d.read_text())]
    if earlier is not None and earlier.exists():
        here = {(r["data"], r["method"]) for r in rows}
        rows += [r for r in json.loads(earlier.read_text())["points"] if (r["data"], r["method"]) not in here]
    key = lambda r: (r["data"], ORDER.index(r["method"].split(".")[0]) if r["method"].split(".")[0] in ORDER  # noqa: E731
                     else 99, r["method"], r["T"])
    return sorted(rows, key=key)


def _f(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def _bytes(n):
    return "—" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def _forget(r: dict) -> str:
    """The exact forget's seconds, and MEMIT's `forget --resolve` in brackets where it was timed."""
    cell = _f(r.get("forget_first_s"), 1)
    resolve = (r.get("forget_resolve") or {}).get("resolve_s")
    return cell if resolve is None else f"{cell} ({resolve:.1f})"


def table(rows: list[dict], scores=SCORES) -> list[str]:
    shown = [k for k in scores if any((r.get("scores") or {}).get(k) is not None for r in rows)]
    head = (["method", "T", "scored"] + [LABEL[k] for k in shown]
            + ["s/edit", "bytes/edit", "ask ms/token (base)", "forget 1st s (`--resolve`)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r.get("scores") or {}
        ask = "—" if "ask_ms" not in r else f"{r['ask_ms']:.0f} ({r['base_ask_ms']:.0f})"
        scored = str((r.get("counts") or {}).get("rel", "—"))
        cells = [r["method"], str(r["T"]), scored] + [_f(s.get(k)) for k in shown] + [
            _f(r.get("edit_s_per_edit")), _bytes(r.get("bytes_per_edit")), ask, _forget(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], data: str, out: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install .[plot])", file=sys.stderr)
        return None
    rows = [r for r in rows if r["data"] == data and r.get("scores")]
    keys = [k for k in SCORES if any(r["scores"].get(k) is not None for r in rows)]
    if not keys:
        return None
    cols = 4
    fig, axes = plt.subplots((len(keys) + cols - 1) // cols, cols, figsize=(4 * cols, 3.2 * ((len(keys) + 3) // 4)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for method in ORDER:
            pts = [(r["T"], r["scores"][key]) for r in rows
                   if r["method"] == method and r["scores"].get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), "k--" if method == "base" else "o-", label=method, lw=1.5)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(LABEL[key])
        ax.set_xlabel("T (facts edited)")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"lifelong editing, {data} ({FILES.get(data, data)}), default model, CPU")
    fig.tight_layout()
    name = f"{out.name}-{data}.png"
    fig.savefig(out.parent / name, dpi=90)
    plt.close(fig)
    return name


def replace_between(path: Path, name: str, lines: list[str]) -> None:
    """Put `lines` between <!-- name:start --> and <!-- name:end --> in `path` (markers must exist)."""
    text = path.read_text()
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        print(f"{path}: no <!-- {name}:start/end --> markers; left as it is", file=sys.stderr)
        return
    path.write_text(pattern.sub(lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(2), text))


def summary(rows: list[dict]) -> list[str]:
    """Each method at T = 100 and at the largest T it reached, per dataset (README and benchmarks.md)."""
    pick = []
    for data in sorted({r["data"] for r in rows}):
        for method in ORDER:
            mine = [r for r in rows if r["data"] == data and r["method"] == method and r.get("scores")]
            keep = {r["T"]: r for r in mine if r["T"] == 100 or r["T"] == max(x["T"] for x in mine)}
            pick += [dict(r, method=f"{data}: {method}") for r in keep.values()]
    return table(pick, ("rel", "gen", "loc", "rel_gen", "gen_gen", "loc_gen"))


NOTES = "<!-- notes: written by hand, kept by the report -->"
CHOICE = ("rel", "gen", "loc", "rel_gen", "gen_gen", "loc_gen")  # what the default method is chosen on


def ranking(rows: list[dict], T: int = 100) -> list[tuple[str, float]]:
    """Methods scored at T on every dataset, by the mean of CHOICE over both datasets, best first."""
    datasets = sorted({r["data"] for r in rows})
    out = []
    for method in ORDER[1:]:
        mine = [r for r in rows if r["method"] == method and r["T"] == T and r.get("scores")]
        if len(mine) == len(datasets) and datasets:
            vals = [r["scores"][k] for r in mine for k in CHOICE if r["scores"].get(k) is not None]
            out.append((method, round(sum(vals) / len(vals), 3)))
    return sorted(out, key=lambda x: -x[1])


def report(work: Path, out: Path, pages: tuple = ()) -> None:
    rows = collect(work, out.with_suffix(".json"))
    if not rows:
        sys.exit(f"no points under {work}; run `python benchmarks/lifelong.py run ...` first")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {platform.system()}", "python": platform.python_version()}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "points": rows}, indent=1) + "\n")
    lines = ["# Lifelong editing to T = 1,000", "",
             "Written by `python benchmarks/lifelong.py report` from the points of "
             "`python benchmarks/lifelong.py run --data DATA --method METHOD` (see the Commands section). "
             "Protocol: the default model (SmolLM2-135M-Instruct), float32, CPU (2 cores, 1 thread per run, two runs "
             "at a time), each method at its defaults; a stream of facts in the method's natural unit (WISE, Larimar "
             "and ft one fact per edit, MEMIT batches of 100), scored at T = 10, 100, 300, 1000 on the facts "
             "applied so far (ZsRE's last point is T = 998: two of its 1,000 records have an empty target and are "
             "refused) by `memedit eval`'s scorer ([metrics](metrics.md)): all of them up to T = 300, and at "
             "T = 1000 an even sample of 300 over the whole stream (`--score-sample 300`: scoring 1,000 facts costs "
             "about half an hour per point here; the `scored` column says how many). `base` is the unedited model "
             "on the same facts (the dashed line in the plots).", "",
             "- **s/edit**: compute seconds per fact so far, as `apply` records them (model loading excluded).",
             "- **bytes/edit**: the repository's objects and log divided by T.",
             "- **ask ms/token**: 16 greedy tokens on the first fact's prompt, best of 3, the state against the "
             "base model (in brackets) in the same process.",
             "- **forget 1st s**: `forget` of the first fact (in process, model loading included), on a copy of the "
             "repository. Methods whose later edits depend on earlier ones (MEMIT, ft) recompute everything after "
             "the forgotten fact; it is timed only up to the `--forget-upto` of the run. In brackets, MEMIT's "
             "`forget --resolve` of the same fact (later batches re-solved from their stored z); beyond the "
             "run's `--exact-forget-upto` only that one is timed.", "",
             "- **Spec**: neither dataset carries same-subject probes, so `lifelong.py run` makes two per fact "
             "(`--spec-probes 2`): the prompts of the next facts of the same file whose template differs, with "
             "this fact's subject put in (\"When was UniFirst established?\" for an edit of \"What is the product "
             "made by UniFirst?\"), scored like locality against the unedited model (`benchmarks/common.py`, "
             "`with_subject_probes`). \"Another template\" is not always another relation: CounterFact words "
             "one relation several ways (\"{} plays\", \"{} professionally plays the sport\"), and such a "
             "rewording, which the edit rightly changes, counts against spec here; `with_subject_probes(..., "
             "by=\"relation\")` leaves out templates whose answers share two or more values with the edit's "
             "(`benchmarks/larimar_eval.py quality --probes-by relation`, docs/methods/larimar.md), and this table "
             "keeps the template rule all its rows were scored with. "
             "Runs made before the probes existed show —. Port has no column: neither "
             "dataset carries portability probes (docs/facts.md says which layouts do).", ""]
    plots = []
    for data in sorted({r["data"] for r in rows}):
        lines += [f"## {data} (`{FILES.get(data, data)}`)", ""] + table([r for r in rows if r["data"] == data]) + [""]
        name = plot(rows, data, out)
        if name:
            plots.append(name)
            lines += [f"![{name}]({name})", ""]
    ranked = ranking(rows)
    if ranked:
        lines += ["## The default method", "",
                  "`memedit apply`'s default `--method` is the method with the best mean of Rel, Gen, Loc, Rel gen, "
                  "Gen gen and Loc gen at T = 100, over both datasets: "
                  + ", ".join(f"**{m}** {v:.3f}" if i == 0 else f"{m} {v:.3f}" for i, (m, v) in enumerate(ranked))
                  + ".", ""]
    missing = [f"{d} × {m}" for d in sorted(FILES) for m in ORDER
               if not any(r["data"] == d and r["method"] == m and r["T"] >= 998 and r.get("scores") for r in rows)]
    if missing:
        lines += ["Not (yet) scored at T = 1000: " + "; ".join(missing) + ". The table shows the points reached; "
                  "s/edit is the measured rate.", ""]
    lines += ["## Commands", "", "```"]
    lines += [f"python benchmarks/lifelong.py run --data {d} --method base --T 10,100,300,1000 --score-sample 300"
              for d in sorted(FILES)]
    lines += ["# per data and method: edits and timings (--forget-upto 100 for memit, 10 for ft), then scores",
              "OMP_NUM_THREADS=1 python benchmarks/lifelong.py run --data DATA --method METHOD --T 10,100,300,1000 "
              "--threads 1 --no-score --forget-upto 1000",
              "python benchmarks/lifelong.py run --data DATA --method METHOD --score-only --T 10,100,300,1000 "
              "--score-sample 300",
              "python benchmarks/lifelong.py report", "```", ""]
    page = out.with_suffix(".md")
    old = page.read_text() if page.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else NOTES + "\n## Notes\n\n(none yet)\n"
    page.write_text("\n".join(lines) + "\n" + notes)  # the hand-written notes after the marker are kept
    block = summary(rows)
    for page in pages:
        replace_between(page, "lifelong", block)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')} and {len(plots)} plot(s)")
