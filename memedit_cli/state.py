"""Materializing a state: the base model with segments attached in order, and
computing new segments (used by both `apply` and `forget`'s replay)."""

from __future__ import annotations

import time

from memedit_cli import hparams as hparams_mod
from memedit_cli import methods
from memedit_cli.errors import UserError
from memedit_cli.facts import Fact


def load_segment_tensors(repo, seg: dict) -> dict:
    tensors = {}
    for obj in seg["objects"].values():
        tensors.update(repo.objects.get(obj))
    return tensors


def attach_segment(repo, model, seg: dict, tok) -> None:
    method = methods.get(seg["method"])
    hp = hparams_mod.from_json(method.hparams_class, seg["hparams"])
    method.attach(model, load_segment_tensors(repo, seg), hp, tok)


def materialize(repo, segments: list[dict]):
    """(model, tokenizer) = base weights + `segments` attached in order."""
    from memedit_cli import models

    model, tok = models.load(repo.config)
    for seg in segments:
        attach_segment(repo, model, seg, tok)
    return model, tok


def method_env(repo, model, tok, attached: list[dict]):
    """The Env for computing on a model with the segments `attached` attached."""
    from memedit_cli import models
    from memedit_cli.methods.base import Env

    entry = repo.config["model"]
    key = entry.get("weights_sha256") or f"{entry.get('id')}@{entry.get('revision', 'main')}"
    loaded: list = []

    def fresh():  # the unedited base, loaded at most once per command
        if not loaded:
            loaded.append(models.load(repo.config))
        return loaded[0]

    return Env(cache_dirs=[repo.root / "cache", models.user_cache()], model_key=key,
               load_base=(lambda: (model, tok)) if not attached else fresh, load_fresh=fresh,
               attached=list(attached), segment_tensors=lambda seg: load_segment_tensors(repo, seg))


def run_segment(repo, model, tok, method, hp, facts: list[Fact], seed: int, env, reuse: dict | None = None) -> dict:
    """Compute one batch's tensors on the current model, store them, attach them.

    What is attached is what was stored (re-read from the object store), so the
    model in hand equals what `materialize` later rebuilds from the log.
    """
    t0 = time.perf_counter()
    try:
        tensors, info = method.compute(model, tok, facts, hp, seed, env, reuse)
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "out of memory" not in str(e) and "not enough memory" not in str(e):
            raise
        raise UserError(f"{method.name}: a batch of {len(facts)} fact(s) does not fit in memory; "
                        "nothing was recorded. Use a smaller --batch-size") from None
    compute_s = time.perf_counter() - t0
    seg = {
        "method": method.name,
        "hparams": hparams_mod.to_json(hp),
        "seed": seed,
        "facts": [f.id for f in facts],
        # a value that is itself a dict of tensors is an object of its own (shared between segments when equal)
        "objects": {"tensors": repo.objects.put({k: v for k, v in tensors.items() if not isinstance(v, dict)}),
                    **{k: repo.objects.put(v) for k, v in tensors.items() if isinstance(v, dict)}},
        "info": info,
        "compute_s": round(compute_s, 3),
    }
    attach_segment(repo, model, seg, tok)
    env.attached.append(seg)
    env.load_base = env.load_fresh  # the model in hand is no longer the base model
    return seg
