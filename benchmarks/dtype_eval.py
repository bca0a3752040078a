"""Each method on the default model in float32 and in bfloat16 (docs/architectures.md has the figures).

    python benchmarks/dtype_eval.py --facts 30 [--data zsre] [--methods ft,memit,wise,larimar]

For each method and dtype: a fresh repository (`memedit init --dtype D`), one apply of the first N
facts, `memedit eval`'s Rel/Gen/Loc on them, and the apply's seconds. bf16 on a CPU is emulated by
torch and slower than float32 there; the seconds say what that costs, not what a GPU does.
Needs ../shared/data (skipped with a message when absent).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common

from memedit_cli.commands.apply import apply
from memedit_cli.commands.evaluate import evaluate
from memedit_cli.commands.init import init


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=list(common.FILES), default="counterfact")
    ap.add_argument("--facts", type=int, default=30)
    ap.add_argument("--methods", default="ft,memit,wise,larimar")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    common.set_threads()
    facts = common.load(args.data, args.facts)
    print(f"# {args.data}, first {len(facts)} facts, one apply each, default hparams")
    print("| method | dtype | Rel | Gen | Loc | apply s | of which statistics s |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        for dtype in args.dtypes.split(","):
            with tempfile.TemporaryDirectory(prefix="memedit-dtype-") as work:
                repo = init(work, None, dtype, "auto", False)
                t0 = time.perf_counter()
                rec = apply(repo, facts, method, {}, None, 0, "bench")
                apply_s = time.perf_counter() - t0
                s = evaluate(repo, facts).scores
            # MEMIT's C₀ seconds as its segments record them (cold: each run starts with an empty cache dir)
            stats_s = sum(seg["info"].get("stats_s", 0) for seg in rec["segments"])
            print(f"| {method} | {dtype} | {s['rel']:.2f} | {s['gen']:.2f} | {s['loc']:.2f} | {apply_s:.0f} | "
                  f"{stats_s:.0f} |", flush=True)


if __name__ == "__main__":
    main()
