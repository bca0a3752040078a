"""MEMIT on tiny models: the factored update is the closed form, z is batch-independent,
forget after a sequence of batches equals a fresh repository, export is plain weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import FACTS, Memedit, base_logits, logits, write_facts
from tiny import SENTENCES

# few steps and a small statistics sample keep a tiny-model apply under a second
FAST_MEMIT = ["--method", "memit", "--set", "v_num_grad_steps=4", "--set", "mom2_n_tokens=2000"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(SENTENCES * 40))
    return path


def memit_args(corpus):
    return [*FAST_MEMIT, "--set", f"mom2_corpus={corpus}"]


def test_apply_changes_the_model_and_records_factors(repo, tiny, tmp_path, corpus):
    out = repo.json("apply", write_facts(tmp_path / "f.jsonl"), *memit_args(corpus))
    rec = repo.json("show", out["revision"])
    assert rec["method"] == "memit" and rec["hparams"]["context_templates"][0] == "{}"
    assert len(rec["hparams"]["context_templates"]) == 6 and rec["hparams"]["mom2_update_weight"] > 0
    model, tok = repo.state()
    assert not torch.allclose(logits(model, tok), base_logits(tiny), atol=1e-5)


def test_factored_update_equals_the_dense_closed_form(tiny_models, tmp_path, corpus):
    from memedit_cli.facts import Fact
    from memedit_cli.lm import models
    from memedit_cli.methods.base import Env
    from memedit_cli.methods.memit import MEMIT
    from memedit_cli.methods.memit.compute_ks import KeyReader, key_rows
    from memedit_cli.stats import CorpusSpec, second_moments

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models["llama"])},
                              "dtype": "float32", "device": "cpu"})
    env = Env([tmp_path / "cache"], "tiny", lambda: (model, tok), lambda: (model, tok))
    method = MEMIT()
    hp = dataclasses.replace(method.default_hparams(model), layers=(0, 1), v_num_grad_steps=3,
                             mom2_corpus=str(corpus), mom2_n_tokens=2000)
    hp = method.resolve(hp, model, tok, env)
    facts = [Fact(**f) for f in FACTS]
    before = {n: p.clone() for n, p in model.named_parameters()}
    tensors, _ = method.compute(model, tok, facts, hp, 0, env)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "compute changed the model"

    # the first layer of the band, by hand: ΔW = R Kᵀ (λ C₀ + K Kᵀ)⁻¹ in float64
    name = "model.layers.0.mlp.down_proj"
    keys, current = KeyReader(model, key_rows(tok, facts, hp.context_templates, "cpu"), (0,), top=1).read(0)
    C = second_moments(model, tok, [name], CorpusSpec(str(corpus), 2000, seq_len=64), "tiny",
                       [tmp_path / "cache"])[name]
    K, R = keys.T, (tensors["z"].double() - current).T / 2
    dense = R @ K.T @ torch.linalg.inv(hp.mom2_update_weight * C + K @ K.T)
    factored = tensors[f"{name}.U"].double() @ tensors[f"{name}.V"].double().T
    assert tensors[f"{name}.U"].shape == (32, 3) and tensors[f"{name}.V"].shape == (64, 3)  # rank <= 3 facts
    assert torch.allclose(factored, dense, rtol=1e-4, atol=1e-7)
    assert factored.abs().max() > 0


def test_keys_in_chunks_stopping_at_block_L_equal_one_full_forward(tiny_models, monkeypatch):
    from memedit_cli.facts import Fact
    from memedit_cli.lm import models
    from memedit_cli.lm.nethook import capture
    from memedit_cli.methods.memit import compute_ks
    from memedit_cli.methods.memit import rows as rows_mod

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models["llama"])},
                              "dtype": "float32", "device": "cpu"})
    facts, templates = [Fact(**f) for f in FACTS], ("{}", "A prefix. {}")
    monkeypatch.setattr(compute_ks, "CHUNK_ROWS", 4)  # 6 rows: two chunks
    rows = rows_mod.build(tok, facts, templates, "cpu", with_target=False, with_kl=False)
    keys, current = compute_ks.KeyReader(model, rows, (0,), top=1).read(0)
    proj, block = "model.layers.0.mlp.down_proj", "model.layers.1"
    with torch.no_grad(), capture(model, inputs=[proj], outputs=[block]) as seen:
        model(input_ids=rows.input_ids, attention_mask=rows.attention_mask)
    at = (torch.arange(len(rows.lookup)), rows.lookup)
    want_keys = seen[f"in:{proj}"][at].double().reshape(3, 2, -1).mean(1)  # rows: fact by fact, template by template
    assert torch.allclose(keys, want_keys, atol=1e-6)
    assert torch.allclose(current, seen[f"out:{block}"][at].double()[::2], atol=1e-6)  # the bare prompt rows


@pytest.mark.parametrize("keep_bytes", [None, 0])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_key_reads_resumed_above_an_updated_layer_equal_full_forwards(tiny_models, monkeypatch, arch, keep_bytes):
    """KeyReader: after layer 0's update, read(1) re-runs blocks 0..1 from block 0's kept input (or, over
    the memory budget, from the embeddings), on rows cut after the subject, in chunks; it must give what
    a full forward of the updated model gives."""
    from memedit_cli.facts import Fact
    from memedit_cli.lm import models
    from memedit_cli.lm.arch import arch_for
    from memedit_cli.lm.nethook import capture
    from memedit_cli.methods.base import weight_module
    from memedit_cli.methods.memit import compute_ks

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models[arch])},
                              "dtype": "float32", "device": "cpu"})
    arch_ = arch_for(model.config)
    facts, templates = [Fact(**f) for f in FACTS], ("{}", "A prefix. {}", "Longer prefix text here. {}")
    monkeypatch.setattr(compute_ks, "CHUNK_ROWS", 4)  # 9 rows: three chunks
    if keep_bytes is not None:
        monkeypatch.setattr(compute_ks, "KEEP_BYTES", keep_bytes)
    rows = compute_ks.key_rows(tok, facts, templates, "cpu")
    reader = compute_ks.KeyReader(model, rows, (0, 1))
    assert bool(reader.keep) == (keep_bytes is None) and len(reader.key_runs) == (3 if reader.keep else 0)
    first = reader.read(0)
    proj0 = weight_module(model, arch_.mlp_out_at(0))
    with torch.no_grad():
        proj0.weight.add_(0.5 * torch.randn_like(proj0.weight))  # the "update" of layer 0
    keys, current = reader.read(1)
    proj1, block = arch_.mlp_out_at(1), arch_.layer(1)
    with torch.no_grad(), capture(model, inputs=[proj1], outputs=[block]) as seen:
        model(input_ids=rows.input_ids, attention_mask=rows.attention_mask)
    at = (torch.arange(len(rows.lookup)), rows.lookup)
    want_keys = seen[f"in:{proj1}"][at].double().reshape(3, 3, -1).mean(1)
    assert torch.allclose(keys, want_keys, atol=1e-5)
    assert torch.allclose(current, seen[f"out:{block}"][at].double()[::3], atol=1e-5)
    assert not torch.allclose(current, first[1], atol=1e-3), "the update must reach block 1's output"
    with pytest.raises(ValueError, match="in turn"):
        reader.read(1)


def test_the_null_space_projector_is_computed_once_per_statistics(monkeypatch):
    from memedit_cli.methods.memit import memit_main
    from memedit_cli.methods.memit.hparams import MEMITHparams

    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda C: calls.append(1) or eigh(C))
    monkeypatch.setattr(memit_main, "_PROJECTORS", {})
    a = torch.randn(16, 64, dtype=torch.float64)
    C, hp = a @ a.T / 64, MEMITHparams(update="alphaedit", alphaedit_threshold=0.5)
    P = memit_main._null_space_projector(C, hp)
    evals, evecs = eigh(C)
    null = evecs[:, evals < 0.5]
    assert torch.allclose(P, null @ null.T) and 0 < null.shape[1] < 16
    assert memit_main._null_space_projector(C.clone(), hp) is P and len(calls) == 1  # same bytes: kept
    other = memit_main._null_space_projector(C, dataclasses.replace(hp, alphaedit_threshold=0.1))
    assert len(calls) == 2 and not torch.allclose(other, P)
    memit_main._null_space_projector(C + 1e-9 * torch.eye(16, dtype=torch.float64), hp)
    assert len(calls) == 3  # another C₀: computed


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_z_does_not_depend_on_the_other_facts_of_the_batch(tiny_models, arch):
    from memedit_cli.facts import Fact
    from memedit_cli.lm import models
    from memedit_cli.methods.memit.compute_z import compute_z
    from memedit_cli.methods.memit.hparams import MEMITHparams

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models[arch])},
                              "dtype": "float32", "device": "cpu"})
    hp = MEMITHparams(layers=(0,), v_num_grad_steps=6, context_templates=("{}", "A prefix. {}"))
    facts = [Fact(**f) for f in FACTS]
    together, _ = compute_z(model, tok, facts, hp, 0, hp.context_templates, "cpu")
    alone, _ = compute_z(model, tok, facts[1:2], hp, 0, hp.context_templates, "cpu")
    # equal up to float error: batched matmuls round differently, and Adam amplifies it a little
    assert torch.allclose(together[1:2], alone, rtol=1e-4, atol=1e-5)
    slow, _ = compute_z(model, tok, facts, dataclasses.replace(hp, z_fast_path=False), 0, hp.context_templates, "cpu")
    assert torch.allclose(together, slow, rtol=1e-4, atol=1e-5), "the fast path must give the full model's z"


def test_z_optimized_in_passes_equals_z_of_the_whole_batch(tiny_models):
    """hparams.z_batch: the facts' z in passes of 2 (so only one pass's activations are alive) are the batch's."""
    from memedit_cli.facts import Fact
    from memedit_cli.lm import models
    from memedit_cli.methods.memit.compute_z import compute_z
    from memedit_cli.methods.memit.hparams import MEMITHparams

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models["llama"])},
                              "dtype": "float32", "device": "cpu"})
    hp = MEMITHparams(layers=(0,), v_num_grad_steps=6, context_templates=("{}", "A prefix. {}"))
    facts = [Fact(**f) for f in FACTS]
    together, info = compute_z(model, tok, facts, hp, 0, hp.context_templates, "cpu")
    passes, info2 = compute_z(model, tok, facts, dataclasses.replace(hp, z_batch=2), 0, hp.context_templates, "cpu")
    assert torch.allclose(together, passes, rtol=1e-4, atol=1e-5)
    assert info2["z_passes"] == 2 and "z_passes" not in info
    assert info2["z_reached"] == info["z_reached"] and info2["z_steps"] == info["z_steps"]


