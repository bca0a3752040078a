"""Speed of `second_moments` on the default model: layers 2..6 over 50k tokens of WikiText-2 (test split).

    python benchmarks/stats_speed.py [--tokens 50000] [--batch-size 8] [--seq-len 256] [--threads N]

SmolLM2-135M's FFN output projections (model.layers.{i}.mlp.down_proj, d = 1536),
float32, on the device `memedit init` picks (CPU here). The corpus is
../shared/data/wikitext-2-raw-test.txt; the script skips with a message when it
is absent. Measured: tokenizing the corpus, then second_moments from scratch into
a temporary cache dir (tokens per second), then the same call again (a cache hit).
Wall-clock on a possibly shared machine: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common
import torch

from memedit_cli.lm.arch import arch_for
from memedit_cli.stats import CorpusSpec, second_moments
from memedit_cli.stats.corpus import corpus_tokens

LAYERS = range(2, 7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    data = common.data_path(common.WIKITEXT)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, model, tok, env = common.default_model()
    names = [arch_for(model.config).mlp_out_at(i) for i in LAYERS]
    spec = CorpusSpec(str(data), args.tokens, args.seq_len)

    t0 = time.perf_counter()
    corpus_tokens(tok, str(data), args.tokens)
    t_tok = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as cache:  # from scratch: not the repository's or the user's cache
        t0 = time.perf_counter()
        result = second_moments(model, tok, names, spec, env.model_key, [Path(cache)], batch_size=args.batch_size)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        second_moments(model, tok, names, spec, env.model_key, [Path(cache)], batch_size=args.batch_size)
        hit = time.perf_counter() - t0
    d = result[names[0]].shape[0]
    print(f"model: SmolLM2-135M (float32, {model.device}, {torch.get_num_threads()} torch threads), "
          f"modules: {len(names)} x down_proj (layers {LAYERS.start}..{LAYERS.stop - 1}, d={d})")
    print(f"corpus: {data.name}, {args.tokens} tokens, seq_len {args.seq_len}, batch {args.batch_size}")
    print(f"tokenizing the corpus: {t_tok:.2f} s")
    print(f"second_moments (compute, incl. tokenizing): {total:.1f} s, {args.tokens / total:.0f} tok/s")
    print(f"second_moments (cache hit): {hit:.3f} s")


if __name__ == "__main__":
    main()
