"""Replay: a state is the base model with the log's segments attached in order.

`materialize` rebuilds a state; a `Build` is a state in the making, used by
`apply` (new segments on top of HEAD) and `forget` (the segments after the
forgotten facts, computed again). Segments' tensors are safetensors objects
in the store; encoding and decoding them is here, so that the store never
imports torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


def check_composes(method, hp, model, attached: list[dict]) -> None:
    """Refuse, before anything is computed, a weight edit below the block where an earlier segment's
    stored tensors were read (WISE's routing keys, Larimar's model encodings): they would no longer match."""
    mine = method.footprint(hp, model)
    if not mine.writes:
        return
    seen = set()
    for seg in attached:
        key = (seg["method"], repr(sorted(seg["hparams"].items())))
        if key in seen:
            continue
        seen.add(key)
        other = methods.get(seg["method"])
        theirs = other.footprint(hparams_mod.from_json(other.hparams_class, seg["hparams"]), model)
        if theirs.reads_below is not None and min(mine.writes) < theirs.reads_below:
            raise UserError(
                f"{method.name} would change block {min(mine.writes)}, below block {theirs.reads_below}, where the "
                f"{other.name} edits already applied read their {theirs.reads_what}; those would no longer match "
                f"the model. Apply with --set {mine.blocks_hparam}=... at blocks >= {theirs.reads_below}, "
                f"apply the {method.name} edits before the {other.name} ones, or forget the {other.name} edits first")


class Build:
    """A state in the making: the base with `segments` attached, and new segments computed on top."""

    def __init__(self, repo, segments: list[dict], allow_drift: bool = False):
        self.repo = repo
        self.allow_drift = allow_drift
        self.drift: list[dict] = []  # replays made under a changed dependency (with allow_drift)
        self.model, self.tok = materialize(repo, segments)
        self.env = method_env(repo, self.model, self.tok, segments)
        self._unsettled: list[dict] = []  # attached by `keep`, not yet settled (settled before the model runs)
        self._made_on: dict | None = None

    def keep(self, seg: dict) -> None:
        """Attach a stored segment as it is."""
        attach_segment(self.repo, self.model, seg, self.tok)
        self.env = self.env.after(seg)
        self._unsettled.append(seg)

    def settle(self, but=None) -> None:
        """Let the segments kept since the last call take effect (once for a run of kept segments); those of
        method `but`, if given, stay pending until a later call."""
        now = [s for s in self._unsettled if s["method"] != but]
        methods.settle(self.model, now)
        self._unsettled = [s for s in self._unsettled if s["method"] == but]

    @contextlib.contextmanager
    def computing(self, method):
        """Inside, the model as `method` computes on it: the kept segments have taken effect (those of
        `method` itself only if it reads them), and other methods' wrappers that change the model's inputs
        (visible_to_others = False: Larimar's read episode) are off."""
        self.settle(None if method.reads_own_segments else method.name)
        with contextlib.ExitStack() as stack:
            for other in methods.of(self.env.attached):
                if other.name != method.name and not other.visible_to_others:
                    stack.enter_context(other.hidden(self.model))
            yield

    def compute(self, method, hp, facts: list[Fact], seed: int, reuse: dict | None = None,
                replaying: dict | None = None) -> dict:
        """Compute one batch's tensors on the current model, store them, attach them; returns the segment.

        What is attached is what was stored (re-read from the object store), so the
        model in hand equals what `materialize` later rebuilds from the log. `replaying`
        is the logged segment this one computes again (forget): what it read besides the
        model comes from the objects it names, and what it was made on is compared first.
        """
        if self._made_on is None:  # one device, dtype and set of versions per command
            self._made_on = made_on_now(self.model)
        made_on = self._made_on
        if replaying is not None:
            self.check_drift(replaying, made_on)
        recorded = (replaying or {}).get("reads") or {}
        reads: dict = {}

        def stored(name: str, make) -> dict:
            if name in recorded:
                h = recorded[name]
                tensors = get_tensors(self.repo, h)  # a missing or damaged object raises DamagedRepository
            else:
                tensors = make()
                h = put_tensors(self.repo, tensors)
            reads[name] = h
            return tensors

        env = dataclasses.replace(self.env, stored=stored)
        t0 = time.perf_counter()
        try:
            with self.computing(method):
                tensors, info = method.compute(self.model, self.tok, facts, hp, seed, env, reuse)
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
            "made_on": made_on,  # what the result depends on besides the log: a replay compares it
        }
        if reads:
            seg["reads"] = reads  # objects read besides the model (not attached: MEMIT's C₀)
        self.keep(seg)
        return seg

    def check_drift(self, seg: dict, now: dict) -> None:
        """Refuse to compute `seg` again where what it was made on differs, unless drift is allowed (then noted)."""
        then = seg.get("made_on")
        if then is None:  # logged before memedit recorded it: nothing to compare
            return
        diff = {k: (then.get(k), now.get(k)) for k in DRIFT_KEYS if then.get(k) != now.get(k)}
        if not diff:
            return
        said = ", ".join(f"{k} {a} then, {b} now" for k, (a, b) in diff.items())
        if not self.allow_drift:
            raise UserError(f"this forget computes a {seg['method']} segment ({len(seg['facts'])} fact(s)) again, "
                            f"and it was made elsewhere ({said}): the result may differ from a replay where it was "
                            "made. Run it there, or pass --allow-drift to go on (the forget record notes the drift)")
        self.drift.append({"method": seg["method"], "facts": seg["facts"], "then": then, "now": now})


# what a replay compares with what a segment was made on (the memedit version is recorded, not compared)
DRIFT_KEYS = ("device", "dtype", "torch", "transformers")


def made_on_now(model) -> dict:
    """The device type, dtype and library versions a segment computed now depends on."""
    from memedit_cli.lm.models import input_device
    from memedit_cli.store import log as logmod

    versions = logmod.versions()
    return {"device": input_device(model).type, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "torch": versions["torch"], "transformers": versions["transformers"], "memedit": versions["memedit"]}
