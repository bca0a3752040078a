"""WISE export: the merged folder loads with trust_remote_code and answers like memedit's own model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FACTS, logits, write_facts

EDITED = FACTS[0]["prompt"]  # "The Eiffel Tower is in"
UNRELATED = "The Space Needle is in"


def wise_layers(model) -> dict:
    return {name: m for name, m in model.named_modules() if type(m).__name__ == "WISELayer"}


def scores(model, layer, tok, texts) -> torch.Tensor:
    """(n_memories, B) routing scores of `layer` for a padded batch of `texts`."""
    from transformers.pytorch_utils import Conv1D

    seen = {}

    def keep_input(mod, args, out):  # returns None: the output is left alone
        seen["x"] = args[0]

    hook = layer.register_forward_hook(keep_input)
    try:
        logits(model, tok, texts)
    finally:
        hook.remove()
    x = seen["x"]  # (B, T, d_in)
    extra = [x @ d if isinstance(layer.base, Conv1D) else x @ d.T for d in layer.memories]  # each (B, T, d_out)
    if layer.act is not None:  # route_distance=activated: the distance of the activated outputs
        from transformers.activations import ACT2FN

        out, sigma = layer.base(x), ACT2FN[layer.act]
        extra = [sigma(out + e) - sigma(out) for e in extra]
    return torch.stack([e.norm(dim=-1).mean(-1) for e in extra])


@pytest.mark.parametrize("distance", ["delta", "activated"])
def test_export_keeps_side_memories_and_routing(repo, tiny, tmp_path, distance):
    from transformers import AutoModelForCausalLM

    repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "wise", "--set", "n_iter=5",
         "--set", f"route_distance={distance}")
    out = tmp_path / "out"
    repo("export", "--merged", out)

    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_memedit_wise.WISE")
    assert (out / "modeling_memedit_wise.py").is_file()
    ours, tok = repo.state()
    ours.eval()
    (name, layer), = wise_layers(ours).items()
    spec = config["memedit_wise"][name]
    assert spec["memories"] == len(layer.eps) >= 1 and spec["eps"] == layer.eps
    assert spec["shape"] == list(layer.base.weight.shape)
    assert spec["nnz"] == layer.nnz and layer.nnz[0] > 0  # one shard with a 20% mask: stored sparse
    assert spec["act"] == layer.act == (None if distance == "delta" else ours.config.to_dict().get(
        "hidden_act", ours.config.to_dict().get("activation_function")))

    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    assert type(exported).__name__ == config["auto_map"]["AutoModelForCausalLM"].split(".")[1]
    side = exported.get_submodule(name)
    assert type(side).__name__ == "WISELayer" and side.eps == layer.eps and side.act == layer.act
    for mine, theirs in zip(layer.memories, side.memories, strict=True):
        assert mine.abs().max() > 0 and torch.equal(mine, theirs)
    assert torch.equal(side.base.weight, layer.base.weight)

    # As stored: one padded batch, routed row by row in both models.
    texts = [EDITED, UNRELATED]
    got = logits(exported, tok, texts)
    assert torch.allclose(got, logits(ours, tok, texts), atol=1e-5)
    assert torch.equal(side.last_route, layer.last_route)
    assert side.last_route[0] == 0  # the edited prompt uses the side memory...
    assert not torch.allclose(got[0], logits(base, tok, texts)[0], atol=1e-4)  # ...which changes its logits

    # A tiny random model routes nearly everything to the side memory, so to see a row take the base
    # path move ε, in both models alike, between the two prompts' scores: the higher one alone is routed.
    s = scores(ours, layer, tok, texts)[0]
    assert torch.allclose(s, scores(exported, side, tok, texts)[0])
    hi = int(s.argmax())
    layer.eps = side.eps = [float(s.mean())]
    got = logits(exported, tok, texts)
    assert torch.allclose(got, logits(ours, tok, texts), atol=1e-5)
    assert side.last_route.tolist() == layer.last_route.tolist() == [0 if i == hi else -1 for i in range(2)]
    plain = logits(base, tok, texts)
    assert torch.allclose(got[1 - hi], plain[1 - hi], atol=1e-5)
    assert not torch.allclose(got[hi], plain[hi], atol=1e-4)

    # Cached generation routes each new token on its own: same tokens in both.
    enc = tok([EDITED], return_tensors="pt")
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": tok.pad_token_id}
    assert torch.equal(exported.generate(**enc, **kw), ours.generate(**enc, **kw))


@pytest.mark.parametrize("sets", [[], ["--set", "mask=topk", "--set", "mask_k=3", "--set", "key_relation=true"]],
                         ids=["random-mask", "topk-relation-gate"])
def test_export_with_the_key_router_reproduces_routes_logits_and_generation(repo, tiny, tmp_path, sets):
    from transformers import AutoModelForCausalLM

    repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "wise", "--set", "n_iter=5", "--set", "router=keys",
         "--set", "layer=1", "--set", "key_layer=0", "--set", "variant=retrieve", "--set", "merge_freq=1",
         "--batch-size", "2", "--set", f"irrelevant={json.dumps([UNRELATED])}", *sets)  # the pool τ is fitted on
    out = tmp_path / "out"
    repo("export", "--merged", out)
    ours, tok = repo.state()
    ours.eval()
    (name, layer), = wise_layers(ours).items()
    spec = json.loads((out / "config.json").read_text())["memedit_wise"][name]
    router = layer._router[0]
    assert spec["router"]["keys"] == router.counts == [2, 1]  # two shards, one memory each

    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    theirs = exported.get_submodule(spec["router"]["module"])
    assert type(theirs).__name__ == "KeyRouter"
    assert torch.equal(theirs.keys, router.keys) and torch.equal(theirs.tau, router.tau)
    assert theirs.owner.tolist() == router.owner.tolist() == [0, 0, 1]
    assert theirs.relation == router.relation == bool(sets)
    if sets:  # the relation gate: the edits' relation words and thresholds travel with the keys
        assert spec["router"]["relation"] == len(router.rel_keys) > 0
        assert torch.equal(theirs.rel_keys, router.rel_keys) and torch.equal(theirs.rel_tau, router.rel_tau)
        assert torch.equal(theirs.rel_owner, router.rel_owner)
    texts = [f["prompt"] for f in FACTS] + [UNRELATED]
    assert torch.allclose(logits(exported, tok, texts), logits(ours, tok, texts), atol=1e-5)
    assert torch.equal(exported.get_submodule(name).last_route, layer.last_route)
    assert layer.last_route[:3].tolist() == [0, 0, 1]  # each prompt's own shard

    from memedit_cli.lm.generate import greedy

    enc = tok([EDITED], return_tensors="pt")
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": tok.pad_token_id}
    theirs_ids = exported.generate(**enc, **kw)
    assert (tok.decode(theirs_ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            == greedy(ours, tok, EDITED, 4))
    assert exported.get_submodule(name).last_route.tolist() == [0]