@pytest.mark.parametrize("rule", [[], ["update=sequential", "norm_anchor=true"], ["update=alphaedit",
                                                                                 "alphaedit_threshold=1e9"]],
                         ids=["memit", "sequential+nas", "alphaedit"])
@pytest.mark.parametrize("gone", ["darrieux", "yasuda"])
def test_forget_after_a_sequence_of_batches_equals_a_fresh_repository(repo, tiny, tmp_path, corpus, gone, rule):
    """Exact for every update rule: the earlier keys (Kp) and NAS's anchor come from the rebuilt segments."""
    args = memit_args(corpus) + [a for r in rule for a in ("--set", r)]
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:2]), *args)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[2:]), *args)
    # each apply records how long C₀ took it (computed by the first, read from the cache by the second)
    assert all("stats_s" in s["info"] for r in repo.json("log") for s in r["segments"])
    rec = repo.json("forget", gone)
    replayed = repo.json("show", rec["revision"])["rebuilt"]
    if gone == "darrieux":  # first batch: its z is reused, the second batch is recomputed
        assert replayed[0]["info"].get("z_reused") and "z_steps" in replayed[1]["info"]
    after = logits(*repo.state())

    fresh = Memedit(tmp_path / "fresh")
    fresh.dir.mkdir()
    fresh("init", "--model", tiny, "--device", "cpu")
    first = [f for f in FACTS[:2] if f["id"] != gone]
    fresh("apply", write_facts(tmp_path / "fa.jsonl", first), *args)
    rest = [f for f in FACTS[2:] if f["id"] != gone]
    if rest:
        fresh("apply", write_facts(tmp_path / "fb.jsonl", rest), *args)
    assert torch.allclose(after, logits(*fresh.state()), rtol=1e-5, atol=1e-5)


