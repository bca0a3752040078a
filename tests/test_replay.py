"""Replays that are the same or say why not: statistics in the repository, what a segment was made on."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import FACTS, FAST, Memedit, logits, write_facts

from memedit_cli.store.repo import Repo

FAST_MEMIT = ["--method", "memit", "--set", "v_num_grad_steps=4", "--set", "mom2_n_tokens=2000"]


def two_batches(repo, tmp_path, settings):
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *settings)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:]), *settings)


def test_a_memit_forget_reads_its_statistics_from_the_repository_not_a_cache(repo, tmp_path, monkeypatch):
    two_batches(repo, tmp_path, FAST_MEMIT)
    r = Repo.open(repo.dir)
    seg = r.segments_at(r.head())[1]
    assert set(seg["reads"]) == {"mom2"} and r.objects.problem(seg["reads"]["mom2"]) is None
    other = Memedit(tmp_path / "other")
    shutil.copytree(repo.dir, other.dir)
    repo("forget", FACTS[0]["id"])
    expected = logits(*repo.state())

    # the copy loses every cache: its own and the per-user one (a new machine)
    shutil.rmtree(other.dir / ".memedit" / "cache")
    (other.dir / ".memedit" / "cache").mkdir()
    monkeypatch.setenv("MEMEDIT_HOME", str(tmp_path / "empty-home"))
    import memedit_cli.stats as stats

    def refuse(*a, **k):
        raise AssertionError("the replay computed the statistics again")

    monkeypatch.setattr(stats, "second_moments", refuse)
    other("forget", FACTS[0]["id"])
    assert torch.equal(logits(*other.state()), expected)


def test_fsck_names_a_missing_statistics_object(repo, tmp_path):
    two_batches(repo, tmp_path, FAST_MEMIT)
    r = Repo.open(repo.dir)
    h = r.segments_at(r.head())[0]["reads"]["mom2"]
    (repo.dir / ".memedit" / "objects" / h[:2] / f"{h[2:]}.safetensors").unlink()
    result = repo("fsck", ok=False)
    assert result.exit_code != 0 and h[:12] in result.stderr


def test_a_replay_made_elsewhere_is_refused_unless_drift_is_allowed(repo, tmp_path, monkeypatch):
    two_batches(repo, tmp_path, FAST)
    r = Repo.open(repo.dir)
    made_on = r.segments_at(r.head())[1]["made_on"]
    assert made_on["device"] == "cpu" and made_on["dtype"] == "float32" and made_on["torch"]
    before = repo.tree()
    from memedit_cli.store import log as logmod

    real = logmod.versions()
    monkeypatch.setattr(logmod, "versions", lambda: dict(real, transformers="99.0.0"))
    result = repo("forget", FACTS[0]["id"], ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"transformers {real['transformers']} then, 99.0.0 now" in result.stderr
    assert "--allow-drift" in result.stderr
    assert repo.tree() == before
    out = repo.json("forget", FACTS[0]["id"], "--allow-drift")
    assert [d["facts"] for d in out["drift"]] == [[f["id"] for f in FACTS[1:]]]
    assert out["drift"][0]["then"]["transformers"] == real["transformers"]
    assert out["drift"][0]["now"]["transformers"] == "99.0.0"
    r = Repo.open(repo.dir)
    assert r.record(r.head())["drift"] == out["drift"]


def test_a_forget_that_computes_nothing_again_is_not_refused_for_drift(repo, tmp_path, monkeypatch):
    two_batches(repo, tmp_path, FAST)
    from memedit_cli.store import log as logmod

    real = logmod.versions()
    monkeypatch.setattr(logmod, "versions", lambda: dict(real, torch="0.0.1"))
    assert repo("forget", FACTS[2]["id"], ok=False).exit_code == 1  # its segment shrinks: computed again
    out = repo.json("forget", FACTS[1]["id"], FACTS[2]["id"])  # the whole last segment goes: nothing computed
    assert out["timings"]["replayed_segments"] == 0 and "drift" not in out


@pytest.mark.parametrize("settings", [
    FAST_MEMIT, ["--method", "wise", "--set", "n_iter=3"],
], ids=["memit", "wise"])
def test_an_apply_on_an_edited_state_loads_the_base_weights_once_when_its_templates_are_cached(
        repo, tmp_path, monkeypatch, settings):
    """The context templates (MEMIT) and prefixes (WISE) are generated on the unedited model: on an edited
    state that is a second copy of the weights (15 GiB at 8B in bf16), needed only on a cache miss."""
    from memedit_cli.lm import models

    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *settings)  # fills the caches
    loads = []
    real = models.load
    monkeypatch.setattr(models, "load", lambda config: loads.append(1) or real(config))
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), *settings)
    assert len(loads) == 1  # the state's own model
