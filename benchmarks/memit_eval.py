"""MEMIT on the default model (SmolLM2-135M-Instruct), CPU: quality and speed.

    python benchmarks/memit_eval.py speed --facts 10
        seconds per fact of z with the fast path and with the full-model loop (same hparams)
    python benchmarks/memit_eval.py quality --data counterfact --facts 100 --batch 100 \
        [--layers 2,3,4,5,6] [--lam 700,2093] [--corpus FILE|samples] [--tokens 50000,200000] [--null-space]
        [--set v_num_grad_steps=15 ...] [--sweep null_space_threshold=0.3,1 ...]
        apply all facts (batches of --batch, one after another), then score all of them
    python benchmarks/memit_eval.py forget --facts 10,100,1000 --batch 100 [--set v_num_grad_steps=1]
        `memedit forget` of one fact of the last and of the first batch, through the CLI

Scores are EasyEdit's teacher-forced token accuracies: Rel on the prompt, Gen
on the rephrase, Loc = argmax agreement with the unedited model on the
locality prompt. Several λ values reuse one z computation (z does not depend
on λ or C₀; the statistics' cost is "stats s", outside s/fact). Data: ../shared/data (skipped with a message when absent).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from memedit_cli import hparams as hparams_mod
from memedit_cli.lm import models
from memedit_cli.facts import Fact, load_facts
from memedit_cli.methods.base import Env
from memedit_cli.methods.memit import MEMIT
from memedit_cli.methods.memit.compute_z import compute_z
from memedit_cli.lm.tokens import prompt_target_batch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = {"counterfact": "counterfact-edit-1k.json", "zsre": "zsre-mend-train-1k.json"}


def load(name: str, n: int) -> list[Fact]:
    path = DATA / FILES[name]
    if not path.exists():
        sys.exit(f"skipped: {path} is not present (this benchmark reads ../shared/data)")
    raw = json.loads(path.read_text())
    if name == "zsre":  # two records have an empty target; the parser refuses them, as it should
        raw = [r for r in raw if r.get("alt", "").strip()]
    tmp = Path(tempfile.mkdtemp()) / "facts.json"
    tmp.write_text(json.dumps(raw[:n]))
    return load_facts(tmp)


def token_acc(model, tok, prompts, targets, batch=32):
    """Per example: fraction of target tokens whose teacher-forced argmax is right, and the argmax rows."""
    accs, preds = [], []
    for i in range(0, len(prompts), batch):
        ids, attn, labels = prompt_target_batch(tok, prompts[i:i + batch], targets[i:i + batch], "cpu")
        with torch.no_grad():
            pred = model(input_ids=ids, attention_mask=attn).logits.argmax(-1)
        mask = labels != -100
        accs += (((pred == labels) & mask).sum(1) / mask.sum(1)).tolist()
        preds += [pred[b][mask[b]] for b in range(len(pred))]
    return accs, preds


def scores(model, tok, facts, base_loc):
    rel, _ = token_acc(model, tok, [f.prompt for f in facts], [f.target_new for f in facts])
    gen, _ = token_acc(model, tok, [f.rephrase_prompt for f in facts], [f.target_new for f in facts])
    _, loc_pred = token_acc(model, tok, [f.locality_prompt for f in facts], [f.locality_ground_truth for f in facts])
    loc = [(a == b).float().mean().item() for a, b in zip(loc_pred, base_loc)]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(rel), mean(gen), mean(loc)


def speed(args, model, tok, env):
    facts = load("counterfact", args.facts)
    method = MEMIT()
    hp = method.resolve(method.default_hparams(model), model, tok, env)
    ways = {"fast path (blocks above L, positions from the subject on)": (True, True),
            "blocks above L, every position": (True, False),
            "full-model loop": (False, False)}
    out = {}
    for name, (fast, cache) in ways.items():
        t0 = time.perf_counter()
        z, info = compute_z(model, tok, facts, dataclasses.replace(hp, z_fast_path=fast), hp.layers[-1],
                            hp.context_templates, "cpu", prefix_cache=cache)
        out[name] = (time.perf_counter() - t0) / len(facts), info, z
    print(f"z for {len(facts)} facts, one batch, layers {list(hp.layers)}, {hp.v_num_grad_steps} steps at most:")
    first = next(iter(out.values()))
    for name, (s, info, z) in out.items():
        print(f"  {name}: {s:.2f} s/fact (x{s / first[0]:.2f} of the fast path), {info}, "
              f"max |z - z_fast| = {(z - first[2]).abs().max():.2e}")


def quality(args, model, tok, env):
    facts = load(args.data, args.facts)
    method = MEMIT()
    hp = method.default_hparams(model)
    changes = {"null_space": args.null_space}
    if args.layers:
        changes["layers"] = tuple(int(x) for x in args.layers.split(","))
    hp = hparams_mod.resolve(dataclasses.replace(hp, **changes), hparams_mod.parse_set(args.set))
    hp = method.resolve(hp, model, tok, env)
    print(f"# --set {' '.join(args.set) or '(none)'}", flush=True)
    _, base_loc = token_acc(model, tok, [f.locality_prompt for f in facts], [f.locality_ground_truth for f in facts])
    lams = [float(x) for x in args.lam.split(",")] if args.lam else [hp.mom2_update_weight]
    batches = [facts[i:i + args.batch] for i in range(0, len(facts), args.batch)]
    zs: dict = {}
    variants = [(c, t, lam) for c in args.corpus.split(",") for t in args.tokens for lam in lams]
    if args.variants:  # explicit CORPUS:TOKENS:LAMBDA triples instead of the cross product
        variants = [(c, int(t), float(lam)) for c, t, lam in (v.rsplit(":", 2) for v in args.variants.split(";"))]
    sweep = [dict(zip(keys, vals)) for keys, grid in [_sweep_grid(args.sweep)] for vals in itertools.product(*grid)]
    for (corpus, tokens, lam), extra in itertools.product(variants, sweep):
        hp_l = dataclasses.replace(hp, mom2_update_weight=lam, mom2_n_tokens=tokens,
                                   mom2_corpus="" if corpus == "samples" else corpus)
        hp_l = hparams_mod.resolve(hp_l, extra)
        t0 = time.perf_counter()
        method.stats(hp_l, env, model)
        stats_s = time.perf_counter() - t0
        originals = {n: p.detach().clone() for n, p in model.named_parameters()}
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            reuse = {"facts": [f.id for f in batch], "tensors": {"z": zs[i]}} if i in zs and len(batches) == 1 else None
            tensors, info = method.compute(model, tok, batch, hp_l, 0, env, reuse)
            zs.setdefault(i, tensors["z"])
            method.attach(model, tensors, hp_l)
        edit_s = (time.perf_counter() - t0) / len(facts)
        rel, gen, loc = scores(model, tok, facts, base_loc)
        nbytes = sum(t.numel() * t.element_size() for k, t in tensors.items() if k != "z") / len(batches[-1])
        print(f"| {args.data} | {len(facts)} | {len(batches)}x{args.batch} | {list(hp.layers)} | {lam:g} | "
              f"{'yes' if args.null_space else 'no'} | {Path(corpus).name}:{tokens} | {rel:.2f} | {gen:.2f} | {loc:.2f} | "
              f"{edit_s:.2f} | {stats_s:.0f} | {nbytes / 1024:.1f} KiB | {' '.join(f'{k}={v}' for k, v in extra.items())} |",
              flush=True)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(originals[n])


def forget_timing(args):
    """Apply N facts through the CLI (batches of --batch), then time `memedit forget` of one
    fact of the last batch (re-solve from stored z) and of the first (later batches replayed)."""
    import subprocess

    memedit = [str(Path(sys.executable).with_name("memedit"))]
    sets = [x for kv in args.set for x in ("--set", kv)]
    for n in args.facts_list:
        facts = load(args.data, n)
        with tempfile.TemporaryDirectory() as work:
            run = lambda *a: subprocess.run([*memedit, "-C", work, "-q", *a], check=True,  # noqa: E731
                                            capture_output=True, text=True).stdout
            run("init")
            path = Path(work) / "facts.jsonl"
            path.write_text("".join(json.dumps(f.to_json()) + "\n" for f in facts))
            t0 = time.perf_counter()
            run("apply", str(path), "--method", "memit", "--batch-size", str(args.batch), *sets)
            apply_s = time.perf_counter() - t0
            size = min(args.batch, n)
            last = facts[(n - 1) // size * size]  # a fact of the last batch
            for label, fact in (("last", last), ("first", facts[0])):
                if label == "first" and (fact is last or n > args.first_max):
                    continue
                t = json.loads(run("forget", fact.id, "--json"))["timings"]
                print(f"| {n} | {-(-n // size)}x{size} | {apply_s:.0f} | {label} | {t['total_s']:.1f} | "
                      f"{t['replayed_segments']} |", flush=True)
                run("checkout", "HEAD~1")  # back to all N facts for the next measurement


def _sweep_grid(items: list[str]):
    """["null_space_threshold=0.3,1", ...] -> (keys, [values of each key]); one batch reuses z across them."""
    keys, grid = [], []
    for item in items:
        key, _, values = item.partition("=")
        keys.append(key)
        grid.append([hparams_mod.parse_set([f"{key}={v}"])[key] for v in values.split(",")])
    return keys, grid


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["speed", "quality", "forget"])
    ap.add_argument("--data", choices=list(FILES), default="counterfact")
    ap.add_argument("--facts", default="10", help="how many facts (forget: a comma-separated list)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--layers", default="")
    ap.add_argument("--lam", default="", help="comma-separated λ values (default: the resolved default)")
    ap.add_argument("--corpus", default="samples", help="comma-separated: 'samples' (the default corpus) or text files")
    ap.add_argument("--tokens", type=lambda v: [int(x) for x in v.split(",")], default=[100_000],
                    help="comma-separated token counts for C₀ (z is computed once for all)")
    ap.add_argument("--null-space", action="store_true")
    ap.add_argument("--first-max", type=int, default=100,
                    help="forget: time forgetting a fact of the first batch only up to this many facts")
    ap.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                    help="hyperparameter values to cross (repeatable); with one batch, z is computed once for all")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a MEMIT hyperparameter (repeatable)")
    ap.add_argument("--variants", default="", help="CORPUS:TOKENS:LAMBDA;... (overrides --corpus/--tokens/--lam)")
    args = ap.parse_args()
    args.facts_list = [int(x) for x in args.facts.split(",")]
    if args.mode != "forget" and len(args.facts_list) > 1:
        ap.error(f"{args.mode} takes one --facts count, got {args.facts}")
    args.facts = args.facts_list[0]
    if args.mode == "forget":
        print("| facts | batches | apply s | forgotten fact's batch | forget s | segments replayed |")
        print("|---|---|---|---|---|---|")
        return forget_timing(args)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model, tok = models.load({"model": {"kind": "default"}, "dtype": "float32", "device": "cpu"})
    key = json.loads((models.default_model_dir() / "memedit-converted.json").read_text())["weights_sha256"]
    env = Env([models.user_cache()], key, lambda: (model, tok), lambda: (model, tok))
    if args.mode == "speed":
        speed(args, model, tok, env)
    else:
        print("| data | facts | batches | layers | λ | null space | C₀ corpus:tokens | Rel | Gen | Loc | s/fact | stats s | bytes/fact | swept |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        quality(args, model, tok, env)


if __name__ == "__main__":
    main()