def test_forget_resolve_keeps_later_z_and_solves_again(repo, tmp_path, corpus):
    """--resolve: the later batch keeps its stored z (no gradient steps), is solved again on the new state,
    and the record says so; the exact replay (the default) recomputes z instead."""
    from memedit_cli.replay import load_segment_tensors
    from memedit_cli.store.repo import Repo

    args = memit_args(corpus)
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:2]), *args)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[2:]), *args)
    r = Repo.open(repo.dir)
    before = load_segment_tensors(r, r.segments_at(r.head())[1])
    rec = repo.json("forget", "darrieux", "--resolve")
    full = repo.json("show", rec["revision"])
    assert full.get("resolve") is True
    later = full["rebuilt"][1]
    assert later["info"].get("z_reused") and "z_steps" not in later["info"]
    after = load_segment_tensors(r, later)
    assert torch.equal(after["z"], before["z"])  # the stored targets, bit for bit
    name = next(k for k in after if k.endswith(".U"))
    assert not torch.equal(after[name], before[name])  # re-solved: the state below it changed


def test_forget_resolve_with_stored_keys_reads_no_keys(repo, tmp_path, corpus):
    """--resolve --stored-keys: a later batch that stored its keys (update=sequential) is solved with them, bit for
    bit, and with its stored z; it still reads its current outputs, so its update changes with the state below."""
    from memedit_cli.replay import load_segment_tensors
    from memedit_cli.store.repo import Repo

    args = [*memit_args(corpus), "--set", "update=sequential", "--set", "layers=[0,1]"]  # a band of two: keys move
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:2]), *args)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[2:]), *args)
    r = Repo.open(repo.dir)
    before = load_segment_tensors(r, r.segments_at(r.head())[1])
    rec = repo.json("forget", "darrieux", "--resolve", "--stored-keys")
    full = repo.json("show", rec["revision"])
    assert full.get("resolve") is True and full.get("stored_keys") is True
    later = full["rebuilt"][1]
    assert later["info"].get("keys_stored") and "z_steps" not in later["info"]
    after = load_segment_tensors(r, later)
    names = sorted(k[:-2] for k in after if k.endswith(".K"))  # the band's layers, lowest first
    assert names and all(torch.equal(after[f"{n}.K"], before[f"{n}.K"]) for n in names)
    assert torch.equal(after["z"], before["z"])
    assert not torch.equal(after[f"{names[0]}.U"], before[f"{names[0]}.U"])  # R is read on the new state

    # the plain --resolve reads the keys again: above the band's first layer (whose keys no update of the band
    # reaches) they differ from the stored ones on the changed state
    repo("checkout", "HEAD~1")
    rec = repo.json("forget", "darrieux", "--resolve")
    reread = load_segment_tensors(r, repo.json("show", rec["revision"])["rebuilt"][1])
    assert not torch.equal(reread[f"{names[-1]}.K"], before[f"{names[-1]}.K"])


