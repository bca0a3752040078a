"""Replay: a state is the base model with the log's segments attached in order.

`materialize` rebuilds a state; a `Build` is a state in the making, used by
`apply` (new segments on top of HEAD) and `forget` (the segments after the
forgotten facts, computed again). Segments' tensors are safetensors objects
in the store; encoding and decoding them is here, so that the store never
imports torch.
"""

from __future__ import annotations

import time

from memedit_cli import hparams as hparams_mod
from memedit_cli import methods
from memedit_cli.errors import UserError
from memedit_cli.facts import Fact


def put_tensors(repo, tensors: dict) -> str:
    """Store a dict of tensors as one object; return its hash. Refuses NaN/Inf before writing anything."""
    import torch
    from safetensors.torch import save

    clean = {}
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise UserError(f"the edit produced NaN or Inf values in {name!r}; nothing was written. "
                            "Lower the learning rate or the number of steps and try again")
        clean[name] = t.detach().to("cpu").contiguous()  # safetensors wants detached, contiguous CPU tensors
    return repo.objects.put(save(clean))


def get_tensors(repo, h: str) -> dict:
    from safetensors.torch import load

    return load(repo.objects.read_bytes(h))


def load_segment_tensors(repo, seg: dict) -> dict:
    tensors = {}
    for obj in seg["objects"].values():
        tensors.update(get_tensors(repo, obj))
    return tensors


def attach_segment(repo, model, seg: dict, tok) -> None:
    method = methods.get(seg["method"])
    hp = hparams_mod.from_json(method.hparams_class, seg["hparams"])
    method.attach(model, load_segment_tensors(repo, seg), hp, tok)


def attach_all(repo, model, segments: list[dict], tok) -> None:
    """Attach `segments` in order, then let them take effect (once: see `Method.settle`)."""
    for seg in segments:
        attach_segment(repo, model, seg, tok)
    methods.settle(model, segments)


def materialize(repo, segments: list[dict]):
    """(model, tokenizer) = base weights + `segments` attached in order."""
    from memedit_cli.lm import models

    model, tok = models.load(repo.config)
    attach_all(repo, model, segments, tok)
    return model, tok


def model_key(repo) -> str:
    """What identifies the base weights in caches: their sha256, or hub id@revision."""
    entry = repo.config["model"]
    return entry.get("weights_sha256") or f"{entry.get('id')}@{entry.get('revision', 'main')}"


def method_env(repo, model, tok, attached: list[dict]):
    """The Env for computing on `model`, which has the segments `attached` attached."""
    from memedit_cli.lm import models
    from memedit_cli.methods.base import Env

    loaded: list = []

    def fresh():  # the unedited base, loaded at most once per command
        if not loaded:
            loaded.append(models.load(repo.config))
        return loaded[0]

    return Env(cache_dirs=(repo.root / "cache", models.user_cache()), model_key=model_key(repo),
               load_base=(lambda: (model, tok)) if not attached else fresh, load_fresh=fresh,
               attached=tuple(attached), segment_tensors=lambda seg: load_segment_tensors(repo, seg))


class Build:
    """A state in the making: the base with `segments` attached, and new segments computed on top."""

    def __init__(self, repo, segments: list[dict]):
        self.repo = repo
        self.model, self.tok = materialize(repo, segments)
        self.env = method_env(repo, self.model, self.tok, segments)
        self._unsettled: list[dict] = []  # attached by `keep`, not yet settled (settled before the model runs)

    def keep(self, seg: dict) -> None:
        """Attach a stored segment as it is."""
        attach_segment(self.repo, self.model, seg, self.tok)
        self.env = self.env.after(seg)
        self._unsettled.append(seg)

    def settle(self) -> None:
        """Let the segments kept since the last call take effect (once for a run of kept segments)."""
        methods.settle(self.model, self._unsettled)
        self._unsettled = []

    def compute(self, method, hp, facts: list[Fact], seed: int, reuse: dict | None = None) -> dict:
        """Compute one batch's tensors on the current model, store them, attach them; returns the segment.

        What is attached is what was stored (re-read from the object store), so the
        model in hand equals what `materialize` later rebuilds from the log.
        """
        self.settle()
        t0 = time.perf_counter()
        try:
            tensors, info = method.compute(self.model, self.tok, facts, hp, seed, self.env, reuse)
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and "out of memory" not in str(e) and "not enough memory" not in str(e):
                raise
            raise UserError(f"{method.name}: a batch of {len(facts)} fact(s) does not fit in memory; "
                            "nothing was recorded. Use a smaller --batch-size") from None
        compute_s = time.perf_counter() - t0
        plain = {k: v for k, v in tensors.items() if not isinstance(v, dict)}
        seg = {
            "method": method.name,
            "hparams": hparams_mod.to_json(hp),
            "seed": seed,
            "facts": [f.id for f in facts],
            # a value that is itself a dict of tensors is an object of its own (shared between segments when equal)
            "objects": {"tensors": put_tensors(self.repo, plain),
                        **{k: put_tensors(self.repo, v) for k, v in tensors.items() if isinstance(v, dict)}},
            "info": info,
            "compute_s": round(compute_s, 3),
        }
        self.keep(seg)
        return seg
