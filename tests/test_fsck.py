"""Damage is found by fsck and refused by every command that would compute from it."""

from __future__ import annotations

import json
import os

import pytest
from conftest import FACTS, FAST, write_facts

from memedit_cli.errors import EXIT_DAMAGED


@pytest.fixture
def two_applies(repo, tmp_path):
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *FAST)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), *FAST)
    return repo


def objects(repo):
    return sorted((repo.dir / ".memedit" / "objects").glob("??/*.safetensors"))


def damaged(repo, says):
    result = repo("fsck", ok=False)
    assert result.exit_code == EXIT_DAMAGED, result.output
    assert says in result.stderr, result.stderr
    return result


def test_fsck_passes_on_a_good_repository(two_applies):
    assert two_applies("fsck").stdout.strip().endswith("ok")


def test_truncated_last_log_line(two_applies):
    log = two_applies.dir / ".memedit" / "log.jsonl"
    log.write_bytes(log.read_bytes()[:-40])
    damaged(two_applies, "log.jsonl:2: last line is truncated")
    for args in (["status"], ["log"], ["ask", "x"], ["apply", "whatever.jsonl"]):
        result = two_applies(*args, ok=False)
        assert result.exit_code in (EXIT_DAMAGED, 1) and ("fsck" in result.stderr or "whatever" in result.stderr)
    assert two_applies("status", ok=False).exit_code == EXIT_DAMAGED


def test_changed_byte_in_an_object(two_applies):
    path = objects(two_applies)[0]
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    damaged(two_applies, f"object {path.parent.name}{path.name[:10]} is damaged")
    for args in (["ask", "x"], ["export", "--merged", two_applies.dir / "out"], ["checkout", "HEAD"]):
        result = two_applies(*args, ok=False)
        assert result.exit_code == EXIT_DAMAGED and "fsck" in result.stderr
    assert not (two_applies.dir / "out").exists()


def test_missing_object(two_applies):
    path = objects(two_applies)[1]
    path.unlink()
    damaged(two_applies, "is missing")


def test_edited_record_and_wrong_parent(two_applies):
    from memedit_cli.store.jsonutil import canonical
    from memedit_cli.store.log import make_record

    log = two_applies.dir / ".memedit" / "log.jsonl"
    first, second = [json.loads(line) for line in log.read_text().splitlines()]
    tampered = dict(second, seed=99)
    log.write_bytes(canonical(first) + b"\n" + canonical(tampered) + b"\n")
    damaged(two_applies, "its id does not match its content")
    relinked = make_record(dict(second, parent="f" * 64))  # a consistent id, but the parent is unknown
    log.write_bytes(canonical(first) + b"\n" + canonical(relinked) + b"\n")
    damaged(two_applies, "is not an earlier record")
    log.write_bytes(json.dumps(first).encode() + b"\n")  # the same record, reformatted: its bytes changed
    damaged(two_applies, "not the canonical form")


def test_head_naming_no_record(two_applies):
    (two_applies.dir / ".memedit" / "HEAD").write_text("e" * 64 + "\n")
    damaged(two_applies, "HEAD")
    assert two_applies("status", ok=False).exit_code == EXIT_DAMAGED


def test_orphan_objects_are_only_a_note(two_applies):
    extra = two_applies.dir / ".memedit" / "objects" / "ab"
    extra.mkdir(exist_ok=True)
    # a well-named, intact object that no record names: what a kill between object and record leaves
    import torch

    from memedit_cli.replay import put_tensors
    from memedit_cli.store.repo import Repo

    put_tensors(Repo.open(two_applies.dir), {"x": torch.ones(2)})
    out = two_applies("fsck")
    assert "named by no record" in out.stdout


def test_changed_base_weights(memedit, tiny, tmp_path):
    import shutil

    model_dir = shutil.copytree(tiny, tmp_path / "model-copy")
    memedit("init", "--model", model_dir, "--device", "cpu")
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    damaged(memedit, "changed since `memedit init`")


def test_unreadable_config_is_reported_by_fsck_and_refused_elsewhere(two_applies):
    (two_applies.dir / ".memedit" / "config.json").write_text("{not json")
    damaged(two_applies, "config.json cannot be read")
    assert two_applies("log", ok=False).exit_code == EXIT_DAMAGED


def test_missing_log(two_applies):
    (two_applies.dir / ".memedit" / "log.jsonl").unlink()
    damaged(two_applies, "log.jsonl is missing")


def test_a_partial_last_line_is_an_append_in_flight_while_a_writer_holds_the_lock(two_applies):
    import fcntl

    from memedit_cli.errors import DamagedRepository
    from memedit_cli.store.repo import Repo

    root = two_applies.dir / ".memedit"
    log = root / "log.jsonl"
    with open(log, "ab") as f:
        f.write(b'{"id": "half a rec')  # what a reader may see while a long record is being appended
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer (this descriptor) holds the lock
        assert len(Repo.open(two_applies.dir).records) == 2
    finally:
        os.close(fd)
    with pytest.raises(DamagedRepository, match="last line is truncated"):
        Repo.open(two_applies.dir).records  # no writer: a crash cut it short