def test_export_is_plain_weights(repo, tmp_path, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo("apply", write_facts(tmp_path / "f.jsonl"), *memit_args(corpus))
    out = tmp_path / "out"
    repo("export", "--merged", out)
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(model, AutoTokenizer.from_pretrained(out)), logits(*repo.state()))


def _tiny_memit(tiny_models, tmp_path):
    from memedit_cli.lm import models
    from memedit_cli.methods.base import Env
    from memedit_cli.methods.memit import MEMIT

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models["llama"])},
                              "dtype": "float32", "device": "cpu"})
    env = Env([tmp_path / "cache"], "tiny", lambda: (model, tok), lambda: (model, tok))
    return model, tok, MEMIT(), env


@pytest.mark.parametrize("form", ["alphaedit", "null_space"])
def test_null_space_update_leaves_the_preserved_directions_alone(tiny_models, tmp_path, corpus, form):
    """alphaedit: P from an absolute threshold on C₀'s eigenvalues; the old null_space: relative to their mean."""
    from memedit_cli.facts import Fact
    from memedit_cli.stats import CorpusSpec, second_moments

    model, tok, method, env = _tiny_memit(tiny_models, tmp_path)
    name = "model.layers.1.mlp.down_proj"
    C = second_moments(model, tok, [name], CorpusSpec(str(corpus), 2000, seq_len=64), "tiny",
                       [tmp_path / "cache"])[name]
    evals, evecs = torch.linalg.eigh(C)
    limit = float(evals.median())
    rule = dict(update="alphaedit", alphaedit_threshold=limit) if form == "alphaedit" else \
        dict(null_space=True, null_space_threshold=limit / float(evals.mean()))
    hp = dataclasses.replace(method.default_hparams(model), layers=(1,), v_num_grad_steps=3, mom2_corpus=str(corpus),
                             mom2_n_tokens=2000, **rule)
    hp = method.resolve(hp, model, tok, env)
    tensors, info = method.compute(model, tok, [Fact(**f) for f in FACTS], hp, 0, env)
    kept = evecs[:, evals >= limit]  # directions the statistics say are in use
    delta = tensors[f"{name}.U"].double() @ tensors[f"{name}.V"].double().T
    assert delta.abs().max() > 0
    assert (delta @ kept).norm() < 1e-4 * delta.norm()
    assert info["null_dims"] == [int((evals < limit).sum())]


