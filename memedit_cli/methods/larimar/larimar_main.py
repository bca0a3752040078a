"""Larimar (Das et al., arXiv 2403.11901) as a memedit method.

- A segment (one apply batch) stores its episodes: the encoding z (C,) of
  each fact's text "prompt target_new" (float32, (n, C)) and the tokens of
  the context that is read before an in-scope prompt (`hp.context`).
- `attach` wraps the model's decoder in a `LarimarDecoder` (the decoder
  itself is kept as `base`, its weights untouched) and writes the segment's
  encodings into the memory M with the paper's sequential rule (α = +1,
  memory.py); `settle` solves M once from all attached episodes (the same
  least-squares memory the sequential writes reach, `EpisodicMemory.of`).
  M is a function of the stored encodings, so it is rebuilt when a state is
  materialized, like every other method's attachment; past K episodes the
  memory is rebuilt twice as large.
- While another method computes its edit, the wrapper reads nothing
  (`hidden`): no other segment depends on Larimar's, so forgetting a Larimar
  fact keeps every other segment as it is (`visible_to_others = False`).
- Segments do not depend on each other (`independent = True`): forgetting a
  fact takes its row out of its segment (the kept rows are reused, nothing
  is encoded again) and keeps every other segment as it is. The memory that
  results is the least-squares memory of the kept episodes, which the α = −1
  update reaches too (tests/test_larimar_memory.py checks that the two agree).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from pathlib import Path

from memedit_cli.errors import HparamsError, UserError
from memedit_cli.lm.arch import num_layers
from memedit_cli.methods.base import Footprint, Method
from memedit_cli.methods.larimar.hparams import LarimarHparams

TENSORS_FILE = "memedit_larimar.safetensors"
ENCODER_DIR = "larimar_encoder"


def episode_text(fact) -> str:
    """What is encoded and matched against queries: the fact as one sentence."""
    return f"{fact.prompt} {fact.target_new}"


# not the context: each episode stores its own context tokens, and an in-scope prompt reads its episode's
SHARED = ("memory_size", "ridge", "memory_seed", "scope", "relation_threshold", "threshold", "encoder",
          "encoder_layer", "mode", "adapter")


def _shared(h: dict) -> tuple:
    """What all Larimar segments of a state must agree on: they share one memory and one detector (whose
    threshold of the other scope does not matter)."""
    h = {**LarimarHparams.LEGACY, **h}
    unused = "threshold" if h["scope"] == "subject" else "relation_threshold"
    return tuple(None if k == unused else h.get(k) for k in SHARED)


def settings(hp: LarimarHparams) -> dict:
    """The run-time settings of the decoder wrapper (also written into an export's config)."""
    return {"scope": hp.scope, "relation_threshold": hp.relation_threshold, "threshold": hp.threshold,
            "encoder": hp.encoder, "encoder_layer": hp.encoder_layer, "mode": hp.mode}


class Larimar(Method):
    name = "larimar"
    hparams_class = LarimarHparams
    independent = True  # a segment's episodes do not depend on other segments (see module docstring)
    visible_to_others = False  # the read episode's text changes inputs: off while other methods compute
    reads_own_segments = False  # an episode is encoded by MiniLM or the decoder without the memory
    edits_ffn = False  # wraps the whole decoder: any family, mixture-of-experts ones too

    def default_hparams(self, model) -> LarimarHparams:
        return LarimarHparams()

    def needs_subject_with(self, hp: LarimarHparams) -> bool:
        return hp.scope == "subject"  # the subject is matched in prompts and taken out of the episode's

    def resolve(self, hp: LarimarHparams, model, tok, env) -> LarimarHparams:
        from memedit_cli.methods.larimar.encoder import MINILM_INSTALL, minilm_dir

        encoder = hp.encoder
        if encoder == "auto":
            encoder = "minilm" if minilm_dir() is not None else "model"
        elif encoder == "minilm" and minilm_dir() is None:
            raise HparamsError(f"encoder=minilm needs all-MiniLM-L6-v2: {MINILM_INSTALL} (or --set encoder=model)")
        n = num_layers(model.config)
        layer = -1
        if encoder == "model":
            layer = n // 2 if hp.encoder_layer == -1 else hp.encoder_layer
            if not 0 <= layer <= n:
                raise HparamsError(f"encoder_layer must be a block between 0 and {n} (the final hidden state), "
                                   f"got {layer}")
        hp = dataclasses.replace(hp, encoder=encoder, encoder_layer=layer)
        if hp.mode == "prefix":
            from memedit_cli.methods.larimar import prefix

            hp = dataclasses.replace(hp, adapter=prefix.find_adapter(env.cache_dirs, env.model_key, hp.adapter,
                                                                     encoder, layer))
        elif hp.adapter:
            raise HparamsError("adapter is read only with --set mode=prefix")
        mine = _shared(dataclasses.asdict(hp))
        for seg in env.attached:  # one memory for all Larimar segments: refuse a mix before computing anything
            if seg["method"] == self.name and _shared(seg["hparams"]) != mine:
                theirs = dict(zip(SHARED, _shared(seg["hparams"])))
                # None: the other scope's threshold, which does not matter (and cannot be --set)
                diff = " ".join(f"--set {k}={v if isinstance(v, str) else json.dumps(v)}"
                                for k, v in theirs.items() if v is not None and getattr(hp, k) != v)
                raise HparamsError(f"the Larimar edits already applied share one memory with other settings; "
                                   f"apply with theirs ({diff}), or forget those edits first")
        return hp

    def compute(self, model, tok, facts, hp: LarimarHparams, seed: int, env, reuse=None):
        import torch

        from memedit_cli.methods.larimar.modeling_memedit_larimar import pack_texts, subject_spans, without_subject

        if hp.scope == "subject":
            for f in facts:
                if not subject_spans(f.prompt, f.subject):
                    raise UserError(f"fact {f.id}: its subject {f.subject!r} occurs in its prompt only inside a "
                                    "word; scope=subject matches whole words (or --set scope=similarity)")
        subject = hp.scope == "subject"  # only that scope reads each episode's subject and relation
        relations = [without_subject(f.prompt, f.subject) for f in facts] if subject else []
        if reuse is not None:  # forget's replay of this segment: the kept facts' encodings are already stored
            row = {fid: i for i, fid in enumerate(reuse["facts"])}
            rows = [row[f.id] for f in facts]
            Z = reuse["tensors"]["episodes"][rows]
            R = reuse["tensors"]["relations"][rows] if subject else None
        else:
            both = encoder_for(model, tok, hp).encode([episode_text(f) for f in facts] + relations)  # one pass
            Z, R = both[:len(facts)], (both[len(facts):] if subject else None)
        if not (torch.isfinite(Z).all() and (R is None or torch.isfinite(R).all())):
            raise UserError("larimar: an episode's encoding is not finite; nothing was recorded")
        ids = [tok(hp.context.format(prompt=f.prompt, target=f.target_new), add_special_tokens=False)["input_ids"]
               for f in facts]
        _check_fit(model, tok, facts, ids)
        offsets = torch.tensor([0] + [len(i) for i in ids]).cumsum(0)
        from memedit_cli.methods.larimar.encoder import describe

        tensors = {"episodes": Z.float().contiguous(),  # (n, C)
                   "context_ids": torch.tensor([t for i in ids for t in i], dtype=torch.int64),
                   "context_offsets": offsets.to(torch.int64)}  # (n + 1,)
        if subject:
            subjects, subject_offsets = pack_texts([f.subject for f in facts])
            tensors.update(subjects=subjects, subject_offsets=subject_offsets,  # UTF-8 bytes, (n + 1,)
                           relations=R.float().contiguous())  # (n, C)
        if hp.mode == "prefix":  # the same adapter for every segment: an object of its own, stored once
            tensors["adapter"] = _adapter(hp, env, reuse)
        return tensors, {"encoder": describe(hp.encoder, hp.encoder_layer), "episodes": len(facts)}

    def attach(self, model, tensors, hp: LarimarHparams, tok=None) -> None:
        from memedit_cli.methods.larimar.modeling_memedit_larimar import unpack_texts, wrap

        if tok is None:
            raise ValueError("larimar.attach needs the model's tokenizer (the wrapper reads prompts as text)")
        decoder = wrap(model, settings(hp))
        parts = decoder._runtime.setdefault("segments", [])  # per attached segment, in attach order
        subjects = unpack_texts(tensors["subjects"], tensors["subject_offsets"]) if "subjects" in tensors else None
        parts.append((tensors["episodes"].double(), tensors["context_ids"], tensors["context_offsets"],
                      subjects, tensors.get("relations")))
        decoder._runtime["unsettled"] = (hp, tok, tensors)

    def settle(self, model) -> None:
        """The decoder reads all attached segments' episodes: concatenated once, not once per segment."""
        import torch

        from memedit_cli.methods.larimar.memory import EpisodicMemory
        from memedit_cli.methods.larimar.modeling_memedit_larimar import LarimarDecoder

        decoder = getattr(model, model.base_model_prefix)
        if not isinstance(decoder, LarimarDecoder) or decoder._runtime.get("unsettled") is None:
            return
        hp, tok, tensors = decoder._runtime.pop("unsettled")
        parts = decoder._runtime["segments"]
        Z = torch.cat([p[0] for p in parts])  # (n, C) float64, every episode in attach order
        n = len(Z)
        K = hp.memory_size if n <= hp.memory_size else 2 ** math.ceil(math.log2(n))  # past K, twice as large
        memory = decoder._runtime["memory"] = EpisodicMemory.of(Z, K, hp.ridge, hp.memory_seed)
        ends = torch.tensor([0] + [int(p[2][-1]) for p in parts]).cumsum(0)
        legacy = any(p[3] is None for p in parts)  # scope=similarity: segments store no subjects or relations
        decoder.set_memory(Z.float(), memory.M,
                           torch.cat([p[1] for p in parts]),
                           torch.cat([torch.zeros(1, dtype=torch.int64)] + [p[2][1:] + e for p, e in zip(parts, ends)]),
                           None if legacy else [s for p in parts for s in p[3]],
                           None if legacy else torch.cat([p[4] for p in parts]))
        if hp.mode == "prefix":  # every segment carries the same adapter (resolve sees to it)
            from memedit_cli.lm.models import input_device
            from memedit_cli.methods.larimar.modeling_memedit_larimar import PrefixAdapter

            decoder._runtime["adapter"] = PrefixAdapter.from_tensors(tensors, model.config).to(input_device(model))
        decoder.bind(tok, encoder_for(model, tok, hp) if hp.encoder == "minilm" else None)

    def snapshot(self, model, segments) -> tuple[dict, dict]:
        """The decoder's settings, episodes, memory and contexts (and adapter), as an export stores them."""
        decoder = getattr(model, model.base_model_prefix)
        return {"settings": decoder.settings}, _decoder_tensors(decoder)

    def restore(self, model, meta, tensors, tok=None) -> None:
        from memedit_cli.lm.models import input_device
        from memedit_cli.methods.larimar.encoder import minilm
        from memedit_cli.methods.larimar.modeling_memedit_larimar import PrefixAdapter, unpack_texts, wrap

        decoder = wrap(model, meta["settings"])
        subjects = unpack_texts(tensors["subjects"], tensors["subject_offsets"]) if "subjects" in tensors else None
        decoder.set_memory(tensors["episodes"], tensors["memory"], tensors["context_ids"], tensors["context_offsets"],
                           subjects, tensors.get("relations"))
        if "adapter.proj.weight" in tensors:
            decoder._runtime["adapter"] = PrefixAdapter.from_tensors(tensors, model.config).to(input_device(model))
        decoder.bind(tok, minilm(str(input_device(model))) if meta["settings"]["encoder"] == "minilm" else None)

    def footprint(self, hp: LarimarHparams, model) -> Footprint:
        # encoder=model: an episode's encoding is the hidden state entering block encoder_layer
        if hp.encoder == "model":
            return Footprint(reads_below=hp.encoder_layer,
                             reads_what=f"episode encodings (encoder=model, encoder_layer={hp.encoder_layer})")
        return Footprint()

    @contextlib.contextmanager
    def hidden(self, model):
        """The decoder reads no episode inside: another method's compute sees the model without Larimar."""
        decoder = getattr(model, model.base_model_prefix)
        runtime = getattr(decoder, "_runtime", None)
        if runtime is None:
            yield
            return
        before, runtime["hidden"] = runtime.get("hidden", False), True
        try:
            yield
        finally:
            runtime["hidden"] = before

    def explain(self, model, segments, prompt) -> list[dict]:
        """The episode the decoder read for the last forward's first row (none when out of scope)."""
        decoder = getattr(model, model.base_model_prefix)
        chosen = getattr(decoder, "last_episodes", None)
        if chosen is None or int(chosen[0]) < 0:
            return []
        ids = [f for s in segments if s["method"] == self.name for f in s["facts"]]  # episode order = attach order
        return [{"facts": [ids[int(chosen[0])]], "method": self.name, "how": "episode read"}]

    def train_adapter(self, load, corpus: str, overrides: dict, progress=None) -> dict:
        """`memedit larimar-train`: an adapter for mode=prefix, trained on the base model and kept in the
        per-user cache (env.cache_dirs[-1]); returns its record. `load()` -> (model, tok, env) of the
        base model, called once the settings and the corpus have been checked."""
        from memedit_cli import hparams as hparams_mod
        from memedit_cli.methods.larimar import prefix

        s = hparams_mod.resolve(prefix.TrainSettings(), overrides, "larimar-train settings")
        texts = prefix.read_corpus(corpus)
        model, tok, env = load()
        # the encoder as `apply` resolves it, so that an adapter and the edits that use it agree
        hp = self.resolve(LarimarHparams(encoder=s.encoder, encoder_layer=s.encoder_layer), model, tok, env)
        tensors, losses = prefix.train(model, tok, encoder_for(model, tok, hp), texts, s, progress)
        tail = losses[-min(20, len(losses)):]
        meta = {"encoder": hp.encoder, "encoder_layer": hp.encoder_layer, "settings": dataclasses.asdict(s),
                "corpus": str(corpus), "sentences": len(texts), "first_loss": round(losses[0], 4),
                "last_loss": round(sum(tail) / len(tail), 4)}
        return prefix.save_adapter(Path(env.cache_dirs[-1]), env.model_key, tensors, meta)

    def export_extras(self, model, out_dir) -> dict | None:
        from safetensors.torch import save_file

        from memedit_cli.methods.larimar.encoder import minilm_dir
        from memedit_cli.methods.larimar.modeling_memedit_larimar import unwrap

        decoder = unwrap(model)  # the weights save under their own names; the memory goes beside them
        if decoder is None:
            return None
        from memedit_cli.lm.arch import stock_class
        from memedit_cli.methods.larimar.modeling_memedit_larimar import PREFIX

        cls = stock_class(model, PREFIX)  # before anything is written
        out = Path(out_dir)
        tensors = {k: v.detach().cpu().contiguous() for k, v in _decoder_tensors(decoder).items()}
        save_file(tensors, str(out / TENSORS_FILE))
        config = dict(decoder.settings, tensors=TENSORS_FILE)
        if decoder.settings["encoder"] == "minilm":  # shipped inside the folder, so it loads offline
            shutil.copytree(minilm_dir(), out / ENCODER_DIR)
            config["encoder_dir"] = ENCODER_DIR
        model.config.memedit_larimar = config
        modeling = Path(__file__).with_name("modeling_memedit_larimar.py")
        shutil.copyfile(modeling, out / modeling.name)
        return {"auto_map": {"AutoModelForCausalLM": f"{modeling.stem}.{cls}"},
                "modeling_file": modeling.name}


def _decoder_tensors(decoder) -> dict:
    """What a LarimarDecoder holds besides the decoder: episodes (n, C), memory (K, C), the contexts'
    tokens and offsets, and the mode=prefix adapter (an export's tensors file, a state cache entry)."""
    import torch

    from memedit_cli.methods.larimar.modeling_memedit_larimar import pack_texts

    tensors = {"episodes": decoder.episodes, "memory": decoder.memory, "context_ids": decoder.context_ids,
               "context_offsets": decoder.context_offsets}
    if decoder.subjects is not None:
        tensors["subjects"], tensors["subject_offsets"] = pack_texts(decoder.subjects)
        tensors["relations"] = decoder.relations
    adapter = decoder._runtime.get("adapter")
    if adapter is not None:
        tensors.update({f"adapter.proj.{k}": v for k, v in adapter.proj.state_dict().items()},
                       **{"adapter.m": torch.tensor(adapter.m)})
    return tensors


def _adapter(hp: LarimarHparams, env, reuse) -> dict:
    """The adapter's tensors: from the segment being replayed, an attached segment, or the per-user cache
    (a repository carries its adapter, so a replay does not need the machine that trained it)."""
    from memedit_cli.methods.larimar import prefix

    stored = [reuse["tensors"]] if reuse else []
    stored += [env.segment_tensors(s) for s in env.attached
               if s["method"] == "larimar" and s["hparams"].get("adapter") == hp.adapter]
    for tensors in stored:
        if "adapter.proj.weight" in tensors:
            return {k: v for k, v in tensors.items() if k.startswith("adapter.")}
    return prefix.load_adapter(env.cache_dirs, env.model_key, hp.adapter)


def _check_fit(model, tok, facts, context_ids) -> None:
    """An in-scope prompt is read after its episode's context: both must fit the model's context length."""
    from memedit_cli.lm.tokens import context_length

    limit = context_length(model)
    for fact, ids in zip(facts, context_ids):
        need = len(ids) + len(tok(f"{fact.prompt} {fact.target_new}")["input_ids"])
        if limit is not None and need > limit:
            raise UserError(f"fact {fact.id}: its context and prompt with the target take {need} tokens, more than "
                            f"the model's {limit}; use a shorter --set context=... or a shorter fact")


def encoder_for(model, tok, hp: LarimarHparams):
    """The encoder these (resolved) hparams name, on the model's device."""
    from memedit_cli.lm.models import input_device
    from memedit_cli.methods.larimar.encoder import ModelEncoder, minilm

    if hp.encoder == "minilm":
        return minilm(str(input_device(model)))
    return ModelEncoder(model, tok, hp.encoder_layer)
