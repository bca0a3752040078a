"""WISE on the default model (SmolLM2-135M-Instruct), CPU: quality, routing, speed, latency.

    python benchmarks/wise_eval.py quality --data counterfact --facts 10 [--set k=v ...] [--shard 500] [--gates 0]
        the WISE protocol: apply the facts one after another (shards of --shard edits),
        then score all of them, for the merge and the retrieve variant of the same shards
        (and with router=keys, with the relation gate at each of --gates' margins)
    python benchmarks/wise_eval.py quality --paper --data zsre --facts 1000 --shards DIR --only-shard I
        train shard I (of --shard or save_freq edits) alone into DIR and stop; shards are independent, so
        one process per shard runs them side by side; then, without --only-shard, score all of DIR's
        shards (--score-sample N: N facts evenly spaced over the stream; --merge-freq for retrieve)
    python benchmarks/wise_eval.py routing --facts 10,100,1000 [--pool 100] [--margins -0.05,0] [--set ...]
        router=keys only: keys and thresholds for the first N facts (no training: routing does
        not depend on the side memory), then where their edit, rephrase, same-subject and locality
        prompts go, without and with the relation gate (key_relation) at each margin
    python benchmarks/wise_eval.py speed --facts 5
        seconds per edit with the fast loop and the full-model loop, same hparams
    python benchmarks/wise_eval.py latency --facts 4 --set n_iter=5
        generation latency per token, batch 1, for an unrelated and an edited prompt: no edits,
        merge, retrieve with several memories
    python benchmarks/wise_eval.py forget --facts 10,50 --shard 10 --set n_iter=5
        a repository with N facts applied in shards of --shard, then `forget` of one fact of the
        first shard: seconds and segments replayed, per N

Rel/Gen/Loc are `memedit eval`'s (commands/evaluate.py; docs/metrics.md), on
each state built in memory from the same shards. Routing accuracy: edit and
rephrase prompts should use a side memory, locality prompts the main memory
(each prompt with its answer, one at a time). Data: ../shared/data (skipped
with a message when absent).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import common
import torch

from memedit_cli import hparams as hparams_mod
from memedit_cli.commands.evaluate import score
from memedit_cli.lm.arch import arch_for
from memedit_cli.lm.models import input_device
from memedit_cli.methods.wise import WISE

POOL_START = 500  # facts 500.. of a data file: never among the scored ones (--facts <= 500)


def route(model, tok, texts, layer, method):
    """Per text: the memory it used (-1: main)."""
    out = []
    for t in texts:
        method.reset(model)  # a new sequence each
        with torch.no_grad():
            model(**tok([t], return_tensors="pt").to(input_device(model)))
        out.append(int(layer.last_route[0]))
    return out


def routing(model, tok, facts, layer, method):
    """(routing accuracy, edit prompts to a side memory, rephrases to a side memory, locality prompts to the
    main memory, same-subject probes to the main memory)."""
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    r_edit = route(model, tok, [f"{f.prompt} {f.target_new}" for f in facts], layer, method)
    r_reph = route(model, tok, [f"{f.rephrase_prompt} {f.target_new}" for f in facts], layer, method)
    r_loc = route(model, tok, [f"{f.locality_prompt} {f.locality_ground_truth}" for f in facts], layer, method)
    r_spec = route(model, tok, [f"{p.prompt} {p.answer}" for f in facts for p in f.subject_locality], layer, method)
    return (mean([r >= 0 for r in r_edit + r_reph] + [r == -1 for r in r_loc]), mean([r >= 0 for r in r_edit]),
            mean([r >= 0 for r in r_reph]), mean([r == -1 for r in r_loc]), mean([r == -1 for r in r_spec]))


def setup(args):
    common.set_threads()
    _, model, tok, env = common.default_model()
    method = WISE()
    overrides = hparams_mod.parse_set(args.set)
    if getattr(args, "pool", 0):  # held-out locality prompts as the unrelated pool, as EasyEdit's WISE runs do
        held = common.load(args.data, POOL_START + args.pool)[POOL_START:]
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


def attach_all(model, tok, method, hp, shards):
    """The shards attached to `model` as `apply` attaches segments; returns the side-memory layer."""
    for tensors, _ in shards:
        method.attach(model, tensors, hp, tok)
    method.settle(model)  # the side memories are built from all shards once
    return model.get_submodule(arch_for(model.config).mlp_out_at(hp.layer))


def shard_files(args, hp, facts) -> list[Path]:
    """--shards DIR: one safetensors file (and its info) per shard of the run, shard-<i>.safetensors."""
    size = args.shard or hp.save_freq
    return [Path(args.shards) / f"shard-{i // size}.safetensors" for i in range(0, len(facts), size)]


def train_or_load(args, model, tok, env, method, hp, facts):
    """The shards of `facts`: trained here, or with --shards DIR read from the files that `--only-shard i`
    runs wrote there (shards are independent, so separate processes can train them side by side)."""
    from safetensors.torch import load_file, save_file

    if not args.shards:
        return train(model, tok, env, method, hp, facts, args.shard)
    files, size = shard_files(args, hp, facts), args.shard or hp.save_freq
    if args.only_shard is not None:  # train this one shard, write it, and stop
        i = args.only_shard
        [(tensors, info)], per_edit = train(model, tok, env, method, hp, facts[i * size:(i + 1) * size], size)
        files[i].parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(files[i]))
        files[i].with_suffix(".json").write_text(json.dumps({"info": info, "per_edit_s": per_edit}))
        print(f"# shard {i} ({len(info['steps'])} edits) -> {files[i]}, {per_edit:.2f} s/edit", flush=True)
        raise SystemExit(0)
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"--shards: {len(missing)} shard file(s) missing ({missing[0]}): run --only-shard first")
    shards = [(load_file(str(f)), json.loads(f.with_suffix(".json").read_text())) for f in files]
    per_edit = sum(j["per_edit_s"] * len(j["info"]["steps"]) for _, j in shards) / len(facts)
    return [(t, j["info"]) for t, j in shards], per_edit


def quality(args):
    model, tok, env, method, hp = setup(args)
    facts = common.load_probed(args.data, args.facts)
    shards, per_edit = train_or_load(args, model, tok, env, method, hp, facts)
    facts = common.sample(facts, args.score_sample or None)  # evenly over the stream, as lifelong.py scores
    steps = [s for _, info in shards for s in info["steps"]]
    print(f"# layer {hp.layer}, router {hp.router}, α/β/γ {hp.alpha}/{hp.beta}/{hp.gamma}, {args.set}, "
          f"shards of {args.shard or hp.save_freq}; "
          f"{per_edit:.2f} s/edit, mean steps {sum(steps) / len(steps):.1f}", flush=True)
    gates = [(None, None)] + [(True, float(m)) for m in args.gates.split(",") if m] if hp.router == "keys" else \
        [(None, None)]
    for variant, (gate, margin) in [(v, g) for v in args.variants.split(",") for g in gates]:
        hp_v = dataclasses.replace(hp, variant=variant, **({"merge_freq": args.merge_freq} if args.merge_freq else {}))
        if gate:  # the same shards, routed with the relation gate (routing by keys does not change training)
            hp_v = dataclasses.replace(hp_v, key_relation=True, relation_margin=margin)
        with common.restored(model):  # each variant on the base model
            held = {}

            def edit():
                held["layer"] = attach_all(model, tok, method, hp_v, shards)

            s = score(model, tok, facts, edit, lambda: method.reset(model)).scores
            print(json.dumps(s), flush=True)
            layer = held["layer"]
            acc, r_edit, r_reph, r_loc, r_spec = routing(model, tok, facts, layer, method)
            variant_label = variant if not gate else f"{variant}, relation gate {margin:+.2f}"
            print(f"| {args.data} | {len(facts)} | {variant_label} | {len(layer.eps)} | {s['rel']:.2f} | "
                  f"{s['gen']:.2f} | {s['loc']:.2f} | {s['spec']:.2f} | {acc:.2f} ({r_edit:.2f} edit, "
                  f"{r_reph:.2f} rephrase, {r_loc:.2f} loc, {r_spec:.2f} same-subject → main) | {per_edit:.2f} |",
                  flush=True)


def key_routing(args):
    from memedit_cli.methods.wise import router as keyrouter

    args.set = ["router=keys", *args.set]
    model, tok, env, method, hp = setup(args)
    counts = [int(x) for x in str(args.facts).split(",")]
    facts = common.load_probed(args.data, max(counts))
    name = keyrouter.key_module(model, hp)
    device = input_device(model)
    t0 = time.perf_counter()
    keys, rel = keyrouter.prompt_keys(model, tok, facts, name, device)
    tau = keyrouter.key_thresholds(model, tok, keys, hp.irrelevant, name, hp, device)
    floor = [keyrouter.relation_floor(model, tok, f, r, hp.relation_templates, name, device)
             for f, r in zip(facts, rel)]
    key_s = (time.perf_counter() - t0) / len(facts)
    router = keyrouter.KeyRouter(model.get_submodule(name), [])
    keyrouter.modeling.replace_module(model, name, router)

    from memedit_cli.lm.nethook import module_input

    after = arch_for(model.config).layer(hp.key_layer + 1)  # the route is made by then: run no further

    def where(texts):
        out = []
        for t in texts:
            module_input(model, after, **tok([t], return_tensors="pt").to(device))
            out.append(int(router.route[0]))
        return torch.tensor(out)

    print(f"# router=keys, key_layer {hp.key_layer}, key_threshold {hp.key_threshold}, key_margin {hp.key_margin}, "
          f"pool: {'held-out locality prompts' if args.pool else 'sampled from the model'} ({len(hp.irrelevant)}); "
          f"keys, thresholds and relation floors {key_s * 1000:.0f} ms/fact", flush=True)
    print("| data | edits | relation gate | edit → its edit | rephrase → side | rephrase → its edit | "
          "same subject → main | locality → main | routing acc |")
    gates = [None] + [float(m) for m in args.margins.split(",") if m]
    for n in dict.fromkeys(min(c, len(facts)) for c in counts):  # ZsRE's file has 998 usable facts
        shards = [{"keys": keys[i:i + 1], "key_tau": tau[i:i + 1], "rel_keys": rel[i].half().float(),
                   "rel_counts": torch.tensor([len(rel[i])]), "rel_floor": torch.tensor([floor[i]])}
                  for i in range(n)]
        own = torch.arange(n)
        for margin in gates:  # one memory per edit, so a route names the edit whose key matched best
            gate = dataclasses.replace(hp, key_relation=margin is not None, relation_margin=margin or 0.0)
            router.rebuild([[s] for s in shards], gate)
            e = where([f"{f.prompt} {f.target_new}" for f in facts[:n]])
            r = where([f"{f.rephrase_prompt} {f.target_new}" for f in facts[:n]])
            spec = where([f"{p.prompt} {p.answer}" for f in facts[:n] for p in f.subject_locality])
            loc = where([f"{f.locality_prompt} {f.locality_ground_truth}" for f in facts[:n]])
            acc = torch.cat([e == own, r >= 0, spec == -1, loc == -1]).float().mean()
            label = "off" if margin is None else f"margin {margin:+.2f}"
            print(f"| {args.data} | {n} | {label} | {(e == own).float().mean():.3f} | {(r >= 0).float().mean():.3f} | "
                  f"{(r == own).float().mean():.3f} | {(spec == -1).float().mean():.3f} | "
                  f"{(loc == -1).float().mean():.3f} | {acc:.3f} |", flush=True)


def speed(args):
    model, tok, env, method, hp = setup(args)
    facts = common.load("counterfact", args.facts)
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
    model, tok, env, method, hp = setup(args)
    facts = common.load("counterfact", args.facts)
    prompts = {"unrelated prompt": "The capital of France is", "edited prompt": facts[0].prompt}

    def per_token(text):
        ids = tok([text], return_tensors="pt").to(input_device(model))
        method.reset(model)  # a new sequence, as `ask` starts one
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
                keep(f"{what}, no edits", text)  # the base model: no wrapper at all
            with common.restored(model):
                layer = attach_all(model, tok, method, dataclasses.replace(hp, variant=variant, merge_freq=1), shards)
                for what, text in prompts.items():
                    keep(f"{what}, {variant}, {len(layer.eps)} memories", text)
                    routes[(what, variant)] = layer.last_route.tolist()
    print(f"# router {hp.router}, layer {hp.layer}; routes of the last token: {routes}")
    for name, s in best.items():
        base = best[f"{name.split(',')[0]}, no edits"]
        print(f"  {name}: {s * 1000:.1f} ms/token ({s / base - 1:+.1%})")


def forget_timing(args):
    sets = [x for kv in args.set for x in ("--set", kv)]
    for n in (int(x) for x in str(args.facts).split(",")):
        facts = common.load(args.data, n)
        with tempfile.TemporaryDirectory() as work:
            common.memedit(work, "init")
            path = common.write_facts(facts, Path(work) / "facts.jsonl")
            apply_s, _ = common.memedit(work, "apply", path, "--method", "wise",
                                        *(["--batch-size", args.shard] if args.shard else []), *sets)
            shards = len(json.loads(common.memedit(work, "show", "HEAD", "--json")[1])["segments"])
            objects = sum(p.stat().st_size for p in Path(work, ".memedit", "objects").rglob("*") if p.is_file())
            rec = json.loads(common.memedit(work, "forget", facts[0].id, "--json")[1])
            shown = json.loads(common.memedit(work, "show", rec["revision"], "--json")[1])
            print(f"  {n} facts in {shards} shard(s) (apply {apply_s:.0f} s, objects {objects / n / 1e6:.2f} MB/fact): "
                  f"forget 1 fact of the first shard {shown['timings']['total_s']:.1f} s, "
                  f"{shown['timings']['replayed_segments']} segment(s) replayed", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["quality", "speed", "latency", "forget", "routing"])
    ap.add_argument("--data", choices=list(common.FILES), default="counterfact")
    ap.add_argument("--facts", default="10", help="how many facts (forget, routing: a comma-separated list)")
    ap.add_argument("--shard", type=int, default=0, help="edits per shard (0: the resolved save_freq)")
    ap.add_argument("--variants", default="merge,retrieve")
    ap.add_argument("--set", action="append", default=[], help="hparam override k=v (repeatable)")
    ap.add_argument("--paper", action="store_true",
                    help="start from WISE's own settings (activation router, block 25, shards of 500, merge) "
                         "instead of memedit's defaults for this model")
    ap.add_argument("--gates", default="",
                    help="quality, router=keys: also score the same shards with the relation gate at these margins")
    ap.add_argument("--margins", default="-0.05,0,0.05",
                    help="routing: the relation gate's margins to try besides no gate (comma-separated)")
    ap.add_argument("--pool", type=int, default=0,
                    help="use the locality prompts of facts 500..500+N of the same file as the unrelated pool "
                         "(0: the model-generated default)")
    ap.add_argument("--shards", default="",
                    help="quality: a folder of shard files; with --only-shard I train shard I alone into it and stop, "
                         "without it read every shard from it and score")
    ap.add_argument("--only-shard", type=int, default=None, metavar="I",
                    help="quality --shards DIR: train shard I (0-based) alone, write it into DIR, and stop")
    ap.add_argument("--score-sample", type=int, default=0,
                    help="quality: score N facts evenly spaced over the stream instead of all (0: all)")
    ap.add_argument("--merge-freq", type=int, default=0,
                    help="quality: retrieve groups shards holding this many edits into one memory (0: the hparam)")
    args = ap.parse_args()
    if args.only_shard is not None and not (args.mode == "quality" and args.shards):
        ap.error("--only-shard trains one shard into a --shards folder: give quality --shards DIR")
    if args.mode not in ("forget", "routing"):
        args.facts = int(args.facts)
    {"quality": quality, "speed": speed, "latency": latency, "forget": forget_timing,
     "routing": key_routing}[args.mode](args)


if __name__ == "__main__":
    main()