@pytest.mark.parametrize("rule", [dict(update="sequential", mom2_update_weight=1e-3),
                                  dict(update="alphaedit", alphaedit_threshold=1e9, null_space_l2=1e-4),
                                  dict(null_space=True, null_space_threshold=0.9, null_space_l2=1e-4)],
                         ids=["sequential", "alphaedit", "null_space"])
def test_later_batches_keep_earlier_batches_keys(tiny_models, tmp_path, corpus, rule):
    """The Kp term: a later batch changes the earlier batches' keys far less when their stored keys
    are in the solve than when they are not."""
    from memedit_cli.facts import Fact
    from memedit_cli.methods.base import Env

    model, tok, method, env = _tiny_memit(tiny_models, tmp_path)
    hp = dataclasses.replace(method.default_hparams(model), layers=(1,), v_num_grad_steps=3, mom2_corpus=str(corpus),
                             mom2_n_tokens=2000, **rule)
    hp = method.resolve(hp, model, tok, env)
    facts = [Fact(**f) for f in FACTS]
    first, _ = method.compute(model, tok, facts[:2], hp, 0, env)
    name = "model.layers.1.mlp.down_proj"
    assert first[f"{name}.K"].shape == (64, 2)  # (d_in, n): stored for later batches
    method.attach(model, first, hp)
    seg = {"method": "memit", "hparams": dataclasses.asdict(hp)}
    moved = {}
    for label, attached in (("with", [seg]), ("without", [])):
        env = Env([tmp_path / "cache"], "tiny", lambda: (model, tok), lambda: (model, tok), attached, lambda s: first)
        second, _ = method.compute(model, tok, facts[2:], hp, 0, env)
        delta = second[f"{name}.U"].double() @ second[f"{name}.V"].double().T  # (d_out, d_in)
        moved[label] = (delta @ first[f"{name}.K"].double()).norm() / delta.norm()
    assert moved["with"] < 0.5 * moved["without"]


def test_plain_memit_stores_no_keys(tiny_models, tmp_path, corpus):
    from memedit_cli.facts import Fact

    model, tok, method, env = _tiny_memit(tiny_models, tmp_path)
    hp = dataclasses.replace(method.default_hparams(model), layers=(1,), v_num_grad_steps=2, mom2_corpus=str(corpus),
                             mom2_n_tokens=2000)
    tensors, _ = method.compute(model, tok, [Fact(**FACTS[0])], method.resolve(hp, model, tok, env), 0, env)
    assert sorted(tensors) == ["model.layers.1.mlp.down_proj.U", "model.layers.1.mlp.down_proj.V", "z"]


def test_norm_anchor_rescales_value_vectors_to_the_first_batch(tiny_models, tmp_path, corpus):
    """NAS: v* = v₀ + δ has the anchor's norm (or is v₀ when over twice it); a later batch uses the first's anchor."""
    from memedit_cli.facts import Fact
    from memedit_cli.methods.base import Env
    from memedit_cli.methods.memit.compute_ks import KeyReader, key_rows
    from memedit_cli.methods.memit.memit_main import _anchor

    model, tok, method, env = _tiny_memit(tiny_models, tmp_path)
    hp = dataclasses.replace(method.default_hparams(model), layers=(1,), v_num_grad_steps=3, mom2_corpus=str(corpus),
                             mom2_n_tokens=2000, norm_anchor=True)
    hp = method.resolve(hp, model, tok, env)
    facts = [Fact(**f) for f in FACTS]
    first, info = method.compute(model, tok, facts[:2], hp, 0, env)
    anchor = float(first["nas_anchor"])
    assert info["norm_anchor"]["anchor"] == round(anchor, 4)
    v0, h = KeyReader(model, key_rows(tok, facts[:2], hp.context_templates, "cpu"), (1,)).values()
    z, _, _ = _anchor(v0, h, first["z"], [])  # the targets the solve used
    vstar = (z.double() - h + v0).norm(dim=1)
    assert not torch.allclose(z, first["z"])  # the stored z is as optimized; the anchored one differs
    for norm, plain in zip(vstar.tolist(), v0.norm(dim=1).tolist()):
        assert norm == pytest.approx(anchor, rel=1e-4) or norm == pytest.approx(plain, rel=1e-4)
    method.attach(model, first, hp)
    seg = {"method": "memit", "hparams": dataclasses.asdict(hp)}
    env = Env([tmp_path / "cache"], "tiny", lambda: (model, tok), lambda: (model, tok), [seg], lambda s: first)
    second, _ = method.compute(model, tok, facts[2:], hp, 0, env)
    assert float(second["nas_anchor"]) == anchor


