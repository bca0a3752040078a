"""`router=keys`: routing by the edits' subjects instead of WISE's activation score.

WISE routes a row to a side memory when ‖a(x)(W'−W)‖ is above a threshold. On
SmolLM2-135M that score does not separate edits from unrelated prompts of the
same relation template (docs/methods/wise.md). Here each edit leaves a key
instead: the FFN activation a (the input of block `key_layer`'s output
projection, (d_in,)) at the last token of its subject in the bare prompt. An
early block's activation there says mostly *which subject* this is, so a
rephrase that names the subject finds it and a prompt about another subject
does not, whatever template they share.

A key j gets its own threshold, fitted on the unrelated pool (hp.irrelevant):

    τ_j = max(key_threshold, max over the pool's positions of cos(a, k_j) + key_margin)

so a key that resembles ordinary text (a subject token that is also a common
word, or one the model treats as an attention sink) needs a closer match. The
routing itself is `KeyRouter` in modeling_memedit_wise.py (shared with the
export); this file computes keys and thresholds and keeps the router in step
with the shards.
"""

from __future__ import annotations

import torch

from memedit_cli.lm.arch import arch_for
from memedit_cli.lm.tokens import subject_first, subject_last
from memedit_cli.methods.wise import modeling_memedit_wise as modeling
from memedit_cli.methods.wise.train import activation


class KeyRouter(modeling.KeyRouter):
    """The exported KeyRouter, rebuilt from the shards' keys like WISELayer's memories."""

    def rebuild(self, groups, hp) -> None:
        """groups: per side memory, its shards (dicts with "keys" (n, d_in) and "key_tau" (n,), and for the
        relation gate "rel_keys" (Σ m, d_in), "rel_counts" (n,), "rel_floor" (n,))."""
        w = self.base.weight
        shards = [s for group in groups for s in group]
        d_in = self.keys.shape[1]
        self.keys = torch.cat([s["keys"] for s in shards]).to(w) if shards else w.new_zeros(0, d_in)
        self.tau = torch.cat([s["key_tau"] for s in shards]).to(w) if shards else w.new_zeros(0)
        n = len(self.keys)
        if hp.key_relation:
            rel, owner, tau, first = [], [], [], 0
            for s in shards:
                k = len(s["keys"])
                if "rel_keys" in s:  # shards made before the gate have none: their keys pass it
                    rel.append(s["rel_keys"])
                    owner.append(torch.repeat_interleave(torch.arange(first, first + k), s["rel_counts"]))
                    # the edit's own prompt scores 1: the cap keeps it routed whatever the floor
                    tau.append(torch.clamp(s["rel_floor"] + hp.relation_margin, max=0.95))
                else:
                    tau.append(torch.zeros(k))
                first += k
            self.set_relation(sum(len(r) for r in rel), n, d_in, w)
            if rel:
                self.rel_keys = torch.cat(rel).to(w)
                self.rel_owner = torch.cat(owner).to(device=w.device, dtype=torch.int32)
            self.rel_tau = (torch.cat(tau) if tau else torch.zeros(0)).to(w)
        else:
            self.set_relation(None, n, d_in, w)
        self.set_counts([sum(len(s["keys"]) for s in group) for group in groups])
        self.reset()


def key_module(model, hp) -> str:
    return arch_for(model.config).mlp_out_at(hp.key_layer)


