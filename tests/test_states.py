"""The materialized-state cache (memedit_cli/states.py): one read for a state seen before, the same state."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FACTS, FAST, logits, write_facts

from memedit_cli.store.repo import Repo

WISE = ["--method", "wise", "--set", "n_iter=5", "--set", "router=keys", "--set", "layer=1", "--set", "key_layer=0"]
LARIMAR = ["--method", "larimar", "--set", "encoder=model", "--set", "context={prompt} {target}."]
TEXTS = ["The Eiffel Tower is in Rome", "Danielle Darrieux speaks English", "Toko Yasuda plays the violin",
         "The Space Needle is in"]


def states_dir(m):
    return m.dir / ".memedit" / "cache" / "states"


@pytest.fixture
def mixed(repo, tmp_path):
    """ft, WISE and Larimar edits in one state (no export mixes WISE and Larimar; the cache does)."""
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *FAST)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), *WISE)
    repo("apply", write_facts(tmp_path / "c.jsonl", FACTS[2:]), *LARIMAR)
    return repo


def cached_state(m):
    from memedit_cli.states import state_at

    r = Repo.open(m.dir)
    return state_at(r, r.head())


def test_a_state_from_the_cache_equals_the_state_rebuilt_from_the_log(mixed, monkeypatch):
    from_log = logits(*mixed.state(), TEXTS)
    assert not states_dir(mixed).exists()
    first = logits(*cached_state(mixed), TEXTS)  # builds it from the log and writes the entry
    assert len(list(states_dir(mixed).glob("*.safetensors"))) == 1
    import memedit_cli.replay as replay

    def refuse(*a, **k):
        raise AssertionError("a segment was attached: the cache was not used")

    monkeypatch.setattr(replay, "attach_segment", refuse)
    second = logits(*cached_state(mixed), TEXTS)
    assert torch.equal(first, from_log) and torch.equal(second, from_log)
    answer = mixed("ask", "Danielle Darrieux speaks", "--max-new-tokens", "3").stdout  # ask reads the entry too
    monkeypatch.undo()
    (states_dir(mixed)).joinpath("x").mkdir()  # unrelated content in the folder is left alone
    assert mixed("ask", "Danielle Darrieux speaks", "--max-new-tokens", "3").stdout == answer


def test_a_damaged_entry_is_dropped_and_the_state_rebuilt(mixed):
    expected = logits(*cached_state(mixed), TEXTS)
    (entry,) = states_dir(mixed).glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    entry.write_bytes(bytes(data))
    assert torch.equal(logits(*cached_state(mixed), TEXTS), expected)
    info = json.loads(entry.with_suffix(".json").read_text())  # written again, intact
    import hashlib

    assert hashlib.sha256(entry.read_bytes()).hexdigest() == info["sha256"]


def test_the_cache_keeps_the_most_recent_states_and_can_be_off(repo, tmp_path, monkeypatch):
    for i, fact in enumerate(FACTS):
        repo("apply", write_facts(tmp_path / f"{i}.jsonl", [fact]), *FAST)
        repo("ask", "The Eiffel Tower is in", "--max-new-tokens", "1")
    assert len(list(states_dir(repo).glob("*.json"))) == 2
    monkeypatch.setenv("MEMEDIT_STATE_CACHE", "0")
    import shutil

    shutil.rmtree(states_dir(repo))
    repo("ask", "The Eiffel Tower is in", "--max-new-tokens", "1")
    assert not states_dir(repo).exists()
    monkeypatch.setenv("MEMEDIT_STATE_CACHE", "many")
    result = repo("ask", "x", ok=False)
    assert result.exit_code == 1 and "MEMEDIT_STATE_CACHE='many'" in result.stderr


def test_an_export_from_the_cache_equals_one_from_the_log(repo, tmp_path):
    from transformers import AutoModelForCausalLM

    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:2]), *WISE)
    repo("export", "--merged", tmp_path / "one")  # from the log (the entry is written)
    repo("export", "--merged", tmp_path / "two")  # from the entry
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one", trust_remote_code=True).eval()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two", trust_remote_code=True).eval()
    _, tok = repo.state()
    assert torch.equal(logits(a, tok, TEXTS), logits(b, tok, TEXTS))
    assert torch.equal(logits(a, tok, TEXTS), logits(*repo.state(), TEXTS))


def test_a_state_with_a_method_that_cannot_say_its_snapshot_is_not_cached(repo, tmp_path, monkeypatch):
    # the contract's default: no snapshot, no entry (a wrapper method must not be cached as weights alone)
    from memedit_cli.methods.base import Method
    from memedit_cli.methods.ft import FT

    monkeypatch.setattr(FT, "snapshot", Method.snapshot)
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *FAST)
    first = repo("ask", "The Eiffel Tower is in", "--max-new-tokens", "2").stdout
    assert repo("ask", "The Eiffel Tower is in", "--max-new-tokens", "2").stdout == first
    assert not list(states_dir(repo).glob("*.safetensors"))
