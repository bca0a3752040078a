"""Hostile and faulty input beyond the facts parser (test_facts.py): the log reader and revision
parsing under generated input, non-finite edits, a killed lock holder, several writers at once,
and the security rules (no pickle, no remote code unless asked, an export's code is memedit's)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FACTS, FAST, write_facts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def applied_repo(tmp_path_factory, tiny_models):
    """A repository with two apply records (built once: hypothesis calls the tests many times)."""
    from conftest import Memedit

    from memedit_cli.store.repo import Repo

    work = tmp_path_factory.mktemp("hostile")
    m = Memedit(work)
    m("init", "--model", tiny_models["llama"], "--device", "cpu")
    for i, fact in enumerate(FACTS[:2]):
        m("apply", write_facts(work / f"{i}.jsonl", [fact]), *FAST)
    return Repo.open(work)


@pytest.fixture(scope="module")
def two_records_log(applied_repo) -> bytes:
    return applied_repo.read_log_bytes()


# --- the log reader and revisions under generated input -------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.dictionaries(st.sampled_from(["id", "parent", "op", "facts", "segments", "x"]),
                                          st.one_of(st.none(), st.text(max_size=70), st.integers()), max_size=5),
                          max_size=3).map(lambda rs: b"".join(json.dumps(r).encode() + b"\n" for r in rs))))
def test_the_log_reader_reports_any_bytes_as_problems_never_crashes(data):
    from memedit_cli.store.log import scan

    records, problems = scan(data)
    assert isinstance(records, list) and all(isinstance(p, str) and p for p in problems)
    if data and not problems:
        assert len(records) == data.count(b"\n")


def _flips_read_as_good(log_bytes: bytes) -> tuple[int, list[int]]:
    """Flip one bit of every 7th byte, one at a time: (how many logs were tried, the byte positions whose
    damaged log the reader took for a good one, with no problem reported)."""
    from memedit_cli.store.log import scan

    positions = range(0, len(log_bytes), 7)
    missed = []
    for i in positions:
        data = bytearray(log_bytes)
        data[i] ^= 0x01
        _, problems = scan(bytes(data))
        if not problems:
            missed.append(i)
    return len(positions), missed


def test_a_real_log_with_one_byte_changed_anywhere_is_never_read_as_good(two_records_log):
    from memedit_cli.store.log import scan

    good, problems = scan(two_records_log)
    assert len(good) == 2 and problems == []
    tried, missed = _flips_read_as_good(two_records_log)
    assert tried == len(two_records_log) // 7 + (len(two_records_log) % 7 > 0) and tried > 50
    assert missed == [], (f"{len(missed)} of {tried} one-byte changes were read as a good log, at bytes "
                          f"{missed[:10]}: {[two_records_log[i:i + 20] for i in missed[:3]]}")


def test_the_byte_flip_check_fails_when_the_reader_stops_checking_ids(two_records_log, monkeypatch):
    # the check above is only worth something if it can fail: without the content-hash check most
    # flips inside a record's text still parse as JSON, and must show up as missed
    from memedit_cli.store import log

    real = log.record_problem
    monkeypatch.setattr(log, "make_record", lambda fields: {"id": fields.get("id"), **fields})
    tried, missed = _flips_read_as_good(two_records_log)
    assert real is log.record_problem and len(missed) > tried // 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=30),
                 st.from_regex(r"(HEAD|base|[0-9a-f]{1,8})([~^][0-9]{0,3}){0,3}", fullmatch=True)))
def test_revision_parsing_of_any_text_resolves_or_says_why(applied_repo, rev):
    from memedit_cli.errors import MemeditError

    try:
        rid = applied_repo.resolve(rev)
    except MemeditError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert rid is None or re.fullmatch(r"[0-9a-f]{64}", rid)


# --- non-finite edits -----------------------------------------------------------------------------

def test_an_edit_that_computes_nan_is_refused_before_anything_is_written(repo, tmp_path, monkeypatch):
    from memedit_cli.methods.ft import FT

    original = FT.compute

    def poisoned(self, *args, **kwargs):
        tensors, info = original(self, *args, **kwargs)
        name = next(iter(tensors))
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float("nan")
        return tensors, info

    monkeypatch.setattr(FT, "compute", poisoned)
    before = repo.tree()
    result = repo("apply", write_facts(tmp_path / "f.jsonl", FACTS[:1]), *FAST, ok=False)
    assert result.exit_code == 1 and "NaN or Inf" in result.output + result.stderr
    assert repo.tree() == before


# --- locks and writers ----------------------------------------------------------------------------

def test_a_lock_holder_killed_mid_apply_leaves_no_stale_lock(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMEDIT_LOCK_TIMEOUT", "5")
    slow = ["--method", "ft", "--set", "steps=200", "--set", "lr=0.001"]
    proc = subprocess.Popen([sys.executable, "-m", "memedit_cli", "-q", "-C", str(repo.dir), "apply",
                             str(write_facts(tmp_path / "a.jsonl", FACTS[:1])), *slow],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = repo.dir / ".memedit" / "lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and f"pid {proc.pid}" in lock.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "the apply never took the lock"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), *FAST)  # the kernel dropped the flock
    assert time.monotonic() - t0 < 60
    assert [f["id"] for r in repo.json("log") for f in r["facts"]] == ["darrieux"]
    assert repo("fsck").exit_code == 0


def test_three_writers_at_once_all_land_in_a_chain(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMEDIT_LOCK_TIMEOUT", "300")
    files = [write_facts(tmp_path / f"{f['id']}.jsonl", [f]) for f in FACTS]
    procs = [subprocess.Popen([sys.executable, "-m", "memedit_cli", "-q", "-C", str(repo.dir), "apply", str(f), *FAST],
                              stderr=subprocess.PIPE, text=True) for f in files]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()
    log = repo.json("log")  # newest first
    assert sorted(f["id"] for r in log for f in r["facts"]) == sorted(f["id"] for f in FACTS)
    assert [r["parent"] for r in log] == [r["id"] for r in log[1:]] + [None]
    assert repo("fsck").exit_code == 0


# --- security -------------------------------------------------------------------------------------

def test_no_pickle_anywhere_in_the_code():
    sources = [p for p in (ROOT / "memedit_cli").rglob("*.py")]
    assert len(sources) > 30
    for path in sources:
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "safe_serialization=False" not in text, path


def test_the_base_model_loads_without_remote_code_unless_the_repository_says_so(repo, monkeypatch):
    import transformers

    seen = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    repo.state()
    assert seen == [False]
    config = json.loads((repo.dir / ".memedit" / "config.json").read_text())
    assert config["model"]["trust_remote_code"] is False


def test_an_exported_modeling_file_is_memedits_own(repo, tmp_path):
    repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "larimar", "--set", "encoder=model",
         "--set", "context={prompt} {target}.")
    out = tmp_path / "out"
    repo("export", "--merged", out)
    shipped = out / "modeling_memedit_larimar.py"
    ours = ROOT / "memedit_cli" / "methods" / "larimar" / "modeling_memedit_larimar.py"
    assert shipped.read_bytes() == ours.read_bytes()
    assert sorted(p.name for p in out.glob("*.py")) == ["modeling_memedit_larimar.py"]
