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
from memedit_cli.lm.tokens import subject_last
from memedit_cli.methods.wise import modeling_memedit_wise as modeling
from memedit_cli.methods.wise.train import activation


class KeyRouter(modeling.KeyRouter):
    """The exported KeyRouter, rebuilt from the shards' keys like WISELayer's memories."""

    def rebuild(self, groups) -> None:
        """groups: per side memory, the [(keys (n, d_in), key_tau (n,))] of its shards."""
        w = self.base.weight
        pairs = [pair for group in groups for pair in group]
        d_in = self.keys.shape[1]
        self.keys = torch.cat([k for k, _ in pairs]).to(w) if pairs else w.new_zeros(0, d_in)
        self.tau = torch.cat([t for _, t in pairs]).to(w) if pairs else w.new_zeros(0)
        self.set_counts([sum(len(k) for k, _ in group) for group in groups])
        self.reset()


def key_module(model, hp) -> str:
    return arch_for(model.config).mlp_out_at(hp.key_layer)


def edit_keys(model, tok, facts, name: str, device) -> torch.Tensor:
    """(n, d_in) float32: a at module `name`'s input, at each fact's last subject token of its bare prompt."""
    keys = []
    for fact in facts:
        enc = tok([fact.prompt], return_tensors="pt").to(device)
        a = activation(model, name, enc["input_ids"], enc["attention_mask"])  # (1, T, d_in)
        at = subject_last(tok, fact.prompt, fact.prompt.index(fact.subject) + len(fact.subject))
        keys.append(a[0, at].float().cpu())
    return torch.stack(keys)


def key_thresholds(model, tok, keys, texts, name: str, hp, device) -> torch.Tensor:
    """(n,) τ_j = max(key_threshold, the pool's best cosine to k_j + key_margin)."""
    k = torch.nn.functional.normalize(keys, dim=-1)  # (n, d_in)
    best = torch.full((len(keys),), -1.0)
    for text in texts:  # one at a time: no padding positions
        enc = tok([text], return_tensors="pt").to(device)
        a = activation(model, name, enc["input_ids"], enc["attention_mask"])[0].float().cpu()  # (T, d_in)
        best = torch.maximum(best, (torch.nn.functional.normalize(a, dim=-1) @ k.T).amax(0))
    return torch.clamp(best + hp.key_margin, min=hp.key_threshold)


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
