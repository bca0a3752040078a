"""WISE (Wang et al., arXiv 2405.14768) as a memedit method.

- A segment (one apply batch, at most `save_freq` facts) is one knowledge
  shard: its facts are edited one after another into a delta D = W' − W
  inside the shard's own random mask (train.py). Shards start from W and
  switch other side memories off while they train, so a shard depends only on
  its own facts, seeds and the base model: forgetting a fact rebuilds only its
  shard (`independent = True`), and no other shard takes a gradient step.
- Stored per shard: D's values inside the mask (float32, the mask's nnz
  entries), the mask as packed bits (mask=random) or its columns (topk), and each edit's routing score; with
  `router=keys` also each edit's key and key threshold (router.py).
- `attach` adds the shard to the layer's `WISELayer`; `settle` (once per
  materialize) rebuilds the side memories from all shards: merge, one memory, the TIES merge of every shard;
  retrieve, one memory per group of consecutive shards holding `merge_freq`
  edits, each the TIES merge of its group. A memory's ε is `act_ratio` times
  the smallest routing score among its edits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from memedit_cli.errors import HparamsError
from memedit_cli.lm import prefixes
from memedit_cli.lm.arch import arch_for, extra_output, num_layers
from memedit_cli.lm.base_values import cached_json
from memedit_cli.lm.models import input_device
from memedit_cli.methods.base import Footprint, Method
from memedit_cli.methods.wise.hparams import WISEHparams

# Per family: the side-memory block as a fraction of depth, from the reference configs.
_FAMILY = {
    "llama": 27 / 32,  # LLaMA-2-7B: model.layers[27].mlp.down_proj (WISE, EasyEdit)
    "gptj": 21 / 28,  # GPT-J: transformer.h[21].mlp.fc_out
    "gpt2": 21 / 28,  # no reference config: placed like GPT-J
}
# Measured for particular shapes (model_type, hidden size, blocks): docs/methods/wise.md.
MEASURED: dict = {
    # SmolLM2-135M: WISE's activation router does not separate edits from unrelated prompts here, so
    # edits route by their subject keys, and each edit is its own shard and memory (no interference
    # between edits, forget without replay); block 20 and lr 3 by T=10 runs on CounterFact and ZsRE
    # (the same T=10 runs); the side memory of an edit is the columns of its 28 most active input
    # features (mask=topk: 65 KB of values instead of 0.71 MB), 5 prefixes and stop_loss 0.05 halve the steps;
    # block 24 and lr 6 halve them again, and the relation gate keeps same-subject prompts about other
    # relations in the main memory (ZsRE T=10: spec .28 -> .97, Gen 1.00 -> .81; issue 17 runs in wise.md)
    ("llama", 576, 30): dict(layer=24, router="keys", key_layer=3, edit_lr=6.0, variant="retrieve",
                             save_freq=1, merge_freq=1, mask="topk", mask_k=28, n_prefixes=5, stop_loss=0.05,
                             key_relation=True),
}


class WISE(Method):
    name = "wise"
    hparams_class = WISEHparams
    independent = True  # a segment does not depend on earlier WISE segments (see module docstring)
    measured = MEASURED

    def default_hparams(self, model) -> WISEHparams:
        return dataclasses.replace(self.paper_hparams(model), **self.measured_defaults(model))

    def paper_hparams(self, model) -> WISEHparams:
        """WISE's own settings, the side memory at the reference configs' depth."""
        n = num_layers(model.config)
        # keep at least one block above: the edit is read through the blocks above it
        return WISEHparams(layer=min(max(n - 2, 0), round(_FAMILY[arch_for(model.config).family] * n)))

    def batch_limit(self, hp: WISEHparams) -> int:
        return hp.save_freq

    def needs_subject_with(self, hp: WISEHparams) -> bool:
        return hp.router == "keys"  # a key is read at the subject's last token

    def resolve(self, hp: WISEHparams, model, tok, env) -> WISEHparams:
        n = num_layers(model.config)
        if not 0 <= hp.layer < n:
            raise HparamsError(f"layer must be a block between 0 and {n - 1}, got {hp.layer}")
        changes = {}
        if hp.router == "keys":
            key_layer = min(round(n / 10), hp.layer - 1) if hp.key_layer == -1 else hp.key_layer
            if not 0 <= key_layer < hp.layer:
                raise HparamsError(f"router=keys reads its keys below the side memory: key_layer must be a block "
                                   f"between 0 and {hp.layer - 1} (layer is {hp.layer}), got {key_layer}; "
                                   "set --set key_layer=N or a higher --set layer=N")
            changes["key_layer"] = key_layer
        mine = _routing({"router": hp.router, "key_layer": changes.get("key_layer"), "key_relation": hp.key_relation,
                         "relation_margin": hp.relation_margin})
        for seg in env.attached:  # one router for all side memories: refuse a mix before computing anything
            theirs = _routing(seg["hparams"])
            if seg["method"] == self.name and theirs != mine:
                said = (f"router={theirs[0]}" + (f", key_layer={theirs[1]}" if theirs[1] is not None else "")
                        + (f", key_relation=true, relation_margin={theirs[2]}" if theirs[2] is not None else ""))
                raise HparamsError(f"the WISE edits already applied route with {said}; apply with the same "
                                   "--set router=... (key_layer, key_relation, relation_margin), or forget those "
                                   "edits first")
        margins = hp.router == "activation" and 0 in (hp.alpha, hp.beta, hp.gamma)  # keys: no routing loss
        if not hp.prefixes:  # the unedited model is loaded only if the templates are not cached
            changes["prefixes"] = prefixes.cached(env.load_base, hp.n_prefixes, hp.prefix_length,
                                                  env.cache_dirs, env.model_key)
        if not hp.irrelevant:
            made = prefixes.cached(env.load_base, hp.n_irrelevant, 12, env.cache_dirs, env.model_key)
            changes["irrelevant"] = tuple(t.removesuffix(". {}") for t in made[1:])
        if margins:
            texts = changes.get("irrelevant", hp.irrelevant)
            digest = hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]
            # the unedited model's output norm, cached: on an edited state computing it loads a second model
            m = cached_json("wise", f"output-norm-{env.model_key[:16]}-{hp.layer}-{digest}.json",
                            lambda: output_norm(*env.load_base(), texts, hp.layer), env.cache_dirs)
            for k in ("alpha", "beta", "gamma"):
                if getattr(hp, k) == 0:
                    changes[k] = round(getattr(hp, f"{k}_rel") * m, 4)
        return dataclasses.replace(hp, **changes)

    def compute(self, model, tok, facts, hp: WISEHparams, seed: int, env, reuse=None):
        import numpy as np
        import torch

        from memedit_cli.methods.wise.side import main_memory_only
        from memedit_cli.methods.wise.train import edit_shard

        name = arch_for(model.config).mlp_out_at(hp.layer)
        layer = model.get_submodule(name)
        base = getattr(layer, "base", layer)
        with main_memory_only(layer):
            D, mask, columns, scores, info = edit_shard(model, tok, facts, hp, seed, base, name, input_device(model))
        tensors = {"values": D[mask].float().cpu(), "scores": scores,
                   "shape": torch.tensor(list(D.shape), dtype=torch.int64)}
        if columns is None:  # a random mask: its bits, packed
            tensors["mask_bits"] = torch.from_numpy(np.packbits(mask.cpu().numpy().reshape(-1)))
        else:  # mask=topk: the input features say it all (k' indices instead of d_out·d_in bits)
            tensors["columns"] = columns
        if hp.router == "keys":  # read from the model as it stands: the route is decided there, below the memory
            from memedit_cli.methods.wise import router

            key_name = router.key_module(model, hp)
            # the subject's key, and the relation's words of each edit (key_relation), from one forward each
            keys, rel = router.prompt_keys(model, tok, facts, key_name, input_device(model))
            tensors["keys"] = keys
            tensors["key_tau"] = router.key_thresholds(model, tok, keys, hp.irrelevant, key_name, hp,
                                                       input_device(model))
            # and the floor a same-subject prompt reaches
            tensors["rel_keys"] = torch.cat(rel).half()  # (Σ m_i, d_in): float16, a cosine needs no more
            tensors["rel_counts"] = torch.tensor([len(r) for r in rel], dtype=torch.int64)
            tensors["rel_floor"] = torch.tensor(
                [router.relation_floor(model, tok, f, r, hp.relation_templates, key_name, input_device(model))
                 for f, r in zip(facts, rel)], dtype=torch.float32)
        return tensors, info

    def attach(self, model, tensors, hp: WISEHparams, tok=None) -> None:
        import numpy as np
        import torch

        from memedit_cli.methods.wise import router
        from memedit_cli.methods.wise.side import WISELayer

        name = arch_for(model.config).mlp_out_at(hp.layer)
        layer = model.get_submodule(name)
        if not isinstance(layer, WISELayer):
            parent, _, child = name.rpartition(".")
            layer = WISELayer(layer)
            setattr(model.get_submodule(parent), child, layer)
        from memedit_cli.methods.wise.train import activation_name

        layer.act_name = activation_name(model.config)
        shape = tuple(int(s) for s in tensors["shape"])
        numel = int(np.prod(shape))
        if tuple(layer.base.weight.shape) != shape:
            raise ValueError(f"a WISE shard of shape {shape} does not fit {name} {tuple(layer.base.weight.shape)}")
        if "columns" in tensors:  # mask=topk
            from memedit_cli.lm.arch import is_transposed
            from memedit_cli.methods.wise.train import column_mask

            index = column_mask(shape, tensors["columns"].long(), is_transposed(layer.base)).flatten().nonzero()[:, 0]
        else:
            index = torch.from_numpy(np.flatnonzero(np.unpackbits(tensors["mask_bits"].numpy())[:numel]))
        shard = {"index": index, "values": tensors["values"].float(),
                 "scores": tensors["scores"].float()}
        if "keys" in tensors:  # router=keys (resolve saw to it that all shards agree on the key block)
            shard.update(keys=tensors["keys"].float(), key_tau=tensors["key_tau"].float())
            if "rel_keys" in tensors:
                shard.update(rel_keys=tensors["rel_keys"].float(), rel_counts=tensors["rel_counts"].long(),
                             rel_floor=tensors["rel_floor"].float())
        layer.shards.append(shard)
        router.link(model, layer, hp)
        layer.unsettled = hp  # the memories are rebuilt from all shards once, in settle

    def settle(self, model) -> None:
        from memedit_cli.methods.wise.side import WISELayer

        for layer in model.modules():
            if isinstance(layer, WISELayer) and layer.unsettled is not None:
                layer.rebuild(layer.unsettled)
                layer.unsettled = None

    def footprint(self, hp: WISEHparams, model) -> Footprint:
        # router=keys: the keys are block key_layer's FFN activations, which every block below it computes
        if hp.router == "keys":
            return Footprint(reads_below=hp.key_layer,
                             reads_what=f"routing keys (router=keys, key_layer={hp.key_layer})")
        return Footprint()

    def snapshot(self, model, segments) -> tuple[dict, dict]:
        """The side memories and routing keys as an export describes and stores them (export.py)."""
        from memedit_cli.methods.wise.export import describe

        meta = {}
        for name, spec in describe(model).items():  # names that hold with or without a decoder wrapper
            if "router" in spec:
                router_name = _outside_wrappers(model, spec["router"]["module"])
                spec = dict(spec, router=dict(spec["router"], module=router_name))
            meta[_outside_wrappers(model, name)] = spec
        tensors = {}
        for name, spec in meta.items():
            for module in [name] + ([spec["router"]["module"]] if "router" in spec else []):
                buffers = model.get_submodule(module).named_buffers(recurse=False)
                tensors.update({f"{module}.{b}": t for b, t in buffers})
        return meta, tensors

    def restore(self, model, meta, tensors, tok=None) -> None:
        """The wrappers the exported modeling file builds, then their buffers."""
        import types

        import torch

        from memedit_cli.methods.wise.modeling_memedit_wise import attach_side_memories

        attach_side_memories(model, types.SimpleNamespace(memedit_wise=meta))
        with torch.no_grad():
            for name, t in tensors.items():
                module, _, buffer = name.rpartition(".")
                target = model.get_submodule(module).get_buffer(buffer)
                target.copy_(t.to(device=target.device, dtype=target.dtype))

    def reset(self, model) -> None:
        from memedit_cli.methods.wise import router

        router.reset(model)  # key routers drop the previous sequence's routes

    def explain(self, model, segments, prompt) -> list[dict]:
        """The side memory each WISELayer routed the last forward's first row to, as that memory's facts."""
        from memedit_cli.methods.wise.side import WISELayer

        ids = [f for s in segments if s["method"] == self.name for f in s["facts"]]  # shard order = attach order
        out = []
        for name, layer in model.named_modules():
            if not isinstance(layer, WISELayer) or layer.last_route is None or int(layer.last_route[0]) < 0:
                continue
            i = int(layer.last_route[0])
            start = sum(layer.edits[:i])  # memory i holds the edits after those of memories 0..i-1
            out.append({"facts": ids[start:start + layer.edits[i]], "method": self.name,
                        "how": f"side memory {i} of {name}"})
        return out

    def export_extras(self, model, out_dir) -> dict | None:
        from memedit_cli.methods.wise.export import export_extras

        return export_extras(model, out_dir)


def _outside_wrappers(model, name: str) -> str:
    """`name` without the `base` steps of wrappers around it (Larimar's decoder), when it names the same
    module that way: a snapshot restored before or after those wrappers finds it."""
    plain = ".".join(p for p in name.split(".") if p != "base")
    try:
        return plain if model.get_submodule(plain) is model.get_submodule(name) else name
    except AttributeError:
        return name


def _routing(h: dict) -> tuple:
    """What all WISE segments of a state must agree on: the router, the block its keys come from, and
    the relation gate."""
    router = h.get("router", "activation")
    if router != "keys":
        return router, None, None
    return router, h.get("key_layer"), (h.get("relation_margin", 0.0) if h.get("key_relation") else None)


def output_norm(model, tok, texts, layer: int) -> float:
    """m: the mean per-token ‖FFN output‖ of block `layer`'s projection on `texts` (the base model)."""
    import torch

    from memedit_cli.methods.wise.train import activation

    name = arch_for(model.config).mlp_out_at(layer)
    module = model.get_submodule(name)
    base = getattr(module, "base", module)
    norms = []
    for text in texts:
        enc = tok([text], return_tensors="pt").to(input_device(model))
        a = activation(model, name, enc["input_ids"], enc["attention_mask"])
        with torch.no_grad():
            norms.append(extra_output(base, a.float(), base.weight.float()).norm(dim=-1).mean())
    return float(torch.stack(norms).mean())
