"""What `router=keys` costs `ask` as edits accumulate: ms per generated token with a KeyRouter of N keys.

    python benchmarks/router_cost.py [--edits 100,1000,10000] [--words 7] [--threads 1] [--before]

The default model, CPU; block 3's FFN output projection (WISE's default `key_layer`
on SmolLM2-135M) wrapped by a KeyRouter holding N random keys, each with `--words`
relation-word rows (the gate; ZsRE prompts leave about 7 words outside the subject)
and thresholds no prompt reaches, so every row stays in the main memory and what is
timed is the routing alone: its cost per token does not depend on the memories. 16
greedy tokens of a ZsRE-like prompt, best of 5 rounds, the base model and each router
interleaved in one process, so the ratio is what to read on a shared machine.
`--before` adds the gate as it was computed until 2026-12-03 (every key's word rows,
normalized at every call), to show what computing it once and for candidate keys saves.
"""

from __future__ import annotations

import argparse
import time

import common
import torch

from memedit_cli.lm.arch import arch_for
from memedit_cli.methods.wise.modeling_memedit_wise import KeyRouter

TOKENS = 16
KEY_LAYER = 3


class Before(KeyRouter):
    """The relation gate for every key, the keys and word rows normalized at each call (the earlier code)."""

    def margins(self, x):
        a = torch.nn.functional.normalize(x.float(), dim=-1)
        per_key = (a @ torch.nn.functional.normalize(self.keys.float(), dim=-1).T - self.tau.float()).amax(1)
        rows = (a @ torch.nn.functional.normalize(self.rel_keys.float(), dim=-1).T).amax(1)  # (B, M)
        owner, n = self.rel_owner.long(), self.keys.shape[0]
        total = rows.new_zeros(rows.shape[0], n).index_add_(1, owner, rows)
        count = rows.new_zeros(n).index_add_(0, owner, torch.ones_like(owner, dtype=rows.dtype))
        per_key = torch.minimum(per_key, total / count.clamp(min=1) - self.rel_tau.float())
        B = per_key.shape[0]
        return per_key.new_full((B, len(self.counts)), float("-inf")).scatter_reduce(
            1, self.owner.expand(B, -1), per_key, "amax").T


def router(base, n: int, words: int, cls=KeyRouter) -> KeyRouter:
    g = torch.Generator().manual_seed(0)
    r = cls(base, [1] * n, relation=n * words)
    d_in = r.keys.shape[1]
    r.keys = torch.randn(n, d_in, generator=g)
    r.tau = torch.full((n,), 2.0)  # a cosine never exceeds 1: no row is routed
    r.rel_keys = torch.randn(n * words, d_in, generator=g)
    r.rel_owner = torch.arange(n, dtype=torch.int32).repeat_interleave(words)
    r.rel_tau = torch.zeros(n)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", default="100,1000,10000")
    ap.add_argument("--words", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--before", action="store_true", help="also time the gate as computed before 2026-12-03")
    args = ap.parse_args()
    common.set_threads(args.threads)
    _, model, tok, _ = common.default_model()
    name = arch_for(model.config).mlp_out_at(KEY_LAYER)
    parent_name, attr = name.rsplit(".", 1)
    parent = model.get_submodule(parent_name)
    base = getattr(parent, attr)
    enc = tok("What is the product made by UniFirst?", return_tensors="pt")

    def once(module) -> float:
        setattr(parent, attr, module)
        if isinstance(module, KeyRouter):
            module.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
                           pad_token_id=tok.pad_token_id)
        return (time.perf_counter() - t0) * 1000 / TOKENS

    sizes = [int(n) for n in args.edits.split(",")]
    kinds = [("now", KeyRouter)] + ([("before", Before)] if args.before else [])
    rows = [(kind, n) for kind, _ in kinds for n in sizes]
    routers = [router(base, n, args.words, cls) for _, cls in kinds for n in sizes]
    rounds = [[once(base)] + [once(r) for r in routers] for _ in range(5)]
    setattr(parent, attr, base)
    best = [min(r[i] for r in rounds) for i in range(len(routers) + 1)]
    print("| gate | edits (keys) | relation rows | ms/token | base ms/token | overhead |\n|---|---|---|---|---|---|")
    for (kind, n), ms in zip(rows, best[1:]):
        print(f"| {kind} | {n} | {n * args.words} | {ms:.1f} | {best[0]:.1f} | {100 * (ms / best[0] - 1):+.0f}% |")


if __name__ == "__main__":
    main()
