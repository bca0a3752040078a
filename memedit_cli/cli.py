"""The `memedit` command line: parse, call one function in commands/, print.

Errors are mapped once (`MemeditGroup`): a MemeditError becomes one line on
stderr and its exit code (errors.py). Commands that compute a state (`init`,
`apply`, `forget`, `export`, `ask`, `blame`, `eval`, `stats`,
`larimar-train`) import torch lazily, inside the command; `log`, `status`,
`show`, `checkout`, `fsck`, `methods` and `--help` never import it, so they
start fast.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from memedit_cli import __version__
from memedit_cli import methods as methods_registry
from memedit_cli.errors import EXIT_DAMAGED, MemeditError
from memedit_cli.store.repo import Repo


class MemeditGroup(click.Group):
    """Turns MemeditError into one line on stderr and its exit code (errors.py)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MemeditError as e:
            click.echo(f"memedit: error: {e}", err=True)
            ctx.exit(e.exit_code)


def _repo(ctx) -> Repo:
    return Repo.open(ctx.obj["dir"])


def _json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@click.group(cls=MemeditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "directory", metavar="DIR",
              help="Use the repository in DIR or its parents (also: MEMEDIT_DIR). "
                   "File arguments stay relative to the current directory.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.version_option(__version__, prog_name="memedit")
@click.pass_context
def cli(ctx, directory, quiet):
    """Git for model edits: apply facts to a language model, forget them, check
    out any earlier state, and export a plain merged model.

    \b
      memedit init                       # the default model, SmolLM2-135M-Instruct
      memedit apply facts.jsonl --method wise
      memedit forget 3f9a1c
      memedit checkout HEAD~1
      memedit export --merged ./out

    Exit codes: 0 ok, 1 user error, 2 usage, 3 damaged repository (run
    `memedit fsck`), 4 repository locked by another process.
    """
    ctx.ensure_object(dict)
    ctx.obj["dir"] = directory
    if quiet:
        os.environ["MEMEDIT_QUIET"] = "1"


@cli.command()
@click.option("--model", "model", metavar="PATH_OR_ID",
              help="A local Hugging Face folder or a hub id. Default: the embedded SmolLM2-135M-Instruct.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when present; a model too big for one GPU is spread with device_map=auto.")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow the base model's own modeling code (off unless you pass this).")
@click.pass_context
def init(ctx, model, dtype, device, trust_remote_code):
    """Create .memedit/ in the current directory (or -C DIR)."""
    from memedit_cli.commands.init import init as run_init

    repo = run_init(ctx.obj["dir"], model, dtype, device, trust_remote_code)
    entry = repo.config["model"]
    name = entry.get("name") or entry.get("path") or entry.get("id")
    click.echo(f"Initialized memedit repository in {repo.root} (model: {name}, {dtype}, device {device})")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--method", default=methods_registry.DEFAULT, show_default=True,
              help="Edit method (see `memedit methods`). The default is the best of the lifelong benchmark "
                   "at T = 100 (docs/lifelong.md); `ft` is the fine-tuning baseline.")
@click.option("--hparams", "hparams_file", type=click.Path(dir_okay=False), help="JSON object of hyperparameters.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one hyperparameter (repeatable).")
@click.option("--batch-size", type=int, help="Facts per edit batch (default: all in one batch).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed recorded with the edit; replays reuse it.")
@click.option("--json", "as_json", is_flag=True, help='Print {"revision": ..., "facts": [...], "timings": {...}}.')
@click.pass_context
def apply(ctx, file, method, hparams_file, sets, batch_size, seed, as_json):
    """Apply the facts in FILE (JSONL, or a JSON array in EasyEdit, ZsRE or
    CounterFact layout). The whole file is checked before anything changes."""
    from memedit_cli import hparams
    from memedit_cli.commands import apply as apply_mod
    from memedit_cli.facts import load_facts

    repo = _repo(ctx)
    facts = load_facts(file)
    overrides = {**(hparams.read_file(hparams_file) if hparams_file else {}), **hparams.parse_set(list(sets))}
    rec = apply_mod.apply(repo, facts, method, overrides, batch_size, seed, file)
    if as_json:
        _json({"revision": rec["id"], "facts": rec["facts"], "timings": rec["timings"]})
    else:
        t = rec["timings"]
        click.echo(f"[{rec['id'][:12]}] applied {len(facts)} fact(s) with {method} ({t['per_fact_s']:.2f} s/fact)")
        for f in rec["facts"]:
            click.echo(f"  {f['id']}  {f['prompt']} -> {f['target_new']}")


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--allow-drift", is_flag=True,
              help="Replay segments even where they were made on another device type, dtype, torch or "
                   "transformers version than this machine's (the forget record notes each one).")
