"""Speed of `second_moments` on the default model: layers 2..6 over 50k tokens of WikiText-2 (test split).

    python benchmarks/stats_speed.py [--tokens 50000] [--batch-size 8] [--seq-len 256] [--threads N]

SmolLM2-135M's FFN output projections (model.layers.{i}.mlp.down_proj, d = 1536)
on CPU, float32. The corpus is ../shared/data/wikitext-2-raw-test.txt; the
script skips with a message when it is absent. Each run computes from scratch
into a temporary cache dir. Wall-clock on a possibly shared machine: compare
figures from one run only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from memedit_cli.lm import models
from memedit_cli.stats.corpus import corpus_tokens
from memedit_cli.stats import CorpusSpec, second_moments

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"
LAYERS = range(2, 7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"skipped: {DATA} is not present (this benchmark needs ../shared/data)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = models.load({"model": {"kind": "default"}, "dtype": "float32", "device": "cpu"})
    names = [f"model.layers.{i}.mlp.down_proj" for i in LAYERS]
    spec = CorpusSpec(str(DATA), args.tokens, args.seq_len)

    t0 = time.perf_counter()
    corpus_tokens(tok, str(DATA), args.tokens)
    t_tok = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        result = second_moments(model, tok, names, spec, "bench", [Path(cache)], batch_size=args.batch_size)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        second_moments(model, tok, names, spec, "bench", [Path(cache)], batch_size=args.batch_size)
        hit = time.perf_counter() - t0
    d = result[names[0]].shape[0]
    print(f"model: SmolLM2-135M (float32, cpu, {torch.get_num_threads()} torch threads), "
          f"modules: {len(names)} x down_proj (layers {LAYERS.start}..{LAYERS.stop - 1}, d={d})")
    print(f"corpus: {DATA.name}, {args.tokens} tokens, seq_len {args.seq_len}, batch {args.batch_size}")
    print(f"tokenizing the corpus: {t_tok:.2f} s")
    print(f"second_moments (compute, incl. tokenizing): {total:.1f} s, {args.tokens / total:.0f} tok/s")
    print(f"second_moments (cache hit): {hit:.3f} s")


if __name__ == "__main__":
    main()
