"""CLI plumbing: fast start without torch, help, the lock, show/log output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import FACTS, FAST, write_facts

from memedit_cli.errors import EXIT_LOCKED


def _imports_torch(args, cwd) -> bool:
    code = ("import sys; from memedit_cli.cli import cli\n"
            "try:\n cli.main(args=sys.argv[1:], prog_name='memedit')\n"
            "except SystemExit as e:\n assert e.code in (0, None), e.code\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_log_status_show_help_do_not_import_torch(repo, tmp_path):
    rev = repo.json("apply", write_facts(tmp_path / "f.jsonl", FACTS[:1]), *FAST)["revision"]
    for args in (["--help"], ["log"], ["log", "--json"], ["status"], ["show", rev[:8]], ["show", "eiffel"],
                 ["apply", "--help"]):
        assert not _imports_torch(["-C", str(repo.dir), *args], tmp_path), args


def test_help_lists_every_command(memedit):
    from memedit_cli.cli import cli

    out = memedit("--help").stdout
    listed = {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(cli.commands) and len(listed) == 15, sorted(listed ^ set(cli.commands))


def test_methods_says_what_each_is_and_where_its_defaults_differ_from_the_paper(memedit):
    from memedit_cli import methods

    out = memedit("methods").stdout.splitlines()
    names = [line for line in out if not line.startswith(" ")]
    assert names == methods.names()
    text = dict(zip(names, [line.strip() for line in out if line.startswith(" ")], strict=True))
    assert "arXiv 2405.14768" in text["wise"] and "differ from the paper" in text["wise"]
    assert "--set router=activation" in text["wise"]  # how to get the paper's settings back
    assert all(f"docs/methods/{n}.md" in text[n] for n in names)
    assert memedit("methods", "--names").stdout.split() == methods.names()


def test_show_record_and_fact(repo, tmp_path):
    rev = repo.json("apply", write_facts(tmp_path / "f.jsonl", FACTS[:2]), *FAST)["revision"]
    rec = repo.json("show", "HEAD")
    assert rec["id"] == rev and len(rec["segments"]) == 1
    assert repo.json("show", "darrieux")["fact"]["target_new"] == "English"
    assert repo.json("show", "HEAD")["id"] == rev
    text = repo("show", rev[:10]).stdout
    assert rev in text and "darrieux" in text


def test_a_held_lock_makes_a_writer_wait_then_fail(repo, tmp_path, monkeypatch):
    from memedit_cli.store.repo import Repo

    monkeypatch.setenv("MEMEDIT_LOCK_TIMEOUT", "0.5")
    facts = write_facts(tmp_path / "f.jsonl", FACTS[:1])
    with Repo.open(repo.dir).lock("test"):
        before = repo.tree()
        result = repo("apply", facts, *FAST, ok=False)
    assert result.exit_code == EXIT_LOCKED
    assert "locked by pid" in result.stderr and "MEMEDIT_LOCK_TIMEOUT" in result.stderr
    assert repo.tree() == before
    repo("apply", facts, *FAST)  # released with the block


def test_concurrent_applies_both_land(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMEDIT_LOCK_TIMEOUT", "120")
    files = [write_facts(tmp_path / f"{f['id']}.jsonl", [f]) for f in FACTS[:2]]
    procs = [subprocess.Popen([sys.executable, "-m", "memedit_cli", "-q", "-C", str(repo.dir), "apply", str(f), *FAST],
                              stderr=subprocess.PIPE, text=True) for f in files]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    log = repo.json("log")
    assert sorted(f["id"] for r in log for f in r["facts"]) == ["darrieux", "eiffel"]
    assert log[0]["parent"] == log[1]["id"] and log[1]["parent"] is None
    assert repo("fsck").exit_code == 0


def test_memedit_dir_env_selects_the_repository(repo, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from memedit_cli.cli import cli

    monkeypatch.setenv("MEMEDIT_DIR", str(repo.dir))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0 and str(repo.dir) in result.stdout


def test_hparams_round_trip_and_set_parsing():
    from memedit_cli import hparams
    from memedit_cli.methods.ft import FTHparams

    hp = hparams.resolve(FTHparams(layer=3), hparams.parse_set(["lr=0.01", "steps=7", "layer=null"]))
    assert hp == FTHparams(layer=None, lr=0.01, steps=7)
    data = hparams.to_json(hp)
    assert list(data) == sorted(data)
    assert hparams.from_json(FTHparams, data) == hp


def test_the_default_method_is_the_one_the_lifelong_benchmark_ranks_first():
    # memedit_cli.methods.DEFAULT is chosen from docs/lifelong.json (benchmarks/lifelong_report.py ranks)
    from memedit_cli import methods

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    from lifelong_report import ranking

    points = json.loads((root / "docs" / "lifelong.json").read_text())["points"]
    ranked = ranking(points)
    assert {m for m, _ in ranked} == set(methods.names())  # every method measured at T = 100 on both datasets
    assert ranked[0][0] == methods.DEFAULT


def test_apply_without_method_uses_the_default(repo, tmp_path):
    from memedit_cli import methods

    rev = repo.json("apply", write_facts(tmp_path / "f.jsonl", FACTS[:1]))["revision"]
    assert repo.json("show", rev)["method"] == methods.DEFAULT