@pytest.mark.parametrize("fact,says", [
    (dict(FACTS[0], subject="Big Ben"), "does not occur"),
])
def test_memit_bad_input(repo, tmp_path, corpus, fact, says):
    before = repo.tree()
    result = repo("apply", write_facts(tmp_path / "bad.jsonl", [fact]), *memit_args(corpus), ok=False)
    assert result.exit_code == 1 and says in result.stderr
    assert repo.tree() == before


def test_a_batch_too_big_for_memory_is_refused(repo, tmp_path, corpus, monkeypatch):
    from memedit_cli.methods.memit import memit_main

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1000000000 bytes")

    monkeypatch.setattr(memit_main, "compute_z", out_of_memory)
    before = repo.tree()
    result = repo("apply", write_facts(tmp_path / "f.jsonl"), *memit_args(corpus), ok=False)
    assert result.exit_code == 1 and "--batch-size" in result.stderr
    assert {k for k in repo.tree() if not k.startswith("cache/")} == {k for k in before if not k.startswith("cache/")}


def test_stats_command_fills_the_shared_cache(repo, corpus):
    import os
    from pathlib import Path

    out = repo("stats", "--corpus", corpus, "--tokens", "2000", "--layers", "0")
    assert "1 layer(s)" in out.stdout
    in_repo = [p.name for p in (repo.dir / ".memedit" / "cache" / "stats").rglob("*.safetensors")]
    assert in_repo in (["model.layers.0.mlp.down_proj.safetensors"], ["transformer.h.0.mlp.c_proj.safetensors"])
    shared = list((Path(os.environ["MEMEDIT_HOME"]) / "stats").rglob(in_repo[0]))
    assert shared, "the per-user cache gets a copy for other repositories of the same model"


def test_stats_layers_take_ranges_as_the_torchrun_entry_does(repo, corpus):
    out = repo("stats", "--corpus", corpus, "--tokens", "2000", "--layers", "0-1")
    assert "2 layer(s)" in out.stdout and ".0.mlp" in out.stdout and ".1.mlp" in out.stdout


def test_memit_records_follow_the_schema(repo, tmp_path, corpus):
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).resolve().parents[1] / "formats" / "record.schema.json").read_text())
    repo("apply", write_facts(tmp_path / "f.jsonl", FACTS[:2]), *memit_args(corpus))
    repo("forget", "eiffel")
    for rec in repo.json("log"):
        jsonschema.validate(rec, schema)


def test_kl_term_follows_the_reference():
    """kl_direction="reference" is what kmeng01/memit computes with torch's kl_div; "reverse" is the other way."""
    from memedit_cli.methods.memit.compute_z import kl_term

    g = torch.Generator().manual_seed(0)
    init = torch.log_softmax(torch.randn(3, 11, generator=g), -1)
    cur = torch.log_softmax(torch.randn(3, 11, generator=g), -1)
    for i in range(3):
        ref = torch.nn.functional.kl_div(init[i:i + 1], cur[i:i + 1], log_target=True, reduction="batchmean")
        torch.testing.assert_close(kl_term(init, cur, "reference")[i], ref)
        back = torch.nn.functional.kl_div(cur[i:i + 1], init[i:i + 1], log_target=True, reduction="batchmean")
        torch.testing.assert_close(kl_term(init, cur, "reverse")[i], back)
    assert not torch.allclose(kl_term(init, cur, "reference"), kl_term(init, cur, "reverse"))


def test_too_few_statistics_tokens_are_refused_before_anything_runs(repo, tmp_path, corpus):
    """C₀ from fewer than 2 × d_in keys is near-singular (the update broke the default model at 1 ×)."""
    from conftest import FACTS as facts

    before = repo.tree()
    out = repo("apply", write_facts(tmp_path / "f.jsonl", facts[:1]), "--method", "memit", "--set",
               "mom2_n_tokens=100", "--set", f"mom2_corpus={corpus}", ok=False)
    assert out.exit_code != 0 and "near-singular" in out.output and "at least" in out.output
    assert repo.tree() == before
