"""Foundation timings on the default model, CPU: CLI start-up, ft s/fact, forget, export.

    python benchmarks/foundation.py [--facts 10] [--threads 2]

Facts come from ../shared/data/counterfact-edit-1k.json when present (else
examples/facts.jsonl). Every figure is a whole CLI command (common.memedit), in a
temporary repository. Prints a markdown table with the machine and versions.
Timings are wall-clock on a shared machine: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facts", type=int, default=10, help="facts to apply, one batch each (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS)")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    work = tempfile.mkdtemp(prefix="memedit-bench-")
    atexit.register(shutil.rmtree, work, True)  # the export alone is the size of the model
    counterfact = common.DATA / common.FILES["counterfact"]
    if counterfact.exists():
        facts = common.load("counterfact", args.facts)
        source = f"{counterfact.name}[:{args.facts}]"
    else:
        print(f"note: {counterfact} not present; using examples/facts.jsonl", file=sys.stderr)
        from memedit_cli.facts import load_facts

        facts = load_facts(common.ROOT / "examples" / "facts.jsonl")
        source = "examples/facts.jsonl"
    path = common.write_facts(facts, Path(work) / "facts.jsonl")
    n = len(facts)

    def run(*a):
        return common.memedit(work, *a, env=env)[0]

    def median_of(k, *a):
        return statistics.median(run(*a) for _ in range(k))

    rows = []
    rows.append(("memedit --help (median of 5)", median_of(5, "--help"), "s"))
    rows.append(("memedit init (default model, already converted)", run("init"), "s"))
    rows.append(("memedit log, empty (median of 5)", median_of(5, "log"), "s"))
    t = run("apply", path, "--batch-size", "1")
    head = json.loads(common.memedit(work, "log", "--json", env=env)[1])[0]
    compute = [s["compute_s"] for s in head["segments"]]
    rows.append((f"memedit apply, {n} facts, --batch-size 1 (whole command)", t, "s"))
    rows.append(("  ft compute per fact (mean of the segments)", statistics.mean(compute), "s/fact"))
    rows.append(("  apply per fact, excluding model load (record timings)", head["timings"]["per_fact_s"], "s/fact"))
    rows.append(("memedit log, 1 record (median of 5)", median_of(5, "log"), "s"))
    rows.append(("memedit export --merged", run("export", "--merged", Path(work) / "out"), "s"))
    first = head["facts"][0]["id"]
    rows.append((f"memedit forget (first of {n}: replays {n - 1} segments)", run("forget", first), "s"))
    last = head["facts"][-1]["id"]
    rows.append((f"memedit forget (last of {n}: replays 0 segments)", run("forget", last), "s"))
    rows.append(("memedit checkout base", run("checkout", "base"), "s"))

    import torch
    import transformers

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({args.threads} threads), "
          f"transformers {transformers.__version__}, python {platform.python_version()}; facts: {source}; "
          f"date {time.strftime('%Y-%m-%d')}\n")
    print("| what | value |\n|---|---|")
    for what, value, unit in rows:
        print(f"| {what} | {value:.2f} {unit} |")


if __name__ == "__main__":
    main()
