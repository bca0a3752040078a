"""Every supported model family, on a tiny random config of its own: each method's full round trip
(apply, ask, forget = a fresh repository without the fact, checkout base bit for bit, an export that
loads in stock transformers). Mixture-of-experts blocks: ft, memit and wise refuse with the reason,
the repository unchanged; larimar (no weight edit) goes round."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FACTS, FAST, Memedit, base_logits, logits, write_facts
from test_larimar import SHORT
from tiny import FAMILIES, build_tiny

MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
METHODS = {
    "ft": FAST,
    "memit": ["--method", "memit", "--set", "v_num_grad_steps=4"],
    "wise": ["--method", "wise", "--set", "n_iter=5"],
    "larimar": ["--method", "larimar", "--set", "encoder=model", "--set", SHORT],
}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("families")
    return {arch: build_tiny(base / arch, arch) for arch in FAMILIES}


def _fresh(tmp_path, name, model) -> Memedit:
    m = Memedit(tmp_path / name)
    m.dir.mkdir()
    m("init", "--model", model, "--device", "cpu")
    return m


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", [a for a in FAMILIES if a not in MOE])
def test_each_method_goes_round_on_each_family(family_models, tmp_path, arch, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = family_models[arch]
    repo = _fresh(tmp_path, "work", model_dir)
    args = METHODS[method]
    repo("apply", write_facts(tmp_path / "f.jsonl", FACTS[:2]), *args, "--batch-size", "1")
    edited = logits(*repo.state())
    assert not torch.equal(edited, base_logits(model_dir)), "the edits changed nothing"
    assert repo("ask", FACTS[0]["prompt"], "--max-new-tokens", "3").exit_code == 0

    repo("forget", FACTS[0]["id"])
    fresh = _fresh(tmp_path, "fresh", model_dir)
    fresh("apply", write_facts(tmp_path / "g.jsonl", FACTS[1:2]), *args, "--batch-size", "1")
    assert torch.allclose(logits(*repo.state()), logits(*fresh.state()), atol=1e-5)

    head = repo.json("status")["head"]
    repo("checkout", "base")
    assert torch.equal(logits(*repo.state()), base_logits(model_dir))
    repo("checkout", head)
    state = logits(*repo.state())
    out = tmp_path / "out"
    repo("export", "--merged", out)
    remote = json.loads((out / "memedit.json").read_text())["trust_remote_code"]
    assert remote == (method in ("wise", "larimar"))  # only the wrapper methods ship a modeling file
    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=remote).eval()
    assert torch.allclose(logits(exported, AutoTokenizer.from_pretrained(out)), state, atol=1e-5)


@pytest.mark.parametrize("arch", MOE)
def test_a_mixture_of_experts_model_refuses_weight_edits_and_takes_larimar(family_models, tmp_path, arch):
    repo = _fresh(tmp_path, "work", family_models[arch])
    facts = write_facts(tmp_path / "f.jsonl", FACTS[:2])
    before = repo.tree()
    for method in ("ft", "memit", "wise"):
        result = repo("apply", facts, *METHODS[method], ok=False)
        assert result.exit_code == 1 and "mixture of experts" in result.output and "larimar" in result.output
        assert repo.tree() == before
    repo("apply", facts, *METHODS["larimar"])
    assert not torch.equal(logits(*repo.state()), base_logits(family_models[arch]))
    repo("forget", FACTS[0]["id"], FACTS[1]["id"])
    assert torch.equal(logits(*repo.state()), base_logits(family_models[arch]))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_goes_round_on_a_bfloat16_model_and_keeps_its_dtype(tiny_models, tmp_path, method):
    tiny = tiny_models["llama"]
    repo = Memedit(tmp_path / "work")
    repo.dir.mkdir()
    repo("init", "--model", tiny, "--device", "cpu", "--dtype", "bfloat16")
    repo("apply", write_facts(tmp_path / "f.jsonl", FACTS[:2]), *METHODS[method], "--batch-size", "1")
    model, tok = repo.state()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    edited = logits(model, tok)
    head = repo.json("status")["head"]
    repo("checkout", "base")
    base = logits(*repo.state())
    assert not torch.equal(edited, base), "the edits changed nothing"
    repo("checkout", head)
    repo("forget", FACTS[0]["id"], FACTS[1]["id"])
    assert torch.equal(logits(*repo.state()), base)


def test_a_model_spread_onto_the_cpu_or_disk_is_refused_with_the_way_out():
    """Under device_map="auto" accelerate may offload what does not fit on the GPUs; an edit written into an
    offloaded layer would be dropped at its next reload, so load refuses and says what to do."""
    from memedit_cli.errors import ModelError
    from memedit_cli.lm.models import check_on_gpus

    check_on_gpus({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}, "m")
    for where in ("cpu", "disk"):
        with pytest.raises(ModelError, match=rf"model.layers.1.*{where}.*more GPUs.*--device cpu"):
            check_on_gpus({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": where, "lm_head": 1}, "m")
