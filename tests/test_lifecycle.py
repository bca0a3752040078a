"""apply / forget / checkout / export on tiny GPT-2 and LLaMA models, compared by logits."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FACTS, FAST, Memedit, base_logits, logits, write_facts
from tiny import build_tiny


def test_apply_changes_the_model_and_is_logged(repo, tiny, tmp_path):
    facts = write_facts(tmp_path / "facts.jsonl")
    out = repo.json("apply", facts, *FAST)
    assert [f["id"] for f in out["facts"]] == ["eiffel", "darrieux", "yasuda"]
    log = repo.json("log")
    assert len(log) == 1
    rec = log[0]
    assert rec["id"] == out["revision"] and rec["op"] == "apply" and rec["method"] == "ft"
    assert rec["hparams"]["layer"] == 1 and rec["hparams"]["lr"] == 0.05  # resolved, overrides applied
    assert {"memedit", "torch", "transformers"} <= set(rec["versions"])
    assert [f["id"] for f in rec["facts"]] == ["eiffel", "darrieux", "yasuda"]
    model, tok = repo.state()
    assert not torch.allclose(logits(model, tok), base_logits(tiny), atol=1e-4), "the edit changed nothing"
    status = repo.json("status")
    assert status["facts"] == ["eiffel", "darrieux", "yasuda"] and status["by_method"] == {"ft": 3}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ft_reduces_the_target_loss(memedit, tmp_path, arch):
    # a wider initialization than the default 0.02, so that the random model's logits can become confident
    model_dir = build_tiny(tmp_path / "model", arch, initializer_range=0.3)
    memedit("init", "--model", model_dir, "--device", "cpu")
    facts = write_facts(tmp_path / "facts.jsonl", FACTS[:1])
    memedit("apply", facts, "--method", "ft", "--set", "lr=0.05", "--set", "norm_constraint=0.5", "--set", "steps=20")
    info = memedit.json("log")[0]["segments"][0]["info"]
    assert info["loss_last"] < 0.5 * info["loss_first"]


def test_forget_everything_gives_the_base_model_exactly(repo, tiny, tmp_path):
    repo("apply", write_facts(tmp_path / "f.jsonl"), "--batch-size", "2", *FAST)
    repo("forget", "eiffel", "darrieux", "yasuda")
    model, tok = repo.state()
    assert torch.equal(logits(model, tok), base_logits(tiny))
    assert len(repo.json("log")) == 2  # forget appended; nothing was deleted


@pytest.mark.parametrize("batch_size", [1, 2])
def test_forget_equals_a_fresh_repository_without_the_fact(repo, tiny, tmp_path, batch_size):
    repo("apply", write_facts(tmp_path / "all.jsonl"), "--batch-size", batch_size, "--seed", 7, *FAST)
    before = logits(*repo.state())
    repo("forget", "darrieux")
    after = logits(*repo.state())

    fresh = Memedit(tmp_path / "fresh")
    fresh.dir.mkdir()
    fresh("init", "--model", tiny, "--device", "cpu")
    rest = [f for f in FACTS if f["id"] != "darrieux"]
    # the same batches as the original minus the fact: with batch size 2 the first batch loses one fact
    if batch_size == 1:
        fresh("apply", write_facts(tmp_path / "rest.jsonl", rest), "--batch-size", 1, "--seed", 7, *FAST)
    else:
        fresh("apply", write_facts(tmp_path / "a.jsonl", rest[:1]), "--seed", 7, *FAST)
        fresh("apply", write_facts(tmp_path / "b.jsonl", rest[1:]), "--seed", 7, *FAST)
    expected = logits(*fresh.state())
    assert torch.allclose(after, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(after, before, atol=1e-4), "forgetting changed nothing"
    assert repo.json("status")["facts"] == ["eiffel", "yasuda"]


def test_forget_by_apply_record_prefix_and_fact_prefix(repo, tmp_path):
    rev1 = repo.json("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *FAST)["revision"]
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:]), *FAST)
    repo("forget", rev1[:8])
    assert repo.json("status")["facts"] == ["darrieux", "yasuda"]
    repo("forget", "yas")  # a unique prefix of a fact id
    assert repo.json("status")["facts"] == ["darrieux"]
    again = repo("forget", "yasuda", ok=False)
    assert again.exit_code == 1 and "already forgotten" in again.stderr


def test_checkout_base_is_bit_identical_and_history_is_kept(repo, tiny, tmp_path):
    r1 = repo.json("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *FAST)["revision"]
    state1 = logits(*repo.state())
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), *FAST)
    repo("checkout", "base")
    assert repo.json("status")["head"] == "base"
    assert torch.equal(logits(*repo.state()), base_logits(tiny))
    repo("checkout", r1[:6])
    assert torch.equal(logits(*repo.state()), state1)
    repo("checkout", "HEAD~1")
    assert repo.json("status")["head"] == "base"
    bad = repo("checkout", "HEAD~1", ok=False)
    assert bad.exit_code == 1 and "past the base model" in bad.stderr
    # applying on an older revision forks the history; `log` follows HEAD
    repo("apply", write_facts(tmp_path / "c.jsonl", FACTS[2:]), *FAST)
    assert [r["facts"][0]["id"] for r in repo.json("log")] == ["yasuda"]
    assert len(json.loads(repo("log", "--all", "--json").stdout)) == 3
    reflog = (repo.dir / ".memedit" / "reflog.jsonl").read_text().splitlines()
    assert len(reflog) == 6  # 3 applies + 3 checkouts, each a move of HEAD


def test_export_merged_reproduces_the_state(repo, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo("apply", write_facts(tmp_path / "f.jsonl"), *FAST)
    expected = logits(*repo.state())
    out = tmp_path / "exported"
    repo("export", "--merged", out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert torch.equal(logits(model, tok), expected)
    meta = json.loads((out / "memedit.json").read_text())
    assert meta["facts"] == ["eiffel", "darrieux", "yasuda"] and meta["revision"] == repo.json("status")["head"]
    again = repo("export", "--merged", out, ok=False)
    assert again.exit_code == 1 and "--force" in again.stderr
    repo("export", "--merged", out, "--force")


def test_same_facts_and_seed_give_the_same_objects(tiny, tmp_path):
    hashes = []
    for name in ("one", "two"):
        m = Memedit(tmp_path / name)
        m.dir.mkdir()
        m("init", "--model", tiny, "--device", "cpu")
        m("apply", write_facts(tmp_path / "f.jsonl"), "--batch-size", 2, "--seed", 3, *FAST)
        hashes.append([s["objects"] for s in m.json("log")[0]["segments"]])
    assert hashes[0] == hashes[1]
    assert len(hashes[0]) == 2


def test_ask_continues_the_prompt(repo):
    out = repo("ask", "The Eiffel Tower is in", "--max-new-tokens", 3)
    assert out.stdout.strip() != ""


def test_reapplying_an_active_fact_is_refused(repo, tmp_path):
    f = write_facts(tmp_path / "f.jsonl", FACTS[:1])
    repo("apply", f, *FAST)
    before = repo.tree()
    again = repo("apply", f, *FAST, ok=False)
    assert again.exit_code == 1 and "already applied" in again.stderr
    assert repo.tree() == before
