"""`memedit apply`: edit the current state with a batch (or batches) of facts."""

from __future__ import annotations

import time

from memedit_cli import hparams as hparams_mod
from memedit_cli import methods
from memedit_cli.errors import UserError
from memedit_cli.facts import Fact, check_subjects
from memedit_cli.lm.arch import arch_for
from memedit_cli.lm.progress import bar
from memedit_cli.lm.tokens import check_fit, context_length
from memedit_cli.store import log as logmod


def prepare(method_name: str, facts: list[Fact], overrides: dict, source: str, batch_size: int | None):
    """Every check that needs no model, so bad input fails before anything loads."""
    method = methods.get(method_name)
    if method.needs_subject:
        check_subjects(facts, source)
    # unknown keys, wrong types and bad values fail here, against the class defaults
    hparams_mod.resolve(method.hparams_class(), overrides)
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    return method


def apply(repo, facts: list[Fact], method_name: str, overrides: dict, batch_size: int | None, seed: int,
          source: str) -> dict:
    from memedit_cli.replay import Build, check_composes

    method = prepare(method_name, facts, overrides, source, batch_size)
    t0 = time.perf_counter()
    with repo.lock("apply"):
        head = repo.head()
        active = repo.facts_at(head)
        again = [f.id for f in facts if f.id in active]
        if again:
            raise UserError(f"fact {again[0]} is already applied at HEAD ({len(again)} in this file); "
                            "`memedit forget` it first or give the new fact another id")
        build = Build(repo, repo.segments_at(head))
        model, tok = build.model, build.tok
        check_fit(tok, facts, context_length(model))  # all batches, before anything is computed or cached
        if method.edits_ffn:
            arch_for(model.config).mlp_out_at(0)  # a mixture-of-experts block has none: says why, and what works
        hp = hparams_mod.resolve(method.default_hparams(model), overrides)
        if method.needs_subject_with(hp) and not method.needs_subject:  # known only now, from the model's defaults
            check_subjects(facts, source)
        with build.computing(method):
            hp = method.resolve(hp, model, tok, build.env)
        check_composes(method, hp, model, build.env.attached)
        load_s = time.perf_counter() - t0
        size = min(batch_size or len(facts), method.batch_limit(hp) or len(facts))
        batches = [facts[i : i + size] for i in range(0, len(facts), size)]
        new = [build.compute(method, hp, batch, seed)
               for batch in bar(batches, desc=f"apply {method.name}", unit="batch")]
        return repo.append(record(head, method, hp, seed, facts, new, source, load_s, time.perf_counter() - t0))


def record(head, method, hp, seed: int, facts: list[Fact], segments: list[dict], source: str, load_s: float,
           total_s: float) -> dict:
    """The fields of an apply record for `segments`, computed from `facts` on the state at `head`."""
    return {
        "parent": head,
        "op": "apply",
        "method": method.name,
        "hparams": hparams_mod.to_json(hp),
        "seed": seed,
        "facts": [f.to_json() for f in facts],
        "segments": segments,
        "source": source,
        "versions": logmod.versions(),
        "timings": {"load_s": round(load_s, 3), "total_s": round(total_s, 3),
                    "per_fact_s": round((total_s - load_s) / len(facts), 3)},
        "time": logmod.now(),
    }