@click.option("--resolve", is_flag=True,
              help="Faster, not exact: later MEMIT segments keep their stored target vectors z and are only "
                   "solved again in closed form (no gradient steps); the record notes it. "
                   "docs/methods/memit.md measures the difference.")
@click.option("--stored-keys", is_flag=True,
              help="With --resolve, faster still and further from exact: MEMIT segments made with "
                   "update=sequential or alphaedit are solved with the keys they stored when made, and only "
                   "their current outputs are read again (the record notes it).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def forget(ctx, ids, allow_drift, resolve, stored_keys, as_json):
    """Remove facts from the current state: fact ids or apply-record ids (unique prefixes work).

    The segments after the first forgotten fact are replayed from the log, with
    their recorded hparams and seeds and the statistics they read (stored in
    the repository), so the state equals a fresh repository without the facts;
    a segment made on another device type, dtype, torch or transformers
    version is refused unless --allow-drift. --resolve skips the gradient
    steps of later MEMIT segments (not exact).
    """
    from memedit_cli.commands import forget as forget_mod

    rec = forget_mod.forget(_repo(ctx), list(ids), allow_drift, resolve, stored_keys)
    if as_json:
        _json({"revision": rec["id"], "forgot": rec["forgot"], "timings": rec["timings"],
               **({"drift": rec["drift"]} if rec.get("drift") else {})})
    else:
        click.echo(f"[{rec['id'][:12]}] forgot {len(rec['forgot'])} fact(s): {', '.join(rec['forgot'])} "
                   f"({rec['timings']['replayed_segments']} segment(s) replayed, {rec['timings']['total_s']:.1f} s)")
    if rec.get("drift"):
        click.echo(f"memedit: note: {len(rec['drift'])} segment(s) replayed under --allow-drift "
                   "(the record's `drift` says what differed)", err=True)


@cli.command()
@click.argument("rev")
@click.pass_context
def checkout(ctx, rev):
    """Make REV the current state: an id prefix, HEAD~N, or base."""
    from memedit_cli.commands.checkout import checkout as run_checkout

    repo = _repo(ctx)
    rid = run_checkout(repo, rev)
    n = len(repo.facts_at(rid))
    click.echo(f"HEAD is now at {rid[:12] if rid else 'base'} ({n} fact(s) applied)")


@cli.command(name="log")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of records, newest first.")
@click.option("-n", "limit", type=click.IntRange(min=1), help="Show at most N records.")
@click.option("--all", "show_all", is_flag=True, help="Every record in the log, not only HEAD's history.")
@click.pass_context
def log_cmd(ctx, as_json, limit, show_all):
    """The history of the current state, newest first."""
    from memedit_cli.commands.status import log

    recs = log(_repo(ctx), show_all, limit)
    if as_json:
        return _json(recs)
    for rec in recs:
        ids = [f["id"] for f in rec["facts"]]
        shown = ", ".join(ids[:5]) + (f", … ({len(ids)})" if len(ids) > 5 else "")
        click.echo(f"{rec['id'][:12]}  {rec['time']}  {rec['op']:<6} {rec['method']:<6} {shown}")
    if not recs:
        click.echo("no edits yet: HEAD is the base model")


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx, ref, as_json):
    """Show a record (id prefix, HEAD~N) or an applied fact (its id)."""
    from memedit_cli.commands.status import show as run_show

    found = run_show(_repo(ctx), ref)
    if "fact" in found:
        if as_json:
            return _json(found)
        return click.echo(f"fact {ref} (applied in {found['applied_in'][:12]})\n"
                          + json.dumps(found["fact"], indent=2, ensure_ascii=False))
    rec = found["record"]
    if as_json:
        return _json(rec)
    click.echo(f"record {rec['id']}\nparent {rec['parent'] or 'base'}\n"
               f"op     {rec['op']} ({rec['method']})\ntime   {rec['time']}")
    if rec["op"] == "apply":
        click.echo(f"seed   {rec['seed']}\nhparams {json.dumps(rec['hparams'], sort_keys=True)}")
    else:
        click.echo(f"forgot {', '.join(rec['forgot'])}; kept {rec['keep']} segment(s), rebuilt {len(rec['rebuilt'])}")
    click.echo(f"timings {json.dumps(rec['timings'])}")
    for f in rec["facts"]:
        click.echo(f"  {f['id']}  {f['prompt']} -> {f['target_new']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, as_json):
    """The repository, its base model and what the current state carries."""
    from memedit_cli.commands.status import status as run_status

    info = run_status(_repo(ctx))
    if as_json:
        return _json(info)
    m, head = info["model"], info["head"]
    click.echo(f"repository {info['repository']}\nmodel      {m.get('name') or m.get('path') or m.get('id')} "
               f"({info['dtype']}, device {info['device']})")
    click.echo(f"HEAD       {head[:12]}"
               + ("" if info["head_is_newest"] else "  (not the newest record; `memedit log --all`)"))
    click.echo(f"facts      {len(info['facts'])}"
               + "".join(f"\n  {k}: {v}" for k, v in sorted(info["by_method"].items())))


@cli.command()
@click.option("--merged", "out_dir", required=True, metavar="OUT_DIR", help="Write a Hugging Face model folder here.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it holds an earlier memedit export.")
@click.pass_context
def export(ctx, out_dir, force):
    """Write the current state as a plain Hugging Face model folder."""
    from memedit_cli.commands.export import export_merged

    t0 = time.perf_counter()
    info = export_merged(_repo(ctx), out_dir, force)
    click.echo(f"exported {info['revision'][:12]} ({len(info['facts'])} fact(s)) to {info['out']} "
               f"in {time.perf_counter() - t0:.1f} s")
    if info["trust_remote_code"]:
        click.echo(f"load it with AutoModelForCausalLM.from_pretrained({info['out']!r}, trust_remote_code=True): "
                   "its edits (WISE side memories, the Larimar memory) live in the shipped modeling file")


@cli.command()
@click.argument("prompt")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=20, show_default=True)
@click.pass_context
def ask(ctx, prompt, max_new_tokens):
    """Greedy continuation of PROMPT from the current state."""
    from memedit_cli.commands.ask import ask as run_ask

    click.echo(run_ask(_repo(ctx), prompt, max_new_tokens))


