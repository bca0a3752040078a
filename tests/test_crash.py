"""The kill harness: `apply`, `forget`, `checkout` and `export` run in a subprocess and are killed
(SIGKILL) at every file-operation step (MEMEDIT_CRASH_AT=N, memedit_cli/fileio.py) and at random
moments; after each kill `fsck` passes, no record of the log is lost, and the state is exactly the
one before or the one after the command."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import FACTS, FAST, write_facts

RANDOM_KILLS = 3  # per command, at random moments of its run, besides one kill per file-operation step


@pytest.fixture(scope="module")
def start(tmp_path_factory, tiny_models):
    """A repository on the tiny LLaMA with one applied fact, to copy before each run."""
    root = tmp_path_factory.mktemp("crash")
    work = root / "start"
    work.mkdir()
    env = _env(root)
    _memedit(work, env, "init", "--model", tiny_models["llama"], "--device", "cpu")
    _memedit(work, env, "apply", write_facts(root / "a.jsonl", FACTS[:1]), *FAST)
    write_facts(root / "b.jsonl", FACTS[1:2])
    return root, work, env


def _env(root) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MEMEDIT_CRASH_AT"}
    env.update(MEMEDIT_QUIET="1", MEMEDIT_HOME=str(root / "home"))
    return env


def _memedit(work, env, *args, crash_at: int | None = None) -> subprocess.CompletedProcess:
    run_env = dict(env, **({"MEMEDIT_CRASH_AT": str(crash_at)} if crash_at else {}))
    return subprocess.run([sys.executable, "-m", "memedit_cli", "-C", str(work), *map(str, args)], env=run_env,
                          capture_output=True, text=True)


def _snapshot(work) -> dict:
    """HEAD, the log's records and the active facts (what 'the state' is)."""
    from memedit_cli.store.repo import Repo

    repo = Repo.open(work)
    head = repo.head()
    # a record's id covers its time, so a run's "after" is told by its parent and facts, not its id
    parent = repo.record(head)["parent"] if head else None
    return {"head": head, "parent": parent, "log": repo.read_log_bytes(), "facts": sorted(repo.facts_at(head))}


def _check(work, before: dict, after: dict, out=None) -> str:
    """fsck passes, no record lost, and the state is `before` or `after`; returns which."""
    from memedit_cli.commands.fsck import fsck
    from memedit_cli.store.repo import Repo

    problems, _ = fsck(Repo.open(work, check=False))
    assert problems == [], problems
    now = _snapshot(work)
    assert now["log"].startswith(before["log"])  # every record that was there is still there, byte for byte
    if out is not None:  # export: the repository is untouched; the folder is whole or absent
        assert now == before
        if out.exists():
            assert {"config.json", "memedit.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
            return "after"
        return "before"
    if (now["head"], now["facts"]) == (before["head"], before["facts"]):
        return "before"
    if after["head"] is None:  # checkout base: after is the base itself
        assert now["head"] is None and now["facts"] == []
    else:
        assert now["head"] != before["head"] and (now["parent"], now["facts"]) == (after["parent"], after["facts"])
    return "after"


COMMANDS = {  # (the module's folder, this test's folder) -> arguments
    "apply": lambda root, tmp: ["apply", root / "b.jsonl", *FAST],
    "forget": lambda root, tmp: ["forget", "eiffel"],
    "checkout": lambda root, tmp: ["checkout", "base"],
    "export": lambda root, tmp: ["export", "--merged", tmp / "OUT"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_killed_command_leaves_the_state_before_or_after(start, command, tmp_path):
    root, work, env = start
    run = tmp_path / "run"

    def fresh():
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(work, run)
        shutil.rmtree(tmp_path / "OUT", ignore_errors=True)
        return COMMANDS[command](root, tmp_path)

    args = fresh()
    before = _snapshot(run)
    t0 = time.perf_counter()
    done = _memedit(run, env, *args)
    duration = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    after = _snapshot(run)
    out = tmp_path / "OUT" if command == "export" else None
    seen, step = [], 1
    while True:  # one kill at each file-operation step, until the command runs through
        args = fresh()
        result = _memedit(run, env, *args, crash_at=step)
        if result.returncode == 0:
            assert _check(run, before, after, out) == "after"
            break
        assert result.returncode == -signal.SIGKILL, result.stderr
        seen.append(_check(run, before, after, out))
        step += 1
    rng = random.Random(command)
    for _ in range(RANDOM_KILLS):  # and at random moments
        args = fresh()
        proc = subprocess.Popen([sys.executable, "-m", "memedit_cli", "-C", str(run), *map(str, args)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, duration))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(_check(run, before, after, out))
    print(f"\n{command}: {len(seen)} kills ({step - 1} at file-operation steps, {RANDOM_KILLS} random), "
          f"{seen.count('before')} left the state before, {seen.count('after')} after, 0 records lost")
    assert step - 1 >= (1 if command == "export" else 2)  # the command did pass through its steps
    assert "before" in seen
