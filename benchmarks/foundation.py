"""Foundation timings on the default model, CPU: CLI start-up, ft s/fact, forget, export.

    python benchmarks/foundation.py [--facts 10] [--threads 2]

Facts come from ../shared/data/counterfact-edit-1k.json when present (else
examples/facts.jsonl). Prints a markdown table with the machine and versions.
Timings are wall-clock on a shared machine: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "counterfact-edit-1k.json"


def run(args, cwd, env):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "memedit_cli", "-q", "-C", str(cwd), *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def median_of(n, args, cwd, env):
    return statistics.median(run(args, cwd, env) for _ in range(n))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facts", type=int, default=10, help="facts to apply, one batch each (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS)")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    work = Path(tempfile.mkdtemp(prefix="memedit-bench-"))
    facts = work / "facts.jsonl"
    if SHARED.exists():
        records = json.loads(SHARED.read_text())[: args.facts]
        source = f"{SHARED.name}[:{args.facts}]"
    else:
        print(f"note: {SHARED} not present; using examples/facts.jsonl", file=sys.stderr)
        records = [json.loads(line) for line in (ROOT / "examples" / "facts.jsonl").read_text().splitlines()]
        source = "examples/facts.jsonl"
    facts.write_text("".join(json.dumps(r) + "\n" for r in records))
    n = len(records)

    rows = []
    rows.append(("memedit --help (median of 5)", median_of(5, ["--help"], work, env), "s"))
    rows.append(("memedit init (default model, already converted)", run(["init"], work, env), "s"))
    rows.append(("memedit log, empty (median of 5)", median_of(5, ["log"], work, env), "s"))
    t = run(["apply", str(facts), "--batch-size", "1"], work, env)
    head = json.loads(subprocess.run([sys.executable, "-m", "memedit_cli", "-C", str(work), "log", "--json"], env=env,
                                     capture_output=True, text=True, check=True).stdout)[0]
    compute = [s["compute_s"] for s in head["segments"]]
    rows.append((f"memedit apply, {n} facts, --batch-size 1 (whole command)", t, "s"))
    rows.append(("  ft compute per fact (mean of the segments)", statistics.mean(compute), "s/fact"))
    rows.append(("  apply per fact, excluding model load (record timings)", head["timings"]["per_fact_s"], "s/fact"))
    rows.append(("memedit log, 1 record (median of 5)", median_of(5, ["log"], work, env), "s"))
    rows.append(("memedit export --merged", run(["export", "--merged", str(work / "out")], work, env), "s"))
    first = head["facts"][0]["id"]
    rows.append((f"memedit forget (first of {n}: replays {n - 1} segments)", run(["forget", first], work, env), "s"))
    last = head["facts"][-1]["id"]
    rows.append((f"memedit forget (last of {n}: replays 0 segments)", run(["forget", last], work, env), "s"))
    rows.append(("memedit checkout base", run(["checkout", "base"], work, env), "s"))

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