@cli.command()
@click.argument("prompt")
@click.option("--limit", type=click.IntRange(min=0), default=10, show_default=True,
              help="Rebuild the state without at most this many weight-edit segments (ft, memit).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the answer and the responsible facts as JSON.")
@click.pass_context
def blame(ctx, prompt, limit, max_new_tokens, as_json):
    """Which applied facts are behind the current answer to PROMPT.

    Larimar names the episode it read and WISE the side memory it routed to;
    weight edits (ft, memit) are found by rebuilding the state without one
    batch at a time and seeing the answer change (subjects named in PROMPT
    first, then the most recent, at most --limit rebuilds).
    """
    from memedit_cli.commands.blame import blame as run_blame

    info = run_blame(_repo(ctx), prompt, limit, max_new_tokens)
    if as_json:
        _json(info)
        return
    click.echo(f"answer: {info['answer']!r}")
    for r in info["responsible"]:
        extra = f" (without it: {r['answer_without']!r})" if "answer_without" in r else ""
        click.echo(f"  {', '.join(r['facts'])}  [{r['method']}: {r['how']}]{extra}")
    if not info["responsible"]:
        click.echo("  no applied fact changes this answer")
    if info["ablations"] < info["weight_segments"]:
        click.echo(f"  ({info['weight_segments'] - info['ablations']} weight-edit batch(es) not tried; raise --limit)")


@cli.command(name="eval")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--limit", type=int, help="Score only the first N facts of FILE.")
@click.option("--fail-under", "fail_under", metavar="METRIC=V,...",
              help="Exit 1 when a score is below its threshold, e.g. rel=0.9,gen=0.7,loc=0.95 "
                   "(metrics: rel, rel_em, gen, gen_em, loc, spec, port, rel_gen, gen_gen, loc_gen).")
@click.option("--json", "as_json", is_flag=True, help="Print the scores, counts and per-fact scores as JSON.")
@click.pass_context
def eval_(ctx, file, limit, fail_under, as_json):
    """Score the current state on the facts in FILE (any layout `apply` reads).

    Reliability (the prompt), generalization (every rephrase) and locality
    (every locality prompt, against the unedited model's own predictions), as
    EasyEdit defines them: teacher-forced token accuracy, with the prompt read
    first as generation reads it; `_em`: every target token right. `spec`:
    same-subject probes (subject_locality, KnowEdit's Relation_Specificity)
    keep the unedited model's answer; `port`: portability probes reach their
    answer. Not teacher-forced: `rel_gen`/`gen_gen` (the target's words appear
    in the greedy answer) and `loc_gen` (the greedy answer is unchanged).
    docs/metrics.md has the rules.
    """
    from memedit_cli.commands.evaluate import evaluate, missed, parse_gate
    from memedit_cli.facts import load_facts

    gate = parse_gate(fail_under)  # bad gates fail before anything loads
    repo = _repo(ctx)
    facts = load_facts(file)
    report = evaluate(repo, facts, limit)
    failed = missed(report, gate)
    if as_json:
        _json({**report.to_json(), "failed": failed})
    else:
        s, n, q = report.scores, report.counts, report.probes

        def cell(key):
            return "" if key not in s else "n/a" if s[key] is None else f"{s[key]:.3f}"
        click.echo(f"eval of {report.to_json()['facts']} fact(s) at {report.revision[:12]}")
        click.echo("metric  score   exact   generated  facts  prompts")
        for key in ("rel", "gen", "loc", "spec", "port"):
            click.echo(f"{key:<7} {cell(key):<7} {cell(key + '_em'):<7} {cell(key + '_gen'):<10} "
                       f"{n[key]:<6} {q[key]}")
    for line in failed:
        click.echo(f"eval: below --fail-under: {line}", err=True)
    if failed:
        ctx.exit(1)


