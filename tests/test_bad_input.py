"""Every bad input is refused with one clear line, a non-zero exit, and the repository unchanged."""

from __future__ import annotations

import json

import pytest
from conftest import FACTS, FAST, write_facts


@pytest.fixture
def applied(repo, tmp_path):
    """A repository with one apply, so 'unchanged' covers a non-empty log."""
    repo("apply", write_facts(tmp_path / "first.jsonl", FACTS[:1]), *FAST)
    return repo


def refused(repo, *args, says: str, code: int = 1):
    before = repo.tree()
    result = repo(*args, ok=False)
    assert result.exit_code == code, result.output
    assert says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "errors are one line"
    assert repo.tree() == before, "a refused command changed the repository"
    return result


def test_malformed_json_names_file_and_line(applied, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(FACTS[1]) + "\n{not json\n")
    refused(applied, "apply", bad, says=f"{bad}:2:")


@pytest.mark.parametrize("field", ["prompt", "subject", "target_new"])
def test_missing_or_empty_field(applied, tmp_path, field):
    fact = dict(FACTS[1])
    del fact[field]
    refused(applied, "apply", write_facts(tmp_path / "m.jsonl", [fact]), says=field)
    fact[field] = "  "
    refused(applied, "apply", write_facts(tmp_path / "e.jsonl", [fact]), says=field)


def test_subject_not_in_prompt_for_a_method_that_needs_it(applied, tmp_path, monkeypatch):
    from memedit_cli.methods.ft import FT

    monkeypatch.setattr(FT, "needs_subject", True)
    fact = dict(FACTS[1], subject="Somebody Else")
    refused(applied, "apply", write_facts(tmp_path / "s.jsonl", [fact]), "--method", "ft", says="does not occur")


def test_unknown_method_suggests_the_near_name(applied, tmp_path):
    refused(applied, "apply", write_facts(tmp_path / "f.jsonl", FACTS[1:2]), "--method", "fft",
            says="did you mean 'ft'")


@pytest.mark.parametrize("setting,says", [
    ("lrr=0.1", "did you mean 'lr'"),
    ("lr=NaN", "finite"),
    ("steps=-1", "steps must be >= 1"),
    ("lr=fast", "lr must be float"),
    ("layer=99", "layer must be between 0 and 1"),
    ("noequals", "expected key=value"),
])
def test_bad_hyperparameters(applied, tmp_path, setting, says):
    refused(applied, "apply", write_facts(tmp_path / "f.jsonl", FACTS[1:2]), "--method", "ft", "--set", setting,
            says=says)


def test_bad_hparams_file_and_batch_size(applied, tmp_path):
    hp = tmp_path / "hp.json"
    hp.write_text("[1, 2]")
    facts = write_facts(tmp_path / "f.jsonl", FACTS[1:2])
    refused(applied, "apply", facts, "--method", "ft", "--hparams", hp, says="expected a JSON object")
    hp.write_text('{"stepz": 3}')
    refused(applied, "apply", facts, "--method", "ft", "--hparams", hp, says="did you mean 'steps'")
    refused(applied, "apply", facts, "--batch-size", "0", says="--batch-size must be >= 1")


def test_missing_facts_file(applied, tmp_path):
    refused(applied, "apply", tmp_path / "nope.jsonl", says="nope.jsonl")


def test_model_path_that_does_not_exist(memedit, tmp_path):
    result = memedit("init", "--model", tmp_path / "no-such-model", ok=False)
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert not (memedit.dir / ".memedit").exists()


def test_init_twice(repo, tiny):
    refused(repo, "init", "--model", tiny, says="already")


def test_command_outside_a_repository(memedit):
    for args in (["status"], ["log"], ["forget", "x"], ["checkout", "base"], ["ask", "hi"]):
        result = memedit(*args, ok=False)
        assert result.exit_code == 1 and "not a memedit repository" in result.stderr and "memedit init" in result.stderr


@pytest.mark.parametrize("rev,says", [("HEAD~5", "past the base"), ("zzzz", "not a revision"),
                                      ("abcdef12", "no revision starts")])
def test_bad_revisions(applied, rev, says):
    refused(applied, "checkout", rev, says=says)


def test_forget_unknown_id(applied):
    refused(applied, "forget", "no-such-fact", says="no active fact")


def test_stored_keys_without_resolve(applied):
    refused(applied, "forget", FACTS[0]["id"], "--stored-keys", says="--stored-keys is a form of --resolve")


def test_usage_error_exit_code(applied):
    result = applied("apply", ok=False)
    assert result.exit_code == 2


def test_target_longer_than_the_context(applied, tmp_path):
    fact = dict(FACTS[2], target_new="word " * 80)  # tiny models have 64 positions
    # the long fact is in the second batch: the first must not be computed and stored either
    facts = write_facts(tmp_path / "long.jsonl", [FACTS[1], fact])
    refused(applied, "apply", facts, "--batch-size", "1", *FAST, says="fact yasuda: prompt and target are")


def test_export_force_only_replaces_an_earlier_export(applied, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = applied("export", "--merged", precious, "--force", ok=False)
    assert result.exit_code == 1 and "not an earlier memedit export" in result.stderr
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("var,value,says", [("MEMEDIT_LOCK_TIMEOUT", "soon", "MEMEDIT_LOCK_TIMEOUT"),
                                            ("MEMEDIT_DEVICE", "gpu", "MEMEDIT_DEVICE")])
def test_bad_environment_values(applied, tmp_path, monkeypatch, var, value, says):
    monkeypatch.setenv(var, value)
    refused(applied, "apply", write_facts(tmp_path / "f.jsonl", FACTS[1:2]), *FAST, says=says)


def test_log_limit_must_be_positive(applied):
    assert applied("log", "-n", "0", ok=False).exit_code == 2


def test_an_empty_prompt_is_refused_by_ask_and_blame(applied):
    for args in (["ask", ""], ["blame", ""]):
        result = applied(*args, ok=False)
        assert result.exit_code == 1 and "the prompt is empty" in result.stderr, result.output


def test_larimar_train_refuses_a_short_corpus_and_bad_settings(applied, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("Only one sentence.\n")
    result = applied("larimar-train", "--corpus", one, ok=False)
    assert result.exit_code == 1 and "at least 2 sentences" in result.stderr
    two = tmp_path / "two.txt"
    two.write_text("A first sentence.\nA second one.\n")
    result = applied("larimar-train", "--corpus", two, "--set", "steps=0", ok=False)
    assert result.exit_code == 1 and "steps must be >= 1" in result.stderr


def test_an_adapter_without_its_record_is_refused_with_the_fix(applied, tmp_path):
    import os
    from pathlib import Path

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A first sentence.\nA second one.\nAnd a third.\n")
    info = applied.json("larimar-train", "--corpus", corpus, "--set", "steps=2", "--set", "encoder=model")
    record = Path(info["path"]).with_suffix(".json")
    assert record.is_file() and Path(os.environ["MEMEDIT_HOME"]) in record.parents
    record.unlink()
    refused(applied, "apply", write_facts(tmp_path / "f.jsonl", FACTS[2:]), "--method", "larimar",
            "--set", "mode=prefix", "--set", "encoder=model", says="has no readable record")


@pytest.mark.parametrize("layers, says", [("1-0", "the range goes backwards"), ("a", "not a block index"),
                                          (",", "no block given")])
def test_stats_layers_that_are_not_blocks_or_ranges_are_refused(applied, layers, says):
    refused(applied, "stats", "--layers", layers, says=says)
