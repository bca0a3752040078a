"""WISE on tiny models: routing, TIES merging, the fast editing loop, forget by shard."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import FACTS, PROMPTS, UNRELATED, Memedit, base_logits, logits, write_facts

WISE = ["--method", "wise", "--set", "n_iter=10"]


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, wise_models) -> Path:
    return wise_models[request.param]


def _route(model, tok, text):
    from memedit_cli.methods.wise.side import WISELayer

    layer = next(m for m in model.modules() if isinstance(m, WISELayer))
    with torch.no_grad():
        model(**tok([text], return_tensors="pt"))
    return int(layer.last_route[0])




def _act(model, tok, layer, text):
    from memedit_cli.methods.wise.train import activation

    name = next(n for n, m in model.named_modules() if m is layer)
    enc = tok([text], return_tensors="pt")
    return activation(model, name, enc["input_ids"], enc["attention_mask"])


@pytest.mark.parametrize("transposed", [False, True])
def test_a_row_uses_the_memory_with_the_largest_score_above_its_threshold(transposed):
    from transformers.pytorch_utils import Conv1D

    from memedit_cli.methods.wise.side import WISELayer

    torch.manual_seed(0)
    base = Conv1D(3, 4) if transposed else torch.nn.Linear(4, 3)  # d_in 4, d_out 3
    layer = WISELayer(base)
    shape = base.weight.shape
    m0, m1 = torch.zeros(shape), torch.zeros(shape)
    # memory 0 reacts to input direction e0, memory 1 to e1 (Linear: (out, in); Conv1D: (in, out))
    (m0.T if transposed else m0)[:, 0] = 1.0
    (m1.T if transposed else m1)[:, 1] = 2.0
    layer.register_buffer("memory_0", m0)
    layer.register_buffer("memory_1", m1)
    layer.eps, layer.nnz, layer.variant = [0.5, 0.5], [-1, -1], "retrieve"  # both memories dense
    x = torch.zeros(3, 2, 4)  # rows: e0 only, e0 and e1, e2 only
    x[0, :, 0] = 1.0
    x[1, :, 0], x[1, :, 1] = 1.0, 1.0
    x[2, :, 2] = 1.0
    out = layer(x)
    assert layer.last_route.tolist() == [0, 1, -1]  # row 1 scores sqrt(3) on memory 0, 2*sqrt(3) on memory 1
    assert torch.allclose(out[2], base(x[2]))  # the main memory alone
    assert torch.allclose(out[0], base(x[0]) + (x[0] @ m0 if transposed else x[0] @ m0.T))
    layer.eps = [0.5, 100.0]  # memory 1's threshold now excludes row 1: the best memory above its own ε wins
    layer(x)
    assert layer.last_route.tolist() == [0, 0, -1]
    y = torch.zeros(1, 4, 4)
    y[0, 0, 0] = 1.0  # one position of four reacts to memory 0: mean 0.25·sqrt(3) < ε, max sqrt(3) > ε
    layer(y)
    assert layer.last_route.tolist() == [-1]
    layer.reduce = "max"
    layer(y)
    assert layer.last_route.tolist() == [0]


@pytest.mark.parametrize("transposed", [False, True])
def test_a_sparse_memory_adds_what_its_dense_matrix_adds(transposed):
    from transformers.pytorch_utils import Conv1D

    from memedit_cli.methods.wise.side import WISELayer

    torch.manual_seed(0)
    base = Conv1D(3, 5) if transposed else torch.nn.Linear(5, 3)  # d_in 5, d_out 3
    dense = torch.zeros(base.weight.shape)
    dense.view(-1)[torch.tensor([1, 4, 7, 11, 13])] = torch.tensor([0.5, -1.0, 2.0, 0.25, -0.75])
    layer = WISELayer(base)
    index = dense.flatten().nonzero().squeeze(1)
    layer.register_buffer("memory_0_index", index.to(torch.int32))
    layer.register_buffer("memory_0_values", dense.flatten()[index])
    layer.eps, layer.nnz, layer.shape = [0.0], [len(index)], list(base.weight.shape)
    x = torch.randn(2, 4, 5)
    want = x @ dense if transposed else x @ dense.T
    assert torch.allclose(layer._apply(x, 0), want, atol=1e-6)
    assert torch.equal(layer.memory(0), dense)


def test_the_activated_distance_scores_the_activation_of_the_outputs_with_and_without_the_memory():
    from memedit_cli.methods.wise.side import WISELayer
    from memedit_cli.methods.wise.train import distance, row_score

    torch.manual_seed(0)
    base = torch.nn.Linear(4, 3)
    layer = WISELayer(base)
    m0 = torch.randn(3, 4)
    layer.register_buffer("memory_0", m0)
    layer.eps, layer.nnz, layer.variant, layer.act = [0.0], [-1], "merge", "silu"
    x = torch.randn(2, 5, 4)
    out, extra = base(x), x @ m0.T
    expected = (torch.nn.functional.silu(out + extra) - torch.nn.functional.silu(out)).norm(dim=-1).mean(-1)
    assert torch.allclose(layer.scores(x)[0], expected, atol=1e-6)  # not ‖extra‖: σ bends it
    assert not torch.allclose(expected, extra.norm(dim=-1).mean(-1), atol=1e-3)
    assert torch.allclose(row_score(distance(extra, out, "silu"), torch.ones(2, 5)), expected, atol=1e-6)  # training
    layer.act = None
    assert torch.allclose(layer.scores(x)[0], extra.norm(dim=-1).mean(-1), atol=1e-6)


def test_thresholds_come_from_the_edits_scores_on_the_finished_shard(repo, tiny, tmp_path):
    from memedit_cli.lm.tokens import prompt_target_batch
    from memedit_cli.methods.wise.side import WISELayer
    from memedit_cli.replay import get_tensors
    from memedit_cli.store.repo import Repo

    rec = repo.json("show", repo.json("apply", write_facts(tmp_path / "f.jsonl"), *WISE,
                                      "--set", "threshold_from=final")["revision"])
    stored = get_tensors(Repo.open(repo.dir), rec["segments"][0]["objects"]["tensors"])["scores"]
    model, tok = repo.state()
    layer = next(m for m in model.modules() if isinstance(m, WISELayer))
    eps = rec["hparams"]["act_ratio"] * float(stored.min())
    assert layer.eps == pytest.approx([eps])
    for f, score in zip(FACTS, stored):
        prompts = [p.replace("{}", f["prompt"]) for p in rec["hparams"]["prefixes"]]
        ids, attn, _ = prompt_target_batch(tok, prompts, [f["target_new"]] * len(prompts), "cpu")
        rows = [tok.decode(r[m.bool()]) for r, m in zip(ids, attn)]
        per_row = torch.tensor([float(layer.scores(_act(model, tok, layer, r))[0]) for r in rows])
        assert float(per_row.mean()) == pytest.approx(float(score), rel=1e-4)  # what the router computes
        assert float(per_row.max()) > eps and _route(model, tok, rows[int(per_row.argmax())]) == 0
    assert not torch.allclose(logits(model, tok), base_logits(tiny), atol=1e-4)
    layer.bypass = True  # the main memory alone is the base model
    assert torch.allclose(logits(model, tok), base_logits(tiny), atol=1e-5)


def test_retrieve_keeps_one_memory_per_merge_group(repo, tmp_path):
    sets = ["--set", "variant=retrieve", "--set", "merge_freq=1"]
    for i, f in enumerate(FACTS):  # one apply, one shard, one memory per fact
        repo("apply", write_facts(tmp_path / f"{i}.jsonl", [f]), *WISE, *sets)
    model, tok = repo.state()
    from memedit_cli.methods.wise.side import WISELayer

    layer = next(m for m in model.modules() if isinstance(m, WISELayer))
    assert len(layer.memories) == 3 and layer.edits == [1, 1, 1]
    from memedit_cli.methods.wise.side import _dense

    shards = [_dense(s, layer.base.weight.shape) for s in layer.shards]
    assert all(torch.equal(m, d) for m, d in zip(layer.memories, shards))  # a group of one shard is not trimmed
    assert all(n > 0 for n in layer.nnz)  # kept sparse: a shard changes a fraction ρ = 0.2 of the entries
    assert len({float(e) for e in layer.eps}) == 3  # each memory has its own threshold
    route = _route(model, tok, PROMPTS[0])
    assert route >= 0 and float(layer.scores(_act(model, tok, layer, PROMPTS[0]))[route]) > layer.eps[route]


def test_a_topk_shard_changes_only_the_input_features_its_edits_activate_most(repo, tiny, tmp_path):
    from memedit_cli.lm.tokens import prompt_target_batch
    from memedit_cli.methods.wise.side import WISELayer, _dense
    from memedit_cli.replay import get_tensors
    from memedit_cli.store.repo import Repo

    rec = repo.json("show", repo.json("apply", write_facts(tmp_path / "f.jsonl", FACTS[:2]), *WISE,
                                      "--set", "mask=topk", "--set", "mask_k=4")["revision"])
    stored = get_tensors(Repo.open(repo.dir), rec["segments"][0]["objects"]["tensors"])
    assert "mask_bits" not in stored
    columns = stored["columns"].tolist()
    assert columns == sorted(columns) and 4 <= len(columns) <= 8  # the union of two edits' 4 features
    model, tok = repo.state()
    layer = next(m for m in model.modules() if isinstance(m, WISELayer))
    transposed = type(layer.base).__name__ == "Conv1D"
    d_out = layer.base.weight.shape[1 if transposed else 0]
    assert len(stored["values"]) == d_out * len(columns)  # every weight of those features, nothing else
    D = _dense(layer.shards[0], layer.base.weight.shape)
    per_feature = (D.abs().sum(1) if transposed else D.abs().sum(0)).nonzero().squeeze(1).tolist()
    assert per_feature and set(per_feature) <= set(columns)
    expected = set()  # each edit's 4 features with the largest mean share of |a| over its rows' positions
    for f in FACTS[:2]:
        prompts = [p.replace("{}", f["prompt"]) for p in rec["hparams"]["prefixes"]]
        ids, attn, _ = prompt_target_batch(tok, prompts, [f["target_new"]] * len(prompts), "cpu")
        a = _act_batch(model, layer, ids, attn)
        share = (a.abs() / a.norm(dim=-1, keepdim=True)) * attn[..., None]
        expected |= set((share.sum((0, 1)) / attn.sum()).topk(4).indices.tolist())
    assert set(columns) == expected


def _act_batch(model, layer, ids, attn):
    from memedit_cli.methods.wise.train import activation

    name = next(n for n, m in model.named_modules() if m is layer)
    return activation(model, name, ids, attn).float()


def test_ties_merge():
    from memedit_cli.methods.wise.merge import ties, trim

    a = torch.tensor([3.0, -1.0, 0.5, 2.0])
    b = torch.tensor([1.0, 2.0, -4.0, -1.0])
    assert torch.equal(trim(a, 0.5), torch.tensor([3.0, 0.0, 0.0, 2.0]))
    # trimmed: a -> [3, 0, 0, 2], b -> [0, 2, -4, 0]; signs elected per entry; agreeing entries averaged
    assert torch.equal(ties([a, b], 0.5), torch.tensor([3.0, 2.0, -4.0, 2.0]))
    c = torch.tensor([1.0, 0.0, 0.0, -5.0])  # disagrees on the last entry and outweighs a there
    assert torch.equal(ties([a, c], 1.0)[3], torch.tensor(-5.0))
    assert ties([a], 0.5) is a  # one shard is not trimmed
    # the density counts a shard's own nonzeros, not all entries: half of 4 nonzeros among 8 keeps 2
    sparse = torch.tensor([0.0, 3.0, 0.0, -1.0, 0.0, 0.5, 0.0, 2.0])
    assert torch.equal(trim(sparse, 0.5), torch.tensor([0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]))


@pytest.mark.parametrize("router", ["activation", "keys", "activated"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_fast_loop_gives_the_full_models_loss_and_gradient(wise_models, arch, router):
    from memedit_cli.facts import Fact
    from memedit_cli.lm import models
    from memedit_cli.lm.arch import arch_for
    from memedit_cli.methods.wise import WISE as Wise
    from memedit_cli.methods.wise.train import EditRows

    model, tok = models.load({"model": {"kind": "local", "path": str(wise_models[arch])},
                              "dtype": "float32", "device": "cpu"})
    hp = dataclasses.replace(Wise().default_hparams(model), prefixes=("{}", "A prefix. {}", "Another one here. {}"),
                             alpha=1.0, beta=3.0, gamma=2.0, router="keys" if router == "keys" else "activation",
                             route_distance="activated" if router == "activated" else "delta")
    name = arch_for(model.config).mlp_out_at(hp.layer)
    base = model.get_submodule(name)
    fact = Fact(**FACTS[0])
    D = (torch.randn(base.weight.shape) * 0.05).requires_grad_()
    grads = []
    for fast in (True, False):
        rows = EditRows(model, tok, fact, dataclasses.replace(hp, fast_path=fast), UNRELATED, base, name, hp.layer,
                        "cpu")
        D.grad = None
        loss, nll, _ = rows.loss(D)
        loss.backward()
        grads.append((loss.detach(), nll.detach(), D.grad.clone()))
    (l1, n1, g1), (l2, n2, g2) = grads
    assert torch.allclose(l1, l2, atol=1e-5) and torch.allclose(n1, n2, atol=1e-5)
    assert (l1 == n1) == (router == "keys")  # keys: no routing loss, the cross-entropy alone
    assert g1.abs().max() > 0 and torch.allclose(g1, g2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mask", ["random", "topk"])
def test_forget_rebuilds_only_the_shard_that_held_the_fact(repo, tiny, tmp_path, mask):
    WISE = globals()["WISE"] + ["--set", f"mask={mask}", "--set", "mask_k=4"]
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:2]), *WISE)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[2:]), *WISE)
    rec = repo.json("forget", "eiffel")
    shown = repo.json("show", rec["revision"])
    assert shown["timings"]["replayed_segments"] == 1  # the second shard is kept as it was
    after = logits(*repo.state(), PROMPTS + UNRELATED)

    fresh = Memedit(tmp_path / "fresh")
    fresh.dir.mkdir()
    fresh("init", "--model", tiny, "--device", "cpu")
    fresh("apply", write_facts(tmp_path / "fa.jsonl", FACTS[1:2]), *WISE)
    fresh("apply", write_facts(tmp_path / "fb.jsonl", FACTS[2:]), *WISE)
    assert torch.allclose(after, logits(*fresh.state(), PROMPTS + UNRELATED), atol=1e-6)


def test_an_apply_bigger_than_save_freq_makes_several_shards(repo, tmp_path):
    repo("apply", write_facts(tmp_path / "f.jsonl"), *WISE, "--set", "save_freq=2")
    rec = repo.json("show", "HEAD")
    assert [len(s["facts"]) for s in rec["segments"]] == [2, 1]
    masks = [repo.json("show", "HEAD")["segments"][i]["info"]["mask_seed"] for i in range(2)]
    assert masks[0] != masks[1]  # every shard draws its own mask


def test_wise_records_follow_the_schema(repo, tmp_path):
    import json

    import jsonschema

    schema = json.loads((Path(__file__).resolve().parents[1] / "formats" / "record.schema.json").read_text())
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:2]), *WISE, "--set", "n_iter=2")
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[2:]), *WISE, "--set", "n_iter=2")
    repo("forget", "eiffel")
    for rec in repo.json("log"):
        jsonschema.validate(rec, schema)


def test_memories_kept_across_rebuilds_equal_memories_built_at_once(repo, tmp_path):
    # a Build settles after every segment and keeps the memories whose shards did not change;
    # materialize settles once: the same memories either way
    from memedit_cli.replay import Build, materialize
    from memedit_cli.store.repo import Repo

    repo("apply", write_facts(tmp_path / "f.jsonl"), *WISE, "--batch-size", "1", "--set", "save_freq=1",
         "--set", "merge_freq=2", "--set", "variant=retrieve")
    r = Repo.open(repo.dir)
    segments = r.segments_at(r.head())
    build = Build(r, [])
    for seg in segments:
        build.keep(seg)
        build.settle()
    layer = next(m for m in build.model.modules() if hasattr(m, "shards"))
    assert layer.edits == [2, 1]  # memory 0 was rebuilt when its second shard came, memory 1 made new
    at_once, tok = materialize(r, segments)
    assert torch.equal(logits(build.model, tok), logits(at_once, tok))
