"""WISE on the default model (SmolLM2-135M-Instruct), CPU: quality, routing, speed, latency.

    python benchmarks/wise_eval.py quality --data counterfact --facts 10 [--set k=v ...] [--shard 500]
        the WISE protocol: apply the facts one after another (shards of --shard edits),
        then score all of them, for the merge and the retrieve variant of the same shards
    python benchmarks/wise_eval.py routing --facts 10,100,500 [--pool 100] [--set key_threshold=0.7 ...]
        router=keys only: keys and thresholds for the first N facts (no training: routing does
        not depend on the side memory), then where their edit, rephrase and locality prompts go
    python benchmarks/wise_eval.py speed --facts 5
        seconds per edit with the fast loop and the full-model loop, same hparams
    python benchmarks/wise_eval.py latency --facts 4 --set n_iter=5
        generation latency per token, batch 1, for an unrelated and an edited prompt: no edits,
        merge, retrieve with several memories
    python benchmarks/wise_eval.py forget --facts 10,50 --shard 10 --set n_iter=5
        a repository with N facts applied in shards of --shard, then `forget` of one fact of the
        first shard: seconds and segments replayed, per N

Rel/Gen/Loc are EasyEdit's teacher-forced token accuracies, scored one prompt
at a time (WISE routes per row over all its positions, so padding would
count). Routing accuracy: edit and rephrase prompts should use a side memory,
locality prompts the main memory. Data: ../shared/data (skipped with a
message when absent).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from memedit_cli import hparams as hparams_mod
from memedit_cli.lm import models
from memedit_cli.lm.arch import arch_for
from memedit_cli.methods.base import Env
from memedit_cli.methods.wise import WISE
from memedit_cli.methods.wise.side import WISELayer
from memit_eval import FILES, load, token_acc


POOL_START = 500  # facts 500.. of a data file: never among the scored ones (--facts <= 500)


def route(model, tok, texts, layer):
    """Per text: the memory it used (-1: main)."""
    out = []
    for t in texts:
        with torch.no_grad():
            model(**tok([t], return_tensors="pt"))
        out.append(int(layer.last_route[0]))
    return out


def evaluate(model, tok, facts, base_loc, layer):
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    rel, _ = token_acc(model, tok, [f.prompt for f in facts], [f.target_new for f in facts], batch=1)
    gen, _ = token_acc(model, tok, [f.rephrase_prompt for f in facts], [f.target_new for f in facts], batch=1)
    _, loc_pred = token_acc(model, tok, [f.locality_prompt for f in facts], [f.locality_ground_truth for f in facts], batch=1)
    loc = [(a == b).float().mean().item() for a, b in zip(loc_pred, base_loc)]
    r_edit = route(model, tok, [f"{f.prompt} {f.target_new}" for f in facts], layer)
    r_reph = route(model, tok, [f"{f.rephrase_prompt} {f.target_new}" for f in facts], layer)
    r_loc = route(model, tok, [f"{f.locality_prompt} {f.locality_ground_truth}" for f in facts], layer)
    routing = mean([r >= 0 for r in r_edit + r_reph] + [r == -1 for r in r_loc])
    return mean(rel), mean(gen), mean(loc), routing, mean([r >= 0 for r in r_edit]), mean([r == -1 for r in r_loc])


def setup(args):
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model, tok = models.load({"model": {"kind": "default"}, "dtype": "float32", "device": "cpu"})
    key = json.loads((models.default_model_dir() / "memedit-converted.json").read_text())["weights_sha256"]
    env = Env([models.user_cache()], key, lambda: (model, tok), lambda: (model, tok))
    method = WISE()
    overrides = hparams_mod.parse_set(args.set)
    if getattr(args, "pool", 0):  # held-out locality prompts as the unrelated pool, as EasyEdit's WISE runs do
        held = load(args.data, POOL_START + args.pool)[POOL_START:]
        overrides["irrelevant"] = [f"{f.locality_prompt} {f.locality_ground_truth}" for f in held]
        overrides["n_irrelevant"] = len(held)
    start = method.paper_hparams(model) if getattr(args, "paper", False) else method.default_hparams(model)
    hp = method.resolve(hparams_mod.resolve(start, overrides), model, tok, env)
    return model, tok, env, method, hp


def train(model, tok, env, method, hp, facts, shard):
    """Shards of `shard` facts, computed in order (each on the base: shards are independent). -> [(tensors, info)]."""
    out, t0 = [], time.perf_counter()
    shard = shard or hp.save_freq
    for i in range(0, len(facts), shard):
        out.append(method.compute(model, tok, facts[i:i + shard], hp, 0, env))
    return out, (time.perf_counter() - t0) / len(facts)


def detach(model):
    """The base model again: every WISELayer and KeyRouter replaced by the module it wraps."""
    from memedit_cli.methods.wise.modeling_memedit_wise import replace_module
    from memedit_cli.methods.wise.router import KeyRouter

    for name, module in list(model.named_modules()):
        if isinstance(module, (WISELayer, KeyRouter)):
            replace_module(model, name, module.base)


def attach_all(model, method, hp, shards):
    detach(model)
    for tensors, _ in shards:
        method.attach(model, tensors, hp)
    return model.get_submodule(arch_for(model.config).mlp_out_at(hp.layer))


def quality(args):
    model, tok, env, method, hp = setup(args)
    facts = load(args.data, args.facts)
    _, base_loc = token_acc(model, tok, [f.locality_prompt for f in facts], [f.locality_ground_truth for f in facts], batch=1)
    shards, per_edit = train(model, tok, env, method, hp, facts, args.shard)
    steps = [s for _, info in shards for s in info["steps"]]
    print(f"# layer {hp.layer}, router {hp.router}, α/β/γ {hp.alpha}/{hp.beta}/{hp.gamma}, {args.set}, "
          f"shards of {args.shard or hp.save_freq}; "
          f"{per_edit:.2f} s/edit, mean steps {sum(steps) / len(steps):.1f}", flush=True)
    for variant in args.variants.split(","):
        hp_v = dataclasses.replace(hp, variant=variant)
        layer = attach_all(model, method, hp_v, shards)
        rel, gen, loc, routing, r_edit, r_loc = evaluate(model, tok, facts, base_loc, layer)
        print(f"| {args.data} | {len(facts)} | {variant} | {len(layer.memories)} | {rel:.2f} | {gen:.2f} | {loc:.2f} | "
              f"{routing:.2f} ({r_edit:.2f} edit, {r_loc:.2f} loc) | {per_edit:.2f} |", flush=True)


def key_routing(args):
    from memedit_cli.methods.wise import router as keyrouter

    args.set = ["router=keys", *args.set]
    model, tok, env, method, hp = setup(args)
    counts = [int(x) for x in str(args.facts).split(",")]
    facts = load(args.data, max(counts))
    name = keyrouter.key_module(model, hp)
    t0 = time.perf_counter()
    keys = keyrouter.edit_keys(model, tok, facts, name, "cpu")
    tau = keyrouter.key_thresholds(model, tok, keys, hp.irrelevant, name, hp, "cpu")
    key_s = (time.perf_counter() - t0) / len(facts)
    router = keyrouter.KeyRouter(model.get_submodule(name), [])
    keyrouter.modeling.replace_module(model, name, router)

    def where(texts):
        out = []
        for t in texts:
            with torch.no_grad():
                model(**tok([t], return_tensors="pt"))
            out.append(int(router.route[0]))
        return torch.tensor(out)

    print(f"# router=keys, key_layer {hp.key_layer}, key_threshold {hp.key_threshold}, key_margin {hp.key_margin}, "
          f"pool: {'held-out locality prompts' if args.pool else 'sampled from the model'} ({len(hp.irrelevant)}); "
          f"keys and thresholds {key_s * 1000:.0f} ms/fact")
    print("| data | edits | edit → side | rephrase → side | rephrase → its own edit | locality → main | routing acc |")
    for n in counts:
        # one memory per edit, so a route names the edit whose key matched best
        router.rebuild([[(keys[i:i + 1], tau[i:i + 1])] for i in range(n)])
        own = torch.arange(n)
        e = where([f"{f.prompt} {f.target_new}" for f in facts[:n]])
        r = where([f"{f.rephrase_prompt} {f.target_new}" for f in facts[:n]])
        loc = where([f"{f.locality_prompt} {f.locality_ground_truth}" for f in facts[:n]])
        acc = torch.cat([e >= 0, r >= 0, loc == -1]).float().mean()
        print(f"| {args.data} | {n} | {(e >= 0).float().mean():.2f} | {(r >= 0).float().mean():.2f} | "
              f"{(r == own).float().mean():.2f} | {(loc == -1).float().mean():.2f} | {acc:.3f} |", flush=True)


def speed(args):
    model, tok, env, method, hp = setup(args)
    facts = load("counterfact", args.facts)
    res = {}
    for fast in (True, False):
        hp_f = dataclasses.replace(hp, fast_path=fast)
        shards, per_edit = train(model, tok, env, method, hp_f, facts, len(facts))
        res[fast] = (per_edit, shards[0][1], shards[0][0]["values"])
    (fs, fi, fv), (ss, si, sv) = res[True], res[False]
    print(f"WISE, {len(facts)} edits in one shard, layer {hp.layer}, {hp.n_iter} steps at most:")
    print(f"  fast loop: {fs:.2f} s/edit, steps {fi['steps']}, final losses {fi['loss_last']}")
    print(f"  full-model loop: {ss:.2f} s/edit, steps {si['steps']}, final losses {si['loss_last']}")
    print(f"  ratio full/fast: {ss / fs:.2f}; max |D_fast - D_full| = {(fv - sv).abs().max():.2e}")


def latency(args):
    from memedit_cli.methods.wise import router

    model, tok, env, method, hp = setup(args)
    facts = load("counterfact", args.facts)
    prompts = {"unrelated prompt": "The capital of France is", "edited prompt": facts[0].prompt}

    def per_token(text):
        ids = tok([text], return_tensors="pt")
        router.reset(model)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
        return (time.perf_counter() - t0) / 32

    shards, _ = train(model, tok, env, method, hp, facts, max(1, len(facts) // 4))
    per_token(prompts["unrelated prompt"])  # warm-up
    best: dict = {}

    def keep(label, text):
        best[label] = min(best.get(label, float("inf")), per_token(text))

    routes = {}
    for _ in range(5):  # interleaved rounds, best of each: the machine is shared and noisy
        for variant in ("merge", "retrieve"):
            for what, text in prompts.items():
                detach(model)  # the base model: no wrapper at all
                keep(f"{what}, no edits", text)
                layer = attach_all(model, method, dataclasses.replace(hp, variant=variant, merge_freq=1), shards)
                keep(f"{what}, {variant}, {len(layer.memories)} memories", text)
                routes[(what, variant)] = layer.last_route.tolist()
    print(f"# router {hp.router}, layer {hp.layer}; routes of the last token: {routes}")
    for name, s in best.items():
        base = best[f"{name.split(',')[0]}, no edits"]
        print(f"  {name}: {s * 1000:.1f} ms/token ({s / base - 1:+.1%})")


def forget_timing(args):
    import subprocess
    import tempfile

    memedit = [os.path.join(os.path.dirname(os.path.abspath(__import__("sys").executable)), "memedit")]
    sets = [x for kv in args.set for x in ("--set", kv)]
    for n in (int(x) for x in str(args.facts).split(",")):
        facts = load(args.data, n)
        with tempfile.TemporaryDirectory() as work:
            run = lambda *a: subprocess.run([*memedit, "-C", work, "-q", *a], check=True,  # noqa: E731
                                            capture_output=True, text=True).stdout
            run("init")
            path = os.path.join(work, "facts.jsonl")
            with open(path, "w") as fh:
                fh.writelines(json.dumps(f.to_json()) + "\n" for f in facts)
            t0 = time.perf_counter()
            run("apply", path, "--method", "wise", *(["--batch-size", str(args.shard)] if args.shard else []), *sets)
            apply_s = time.perf_counter() - t0
            shards = len(json.loads(run("show", "HEAD", "--json"))["segments"])
            objects = sum(p.stat().st_size for p in Path(work, ".memedit", "objects").rglob("*") if p.is_file())
            rec = json.loads(run("forget", facts[0].id, "--json"))
            shown = json.loads(run("show", rec["revision"], "--json"))
            print(f"  {n} facts in {shards} shard(s) (apply {apply_s:.0f} s, objects {objects / n / 1e6:.2f} MB/fact): "
                  f"forget 1 fact of the first "
                  f"shard {shown['timings']['total_s']:.1f} s, {shown['timings']['replayed_segments']} segment(s) replayed",
                  flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["quality", "speed", "latency", "forget", "routing"])
    ap.add_argument("--data", choices=list(FILES), default="counterfact")
    ap.add_argument("--facts", default="10", help="how many facts (forget, routing: a comma-separated list)")
    ap.add_argument("--shard", type=int, default=0, help="edits per shard (0: the resolved save_freq)")
    ap.add_argument("--variants", default="merge,retrieve")
    ap.add_argument("--set", action="append", default=[], help="hparam override k=v (repeatable)")
    ap.add_argument("--paper", action="store_true",
                    help="start from WISE's own settings (activation router, block 25, shards of 500, merge) "
                         "instead of memedit's defaults for this model")
    ap.add_argument("--pool", type=int, default=0,
                    help="use the locality prompts of facts 500..500+N of the same file as the unrelated pool "
                         "(0: the model-generated default)")
    args = ap.parse_args()
    if args.mode not in ("forget", "routing"):
        args.facts = int(args.facts)
    {"quality": quality, "speed": speed, "latency": latency, "forget": forget_timing,
     "routing": key_routing}[args.mode](args)


if __name__ == "__main__":
    main()