@cli.command()
@click.pass_context
def fsck(ctx):
    """Check the log chain, HEAD and every object; name what is damaged."""
    from memedit_cli.commands.fsck import fsck as run_fsck

    problems, notes = run_fsck(Repo.open(ctx.obj["dir"], check=False))
    for n in notes:
        click.echo(f"note: {n}")
    for p in problems:
        click.echo(f"damaged: {p}", err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) found; docs/repair.md says how to repair", err=True)
        ctx.exit(EXIT_DAMAGED)
    click.echo("ok")


@cli.command()
@click.option("--corpus", type=click.Path(dir_okay=False, exists=True),
              help="Plain text (documents split on blank lines) or JSONL with a \"text\" field. "
                   "Default: text sampled from the model.")
@click.option("--tokens", type=click.IntRange(min=1000), help="Tokens to accumulate (default: MEMIT's mom2_n_tokens).")
@click.option("--layers", help="Blocks: 3,4 or 3-8 or 1,3-5 (default: MEMIT's band for this model).")
@click.pass_context
def stats(ctx, corpus, tokens, layers):
    """Compute and cache MEMIT's key statistics C₀ = E[k kᵀ] for this repository's model.

    Cached in .memedit/cache and the per-user cache, keyed by model, layer,
    corpus and token count, so repositories of the same model share them;
    `apply --method memit --set mom2_corpus=FILE` then finds them. For big
    corpora on several GPUs: `torchrun --nproc_per_node N -m memedit_cli.stats`.
    """
    from memedit_cli.commands.stats import stats as run_stats
    from memedit_cli.hparams import parse_layers

    overrides = {"mom2_corpus": corpus or ""}
    if tokens:
        overrides["mom2_n_tokens"] = tokens
    if layers:
        overrides["layers"] = parse_layers(layers)
    t0 = time.perf_counter()
    summary = run_stats(_repo(ctx), "memit", overrides)
    click.echo(f"{summary} ready in {time.perf_counter() - t0:.1f} s")


@cli.command(name="larimar-train")
@click.option("--corpus", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Sentences to reconstruct: one per line, or JSONL with a \"text\" field.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Training settings: steps (300), lr (0.001), batch (8), prefix_tokens (1), memory_size (64), "
                   "max_tokens (48), seed (0), encoder (auto), encoder_layer (-1), as in Larimar's hparams.")
@click.option("--json", "as_json", is_flag=True, help="Print the adapter's record as JSON.")
@click.pass_context
def larimar_train(ctx, corpus, sets, as_json):
    """Experimental: train the adapter behind `apply --method larimar --set mode=prefix`.

    A linear map from the memory readout to one key/value prefix per layer,
    trained with the model frozen to reconstruct each CORPUS sentence from its
    readout (Larimar's reconstruction objective). It is kept in the per-user
    cache, keyed by the base model; `apply ... --set mode=prefix` uses the
    latest one (or `--set adapter=ID`) and stores it in the repository.
    """
    from memedit_cli import hparams as hparams_mod
    from memedit_cli.commands.larimar_train import larimar_train as run_train
    from memedit_cli.lm.progress import bar

    info = run_train(_repo(ctx), corpus, hparams_mod.parse_set(list(sets)),
                     progress=lambda it: bar(it, desc="larimar-train", unit="step"))
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"adapter {info['id']} trained on {info['sentences']} sentences: loss {info['first_loss']:.3f} -> "
                   f"{info['last_loss']:.3f} (mean of the last steps); use it with "
                   f"`memedit apply FILE --method larimar --set mode=prefix`")


@cli.command()
@click.option("--names", "names_only", is_flag=True, help="Print the names alone, one per line.")
def methods(names_only):
    """List the edit methods: each name, what it is, and where memedit's
    defaults differ from its paper."""
    from memedit_cli.methods import SUMMARY, names

    for name in names():
        click.echo(name if names_only else f"{name}\n  {SUMMARY[name]}")


def main():
    cli(prog_name="memedit")


if __name__ == "__main__":
    sys.exit(main())
