"""Mixed methods: apply A then B, forget A's fact, and the state is B's fact alone, or B is refused up front.

Every ordered pair of methods on a tiny LLaMA. A weight edit (ft, MEMIT) of a layer WISE wraps goes to
the wrapped layer; Larimar's wrapper is off while another method computes, so nothing depends on it;
a weight edit below the block where an earlier segment read its stored tensors is refused.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import FACTS, FAST, PROBES, Memedit, logits, write_facts

SETTINGS = {
    "ft": FAST,
    "memit": ["--method", "memit", "--set", "v_num_grad_steps=4", "--set", "mom2_n_tokens=2000"],
    "wise": ["--method", "wise", "--set", "n_iter=5", "--set", "router=keys", "--set", "layer=1",
             "--set", "key_layer=0"],
    "larimar": ["--method", "larimar", "--set", "encoder=model", "--set", "context={prompt} {target}."],
}
# Larimar with encoder=model reads the hidden state entering block 1 of the 2-block model; MEMIT edits
# block 0 there by default, which would change what those encodings were read from (ft edits block 1)
REFUSED = {("larimar", "memit")}


def state_logits(m: Memedit):
    model, tok = m.state()
    return logits(model, tok, PROBES + ["Toko Yasuda plays the", "The Space Needle is in"])


@pytest.mark.parametrize("first,second", list(itertools.product(SETTINGS, repeat=2)))
def test_apply_a_then_b_then_forget_a_equals_b_alone(first, second, memedit, tiny_models, tmp_path):
    a = write_facts(tmp_path / "a.jsonl", FACTS[:1])
    b = write_facts(tmp_path / "b.jsonl", FACTS[1:2])
    memedit("init", "--model", tiny_models["llama"], "--device", "cpu")
    memedit("apply", a, *SETTINGS[first])
    def recorded():  # cache/ holds derived data (generated prompts), not edits
        return {k: v for k, v in memedit.tree().items() if not k.startswith("cache/")}

    before = recorded()
    result = memedit("apply", b, *SETTINGS[second], ok=False)
    if (first, second) in REFUSED:
        assert result.exit_code == 1, result.output
        assert "would change block 0, below block 1" in result.stderr and "forget the larimar edits" in result.stderr
        assert recorded() == before  # refused before any edit was computed or recorded
        return
    assert result.exit_code == 0, result.output
    memedit("forget", FACTS[0]["id"])
    fresh = Memedit(tmp_path / "fresh")
    fresh.dir.mkdir()
    fresh("init", "--model", tiny_models["llama"], "--device", "cpu")
    fresh("apply", b, *SETTINGS[second])
    ours, theirs = state_logits(memedit), state_logits(fresh)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), (ours - theirs).abs().max()


def test_forgetting_a_larimar_fact_keeps_the_later_segments_of_other_methods(memedit, tiny_models, tmp_path):
    memedit("init", "--model", tiny_models["llama"], "--device", "cpu")
    memedit("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *SETTINGS["larimar"])
    memedit("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), *SETTINGS["wise"])
    memedit("apply", write_facts(tmp_path / "c.jsonl", FACTS[2:]), "--method", "ft", "--set", "layer=1",
            "--set", "steps=3")
    from memedit_cli.store.repo import Repo

    memedit("forget", FACTS[0]["id"])
    repo = Repo.open(memedit.dir)
    rec = repo.record(repo.head())
    assert rec["timings"]["replayed_segments"] == 0  # they were computed with Larimar's wrapper off
    assert [s["facts"] for s in rec["rebuilt"]] == [[FACTS[1]["id"]], [FACTS[2]["id"]]]


def test_a_weight_edit_of_a_wrapped_layer_goes_to_the_layer_under_the_wrapper(memedit, tiny_models, tmp_path):
    from memedit_cli.methods.wise.side import WISELayer

    memedit("init", "--model", tiny_models["llama"], "--device", "cpu")
    memedit("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *SETTINGS["wise"])
    memedit("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), "--method", "ft", "--set", "layer=1",
            "--set", "steps=3", "--set", "lr=0.05")
    model, _ = memedit.state()
    layer = model.get_submodule("model.layers.1.mlp.down_proj")
    assert isinstance(layer, WISELayer)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).model.layers[1].mlp.down_proj.weight
    assert not torch.equal(layer.base.weight, base)  # ft's delta is in the wrapped layer's weight
