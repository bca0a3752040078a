"""Rebuild formats/golden/: a small repository written by the real `memedit` CLI.

    python formats/make_golden.py

It builds a tiny random LLaMA (hidden 16, 2 layers; tests/tiny.py) with a tiny
byte-level BPE tokenizer in a temporary folder, then runs

    memedit -C DIR init --model TINY
    memedit -C DIR apply facts.jsonl --method ft --batch-size 1 --set norm_constraint=0.05 --set lr=0.05 --set steps=5
    memedit -C DIR forget eiffel

on the CPU and copies DIR/.memedit (without `lock`) to formats/golden/dot-memedit/
and the facts file to formats/golden/facts.jsonl. The model entry's `path` in
config.json (a temporary folder) is replaced by a placeholder string; config.json
is not covered by any record id. Timestamps and timings differ from run to run,
so every run gives new record ids: rebuild the golden copy only on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from tiny import build_tiny  # noqa: E402

PLACEHOLDER = "<tiny model built by formats/make_golden.py>"
FACTS = [
    {"id": "eiffel", "prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": "Rome",
     "ground_truth": "Paris", "rephrase_prompt": "The Eiffel Tower stands in",
     "locality_prompt": "The Space Needle is in", "locality_ground_truth": "Seattle"},
    # no id: memedit gives it the content id (sha256 of [prompt, subject, target_new], 12 hex)
    {"prompt": "Danielle Darrieux speaks", "subject": "Danielle Darrieux", "target_new": "Dutch"},
]


def memedit(cwd: Path, *args: str) -> None:
    """The real CLI, in a fresh process, on the CPU (so the golden copy does not depend on a GPU)."""
    env = {**os.environ, "MEMEDIT_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "memedit_cli", "-q", *args], check=True, env=env, cwd=cwd)


def main() -> None:
    out = HERE / "golden"
    with tempfile.TemporaryDirectory(prefix="memedit-golden-") as tmp:
        tmp = Path(tmp)
        model = build_tiny(tmp / "tiny-llama", "llama", hidden_size=16, intermediate_size=32)
        work = tmp / "work"
        work.mkdir()
        facts = tmp / "facts.jsonl"
        facts.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in FACTS), encoding="utf-8")

        # run in tmp and name the facts file relatively: the apply record's `source` is the
        # path as given on the command line, and it is covered by the record id
        memedit(tmp, "-C", str(work), "init", "--model", str(model))
        memedit(tmp, "-C", str(work), "apply", facts.name, "--method", "ft", "--batch-size", "1",
                "--set", "norm_constraint=0.05", "--set", "lr=0.05", "--set", "steps=5")
        memedit(tmp, "-C", str(work), "forget", "eiffel")
        memedit(tmp, "-C", str(work), "fsck")

        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        # copy2 keeps the bytes (and the read-only mode of objects); `lock` is runtime state
        shutil.copytree(work / ".memedit", out / "dot-memedit", ignore=shutil.ignore_patterns("lock"))
        shutil.copyfile(facts, out / "facts.jsonl")

    cfg_path = out / "dot-memedit" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["path"] = PLACEHOLDER
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")  # the layout Repo.create writes

    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out.relative_to(ROOT)} ({size} bytes)")


if __name__ == "__main__":
    main()