def prompt_keys(model, tok, facts, name: str, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """From one forward per fact's bare prompt, at module `name`'s input a: (keys (n, d_in) float32: a at
    each fact's last subject token, [(m_i, d_in) float32, unit rows: a at each token outside the subject,
    the relation's words ("What is the product made by", "?")])."""
    keys, rels = [], []
    for fact in facts:
        enc = tok([fact.prompt], return_tensors="pt").to(device)
        a = activation(model, name, enc["input_ids"], enc["attention_mask"])[0].float().cpu()  # (T, d_in)
        start = fact.prompt.index(fact.subject)
        first = subject_first(tok, fact.prompt, start)
        last = subject_last(tok, fact.prompt, start + len(fact.subject))
        keys.append(a[last])
        keep = [t for t in range(a.shape[0]) if t < first or t > last]
        rels.append(torch.nn.functional.normalize(a[keep] if keep else a[-1:], dim=-1))
    return torch.stack(keys), rels


# (module name, texts, fingerprint of the weights below) -> [(T, d_in) normalized activations]: the
# unrelated pool is the same for every edit of an apply, so it runs once, not once per edit
_POOL: dict = {}


def _below(model, name: str) -> tuple:
    """A fingerprint of the weights that module `name`'s input depends on (the embeddings and the blocks up
    to its own): a cached activation is reused only while they are unchanged (another method's edit below
    changes them)."""
    layers = arch_for(model.config).layers
    block = int(name[len(layers) + 1:].split(".")[0])
    out = []
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.startswith(layers + "."):
                if int(pname[len(layers) + 1:].split(".")[0]) > block:
                    continue
            elif "emb" not in pname and "wte" not in pname and "wpe" not in pname:
                continue
            out.append(float(p.double().sum()))
    return tuple(out)


def pool_activations(model, tok, texts, name: str, device) -> list[torch.Tensor]:
    """[(T_i, d_in)] float32 on the CPU, unit rows: module `name`'s input for each text, one at a time
    (no padding positions); cached while the weights below are unchanged."""
    key = (name, tuple(texts), _below(model, name))
    if key not in _POOL:
        _POOL.clear()  # one pool per process: an old key's weights are gone
        acts = []
        for text in texts:
            enc = tok([text], return_tensors="pt").to(device)
            a = activation(model, name, enc["input_ids"], enc["attention_mask"])[0].float().cpu()  # (T, d_in)
            acts.append(torch.nn.functional.normalize(a, dim=-1))
        _POOL[key] = acts
    return _POOL[key]


def key_thresholds(model, tok, keys, texts, name: str, hp, device) -> torch.Tensor:
    """(n,) τ_j = max(key_threshold, the pool's best cosine to k_j + key_margin)."""
    k = torch.nn.functional.normalize(keys, dim=-1)  # (n, d_in)
    best = torch.full((len(keys),), -1.0)
    for a in pool_activations(model, tok, texts, name, device):
        best = torch.maximum(best, (a @ k.T).amax(0))
    return torch.clamp(best + hp.key_margin, min=hp.key_threshold)


def relation_score(a, rel) -> torch.Tensor:
    """How much of a relation key's words a text has: the mean over the key's rows of their best cosine to
    any of the text's positions (BERTScore's recall), for a (T, d_in) and rel (m, d_in) unit rows."""
    return (a @ rel.T).amax(0).mean()


def relation_floor(model, tok, fact, rel, templates, name: str, device) -> float:
    """The highest relation score of the fact's subject put in other relations' `templates`: what a
    same-subject prompt about something else reaches (the router's relation threshold starts there).
    One right-padded batch (real tokens keep their positions); padding positions are left out of the max."""
    side, tok.padding_side = tok.padding_side, "right"
    try:
        enc = tok([t.replace("{}", fact.subject) for t in templates], return_tensors="pt", padding=True).to(device)
    finally:
        tok.padding_side = side
    a = torch.nn.functional.normalize(activation(model, name, enc["input_ids"], enc["attention_mask"]).float(),
                                      dim=-1).cpu()  # (n, T, d_in)
    sims = (a @ rel.T).masked_fill(enc["attention_mask"].cpu()[..., None] == 0, -2.0)  # (n, T, m)
    return float(sims.amax(1).mean(1).max())


def link(model, layer, hp) -> None:
    """With router=keys, give the WISELayer `layer` a KeyRouter at block `key_layer` (resolve keeps all
    WISE segments of a state on one router and key block, so it is made once and never moves)."""
    if hp.router == "keys" and layer._router[0] is None:
        name = key_module(model, hp)
        router = KeyRouter(model.get_submodule(name), [])
        modeling.replace_module(model, name, router)
        layer._router = (router,)


def reset(model) -> None:
    """Start new sequences: every KeyRouter forgets the running margins of cached generation."""
    for m in model.modules():
        if isinstance(m, modeling.KeyRouter):
            m.reset()
