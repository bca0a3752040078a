"""MEMIT on the default model (SmolLM2-135M-Instruct), CPU: quality and speed.

    python benchmarks/memit_eval.py speed --facts 10
        seconds per fact of z with the fast path and with the full-model loop (same hparams)
    python benchmarks/memit_eval.py passes --facts 40 --z-batch 10,0
        z of one batch optimized in passes of each --z-batch (smallest first; 0: all facts together): seconds
        per fact, the process's peak resident memory after each (it only grows, hence smallest first), and
        max |z - z of the first|
    python benchmarks/memit_eval.py quality --data counterfact --facts 100 --batch 100 \
        [--layers 2,3,4,5,6] [--lam 700,2093] [--corpus FILE|samples] [--tokens 50000,200000] [--null-space]
        [--set v_num_grad_steps=15 ...] [--sweep update=memit,sequential ...] [--reuse-z]
        [--z-dir DIR [--z-chunk 100]] [--score-sample N] [--solves S]
        apply all facts (batches of --batch, one after another), then score all of them (or N evenly spaced);
        --z-chunk: DIR's z files hold that many facts each (one batch of 1000 from `zs --batch 100`'s files);
        --solves S: each batch solved S times toward the same z, each solve on the state the last left (not
        MEMIT's: an experiment on whether a second solve closes the residual the first left)
    python benchmarks/memit_eval.py zs --data counterfact --facts 1000 --batch 100 --z-dir DIR [--reverse]
        z of every batch on the unedited model, saved in DIR for `quality --z-dir DIR`; a second
        process with --reverse works from the last batch back, each skipping the batches already
        saved, and a killed run resumes from them
    python benchmarks/memit_eval.py resolve --data counterfact --facts 1000 --batch 100 --z-dir DIR \
        --set update=sequential [--exact]
        a repository of one apply record per batch, each batch's z read from DIR (no gradient steps), then
        forget of the first fact (on copies): --resolve and --resolve --stored-keys (and --exact: the exact
        replay), their seconds, |Δlogit| between the states and Rel/Gen/Loc on --score-sample remaining facts
    python benchmarks/memit_eval.py forget --facts 10,100,1000 --batch 100 [--set v_num_grad_steps=1]
        `memedit forget` of one fact of the last and of the first batch, through the CLI

Scores are `memedit eval`'s (commands/evaluate.py; docs/metrics.md): Rel on the
prompt, Gen on the rephrase, Loc = argmax agreement with the unedited model on
the locality prompt. quality builds each state as `apply` does (replay.Build, in a
temporary repository) and scores it in memory; forget runs the CLI. With --z-dir,
every batch's z is computed on the unedited model (and saved there, so a
killed run resumes) and every variant re-solves from them: the rules compare
on the same targets. (`apply` computes a batch's z on the state the earlier
batches left; z is optimized through the blocks above the band, which no rule
edits, so the state enters only through the context positions and the KL
reference.) Several λ
values reuse one z computation (z does not depend on λ or C₀; the statistics'
cost, `memedit stats`'s precompute, is "stats s", outside s/fact). Data:
../shared/data (skipped with a message when absent).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import tempfile
import time
from pathlib import Path

import common

from memedit_cli import hparams as hparams_mod
from memedit_cli.commands.evaluate import score
from memedit_cli.methods.memit import MEMIT
from memedit_cli.methods.memit.compute_z import compute_z
from memedit_cli.replay import Build, load_segment_tensors


def speed(args, model, tok, env):
    from memedit_cli.lm.models import input_device

    facts = common.load("counterfact", args.facts)
    method = MEMIT()
    hp = method.resolve(method.default_hparams(model), model, tok, env)
    ways = {"fast path (blocks above L, positions from the subject on)": (True, True),
            "blocks above L, every position": (True, False),
            "full-model loop": (False, False)}
    out = {}
    for name, (fast, cache) in ways.items():
        t0 = time.perf_counter()
        z, info = compute_z(model, tok, facts, dataclasses.replace(hp, z_fast_path=fast), hp.layers[-1],
                            hp.context_templates, input_device(model), prefix_cache=cache)
        out[name] = (time.perf_counter() - t0) / len(facts), info, z
    print(f"z for {len(facts)} facts, one batch, layers {list(hp.layers)}, {hp.v_num_grad_steps} steps at most:")
    first = next(iter(out.values()))
    for name, (s, info, z) in out.items():
        print(f"  {name}: {s:.2f} s/fact (x{s / first[0]:.2f} of the fast path), {info}, "
              f"max |z - z_fast| = {(z - first[2]).abs().max():.2e}")


def passes(args, model, tok, env):
    import resource

    from memedit_cli.lm.models import input_device

    facts = common.load(args.data, args.facts)
    method = MEMIT()
    hp = method.resolve(method.default_hparams(model), model, tok, env)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # noqa: E731  (KiB -> GiB)
    print(f"# z for {len(facts)} {args.data} facts, layers {list(hp.layers)}; peak RSS before: {peak():.2f} GiB")
    first = None
    for size in (int(x) for x in args.z_batch.split(",")):
        t0 = time.perf_counter()
        z, info = compute_z(model, tok, facts, dataclasses.replace(hp, z_batch=size), hp.layers[-1],
                            hp.context_templates, input_device(model))
        s = (time.perf_counter() - t0) / len(facts)
        first = z if first is None else first
        print(f"| {size or len(facts)} | {s:.2f} | {peak():.2f} | {(z - first).abs().max():.2e} | "
              f"{info['z_fact_steps_mean']} |", flush=True)


# the hyperparameters z depends on (besides the band's top block): what names a saved z
Z_FIELDS = ("v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "kl_direction",
            "v_stop_loss", "context_templates", "z_fast_path")


def base_z(model, tok, batch, hp, z_dir: Path):
    """z (n, d) of one batch on the unedited `model`: read from z_dir, or computed and saved there."""
    from safetensors.torch import load_file, save_file

    from memedit_cli.lm.models import input_device

    what = {k: getattr(hp, k) for k in Z_FIELDS} | {"layer": hp.layers[-1], "facts": [f.id for f in batch]}
    path = z_dir / f"z-{hashlib.blake2b(json.dumps(what).encode(), digest_size=8).hexdigest()}.safetensors"
    if path.exists():
        return load_file(path)["z"]
    t0 = time.perf_counter()
    z, info = compute_z(model, tok, batch, hp, hp.layers[-1], hp.context_templates, input_device(model))
    z_dir.mkdir(parents=True, exist_ok=True)
    save_file({"z": z.float().cpu().contiguous()}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # whole or absent: a kill mid-write leaves no z to trust
    print(f"# z of {len(batch)} facts ({batch[0].id}..): {(time.perf_counter() - t0) / len(batch):.2f} s/fact, "
          f"{info}", flush=True)
    return z.float().cpu()


def _hparams(args, model, tok, env):
    """The default MEMIT hparams with --layers, --null-space and --set, resolved."""
    method = MEMIT()
    hp = method.default_hparams(model)
    changes = {"null_space": args.null_space}
    if args.layers:
        changes["layers"] = tuple(int(x) for x in args.layers.split(","))
    hp = hparams_mod.resolve(dataclasses.replace(hp, **changes), hparams_mod.parse_set(args.set))
    return method.resolve(hp, model, tok, env)


def _batches(facts: list, size: int) -> list[list]:
    return [facts[i:i + size] for i in range(0, len(facts), size)]


def _chunked_z(model, tok, batch, hp, args):
    """z of one batch from z_dir's files of --z-chunk facts each (default: the batch): a fact's z on the
    unedited model does not depend on the other facts, so one batch of 1,000 reads ten files of 100."""
    import torch

    chunks = _batches(batch, args.z_chunk or len(batch))
    return torch.cat([base_z(model, tok, c, hp, args.z_dir) for c in chunks])


def save_zs(args, model, tok, env):
    batches = _batches(common.load(args.data, args.facts), args.batch)
    hp = _hparams(args, model, tok, env)
    # --reverse: a second worker over the same batches from the other end; each skips those already saved
    for batch in reversed(batches) if args.reverse else batches:
        base_z(model, tok, batch, hp, args.z_dir)
    print(f"# z of {len(batches)} batches in {args.z_dir}")


def edit_batches(build, method, hp, batches: list[list], zs: dict, args) -> list[dict]:
    """The batches one after another, each computed on the state the earlier ones left (`zs`: batch index ->
    z, filled in as batches compute theirs); the segments made."""
    segs = []
    for i, batch in enumerate(batches):
        # one batch starts from the base whatever λ is, so its z is the same: computed once;
        # --reuse-z: later batches too (the first variant's z, re-solved as forget --resolve does)
        z = zs[i] if i in zs and (len(batches) == 1 or args.reuse_z or bool(args.z_dir)) else None
        for _ in range(args.solves):  # --solves: every solve after the first aims at the first one's z
            reuse = {"facts": [f.id for f in batch], "tensors": {"z": z}} if z is not None else None
            segs.append(build.compute(method, hp, batch, 0, reuse))
            if z is None:
                z = load_segment_tensors(build.repo, segs[-1])["z"]
                zs.setdefault(i, z)
    return segs


def quality(args, repo, model, tok, env):
    facts = common.load(args.data, args.facts)
    method = MEMIT()
    hp = _hparams(args, model, tok, env)
    print(f"# --set {' '.join(args.set) or '(none)'}", flush=True)
    lams = [float(x) for x in args.lam.split(",")] if args.lam else [hp.mom2_update_weight]
    batches = _batches(facts, args.batch)
    scored = common.sample(facts, args.score_sample)
    # --z-dir: every batch's z on the unedited model (computed before anything is edited, or read)
    zs: dict = {i: _chunked_z(model, tok, b, hp, args) for i, b in enumerate(batches)} if args.z_dir else {}
    variants = [(c, t, lam) for c in args.corpus.split(",") for t in args.tokens for lam in lams]
    if args.variants:  # explicit CORPUS:TOKENS:LAMBDA triples instead of the cross product
        variants = [(c, int(t), float(lam)) for c, t, lam in (v.rsplit(":", 2) for v in args.variants.split(";"))]
    sweep = [dict(zip(keys, vals)) for keys, grid in [_sweep_grid(args.sweep)] for vals in itertools.product(*grid)]
    if args.configs:  # explicit settings, one per variant: "update=memit;update=alphaedit,alphaedit_threshold=0.01"
        sweep = [hparams_mod.parse_set(c.split(",")) for c in args.configs.split(";")]
    for (corpus, tokens, lam), extra in itertools.product(variants, sweep):
        hp_l = dataclasses.replace(hp, mom2_update_weight=lam, mom2_n_tokens=tokens,
                                   mom2_corpus="" if corpus == "samples" else corpus)
        # resolved again: a setting that --configs changes may leave another to its default (update=alphaedit:
        # alphaedit_threshold=0 means the measured default, which only resolve fills in)
        hp_l = method.resolve(hparams_mod.resolve(hp_l, extra), model, tok, env)
        build = Build(repo, [])  # the base model, as `apply` on an empty repository starts
        t0 = time.perf_counter()
        method.precompute(hp_l, build.env, build.model)  # `memedit stats`: C₀, then cached
        stats_s = time.perf_counter() - t0
        segs, timed = [], {}

        def edit():
            t0 = time.perf_counter()
            segs.extend(edit_batches(build, method, hp_l, batches, zs, args))
            timed["edit_s"] = (time.perf_counter() - t0) / len(facts)

        s = score(build.model, build.tok, scored, edit).scores
        tensors = load_segment_tensors(repo, segs[-1])
        nbytes = sum(t.numel() * t.element_size() for k, t in tensors.items() if k != "z") / len(batches[-1])
        print(f"| {args.data} | {len(facts)} ({len(scored)} scored) | {len(batches)}x{args.batch} | "
              f"{list(hp.layers)} | {lam:g} | "
              f"{'null_space' if hp_l.null_space else hp_l.update}{'+nas' if hp_l.norm_anchor else ''} | "
              f"{Path(corpus).name}:{tokens} | "
              f"{s['rel']:.2f} | {s['gen']:.2f} | {s['loc']:.2f} | {timed['edit_s']:.2f} | {stats_s:.0f} | "
              f"{nbytes / 1024:.1f} KiB | "
              f"{' '.join([f'{k}={v}' for k, v in extra.items()] + [f'solves={args.solves}'] * (args.solves > 1))} |",
              flush=True)


def resolve_timing(args, repo, model, tok, env):
    import lifelong

    from memedit_cli.commands.apply import record

    facts = common.load(args.data, args.facts)
    method = MEMIT()
    hp = _hparams(args, model, tok, env)
    batches = _batches(facts, args.batch)
    zs = [base_z(model, tok, b, hp, args.z_dir) for b in batches]
    build, head, t0 = Build(repo, []), repo.head(), time.perf_counter()
    for batch, z in zip(batches, zs):  # as `apply` would, one record per batch, with the stored z
        seg = build.compute(method, hp, batch, 0, {"facts": [f.id for f in batch], "tensors": {"z": z}})
        head = repo.append(record(head, method, hp, 0, batch, [seg], "memit_eval resolve", 0.0, 0.0))["id"]
    print(f"# {len(facts)} facts in {len(batches)} batches from stored z ({' '.join(args.set) or 'defaults'}): "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    rest = common.sample(facts[1:], args.score_sample or 100)
    out = lifelong.forget_resolved(repo.root.parent, facts[0].id, rest, exact=args.exact, stored_keys=True)
    print(json.dumps(out), flush=True)


def forget_timing(args):
    """Apply N facts through the CLI (batches of --batch), then time `memedit forget` of one
    fact of the last batch (re-solve from stored z) and of the first: exact (later batches replayed,
    up to --first-max facts) and with --resolve (later batches re-solved from their stored z)."""
    sets = [x for kv in args.set for x in ("--set", kv)]
    for n in args.facts_list:
        facts = common.load(args.data, n)
        with tempfile.TemporaryDirectory() as work:
            common.memedit(work, "init")
            path = common.write_facts(facts, Path(work) / "facts.jsonl")
            apply_s, _ = common.memedit(work, "apply", path, "--method", "memit", "--batch-size", args.batch, *sets)
            size = min(args.batch, n)
            last = facts[(n - 1) // size * size]  # a fact of the last batch
            for label, fact, how in (("last", last, []), ("first", facts[0], []), ("first", facts[0], ["--resolve"])):
                if label == "first" and (fact is last or n > args.first_max and not how):
                    continue
                t = json.loads(common.memedit(work, "forget", fact.id, *how, "--json")[1])["timings"]
                print(f"| {n} | {-(-n // size)}x{size} | {apply_s:.0f} | {label} | {' '.join(how) or 'exact'} | "
                      f"{t['total_s']:.1f} | {t['replayed_segments']} |", flush=True)
                common.memedit(work, "checkout", "HEAD~1")  # back to all N facts for the next measurement


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
    ap.add_argument("mode", choices=["speed", "passes", "quality", "zs", "resolve", "forget"])
    ap.add_argument("--data", choices=list(common.FILES), default="counterfact")
    ap.add_argument("--facts", default="10", help="how many facts (forget: a comma-separated list)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--z-batch", default="10,0", help="passes: facts per z pass, comma-separated, smallest first")
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
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a MEMIT hyperparameter (repeatable)")
    ap.add_argument("--configs", default="", metavar="K=V,K=V;...",
                    help="settings of each variant, instead of the --sweep grid")
    ap.add_argument("--reuse-z", action="store_true",
                    help="every variant after the first reuses its z for every batch (closed-form re-solves in "
                         "sequence, as forget --resolve): sweeps of the solve at the cost of one z computation")
    ap.add_argument("--z-dir", type=Path, default=None,
                    help="quality, zs, resolve: each batch's z computed on the unedited model, saved in (and "
                         "read from) DIR")
    ap.add_argument("--z-chunk", type=int, default=0, metavar="N",
                    help="quality: --z-dir's files hold N facts each (default: --batch), e.g. one batch of 1000 "
                         "solved from the z that `zs --batch 100` saved")
    ap.add_argument("--solves", type=int, default=1, metavar="S",
                    help="quality: solve each batch S times toward the same z, each on the state the last left "
                         "(default 1, MEMIT's one solve)")
    ap.add_argument("--reverse", action="store_true",
                    help="zs: the last batch first (a second process over the same batches meets the first halfway)")
    ap.add_argument("--score-sample", type=int, default=None, metavar="N",
                    help="quality, resolve: score N facts evenly spaced over the applied ones (default: all; "
                         "resolve: 100)")
    ap.add_argument("--exact", action="store_true", help="resolve: time the exact replay too (z recomputed)")
    ap.add_argument("--variants", default="", help="CORPUS:TOKENS:LAMBDA;... (overrides --corpus/--tokens/--lam)")
    args = ap.parse_args()
    args.facts_list = [int(x) for x in args.facts.split(",")]
    if args.mode != "forget" and len(args.facts_list) > 1:
        ap.error(f"{args.mode} takes one --facts count, got {args.facts}")
    args.facts = args.facts_list[0]
    if args.z_chunk < 0:
        ap.error(f"--z-chunk must be a number of facts >= 1 (0: the batch), got {args.z_chunk}")
    if args.solves < 1:
        ap.error(f"--solves must be >= 1, got {args.solves}")
    if args.mode in ("zs", "resolve") and args.z_dir is None:
        ap.error(f"{args.mode} needs --z-dir, the folder of the batches' z")
    for name, given, modes in (("--z-dir", args.z_dir, ("quality", "zs", "resolve")),
                               ("--score-sample", args.score_sample, ("quality", "resolve")),
                               ("--reverse", args.reverse, ("zs",)), ("--z-chunk", args.z_chunk, ("quality",)),
                               ("--solves", args.solves != 1, ("quality",)),
                               ("--exact", args.exact, ("resolve",))):
        if given and args.mode not in modes:
            ap.error(f"{name} is read only by {' and '.join(modes)}, not by {args.mode}")
    if args.mode == "forget":
        print("| facts | batches | apply s | forgotten fact's batch | forget | forget s | segments replayed |")
        print("|---|---|---|---|---|---|---|")
        return forget_timing(args)
    common.set_threads()
    repo, model, tok, env = common.default_model()
    if args.mode == "speed":
        speed(args, model, tok, env)
    elif args.mode == "zs":
        save_zs(args, model, tok, env)
    elif args.mode == "resolve":
        resolve_timing(args, repo, model, tok, env)
    elif args.mode == "passes":
        print("| facts per pass | s/fact | peak RSS GiB | max abs z diff to the first | steps per fact |")
        print("|---|---|---|---|---|")
        passes(args, model, tok, env)
    else:
        print("| data | facts | batches | layers | λ | update | C₀ corpus:tokens | Rel | Gen | Loc | s/fact "
              "| stats s | bytes/fact | swept |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        quality(args, repo, model, tok, env)


if __name__ == "__main__":
    main()
