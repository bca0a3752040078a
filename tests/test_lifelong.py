"""benchmarks/lifelong.py on a tiny model: a run killed mid-stream continues from its last point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import FACTS, write_facts
from tiny import build_tiny

ROOT = Path(__file__).resolve().parents[1]
STREAM = FACTS + [{"id": "colosseum", "prompt": "The Colosseum is in", "subject": "Colosseum", "target_new": "Oslo"}]


def lifelong(*args) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "lifelong.py"), *map(str, args)]


def test_a_killed_run_resumes_from_its_last_point(tmp_path):
    model = build_tiny(tmp_path / "model", "gpt2")
    facts = write_facts(tmp_path / "stream.jsonl", STREAM)
    work = tmp_path / "runs"
    cmd = lifelong("run", "--facts", facts, "--model", model, "--method", "ft", "--T", "2,4", "--chunk", "1",
                   "--work", work, "--threads", "1")
    env = dict(os.environ, MEMEDIT_DEVICE="cpu")
    points = work / "stream-ft" / "points.json"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (points.exists() and json.loads(points.read_text())) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # as a lost session does: no cleanup runs
    out = proc.communicate()[0]
    first = json.loads(points.read_text())
    assert [p["T"] for p in first] == [2], out  # killed after the first point, before the second
    assert subprocess.run(cmd, env=env, capture_output=True, text=True).returncode == 0

    done = json.loads(points.read_text())
    assert [p["T"] for p in done] == [2, 4]
    assert done[0] == first[0]  # the first point is not redone
    for p in done:
        assert set(p["scores"]) >= {"rel", "gen", "loc", "rel_gen", "loc_gen", "spec", "port"}
        assert p["counts"]["rel"] == p["T"] and p["edit_s_per_edit"] > 0 and p["bytes_per_edit"] > 0
        assert p["ask_ms"] > 0 and p["forget_first_s"] > 0
    from memedit_cli.store.repo import Repo

    repo = Repo.open(work / "stream-ft")
    assert list(repo.facts_at(repo.head())) == [f["id"] for f in STREAM]  # each fact once, in stream order
    applied = [f["id"] for r in repo.chain(repo.head()) if r["op"] == "apply" for f in r["facts"]]
    assert applied == [f["id"] for f in STREAM]
    assert repo.segments_at(done[0]["rev"]) == repo.segments_at(repo.head())[:2]  # the point's state is kept

    # a base run and the report: the page, the JSON and no other page touched
    assert subprocess.run(lifelong("run", "--facts", facts, "--model", model, "--method", "base", "--T", "2,4",
                                   "--work", work), env=env, capture_output=True).returncode == 0
    out = tmp_path / "docs" / "lifelong"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lifelong_report import report

    report(work, out)
    page = out.with_suffix(".md").read_text()
    assert "| ft | 4 |" in page and "| base | 2 |" in page
    assert {(p["method"], p["T"]) for p in json.loads(out.with_suffix(".json").read_text())["points"]} == {
        ("ft", 2), ("ft", 4), ("base", 2), ("base", 4)}
