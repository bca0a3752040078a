"""The on-disk format (formats/): the schemas, the golden repository, and live records.

formats/golden/dot-memedit is a repository written by the real CLI
(formats/make_golden.py). If a change to memedit makes these tests fail, the
format changed: update formats/README.md and the schemas on purpose (and the
format version if old repositories no longer read the same).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from memedit_cli.cli import cli
from memedit_cli.facts import ID_PATTERN, parse_facts
from memedit_cli.store.jsonutil import canonical
from memedit_cli.store.log import make_record
from memedit_cli.store.repo import Repo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import build_tiny  # noqa: E402

FORMATS = Path(__file__).resolve().parents[1] / "formats"
GOLDEN = FORMATS / "golden"
GOLDEN_REPO = GOLDEN / "dot-memedit"
HEX64 = set("0123456789abcdef")


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((FORMATS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


RECORD = validator("record.schema.json")
FACT = validator("fact.schema.json")


def errors(v: jsonschema.Draft202012Validator, instance) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(instance)]


def golden_records() -> list[dict]:
    lines = GOLDEN_REPO.joinpath("log.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"", "log.jsonl must end with a newline"
    return [json.loads(line) for line in lines[:-1]]


def run(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def golden_copy(tmp_path) -> Path:
    """The golden repository as `tmp_path/.memedit`; returns tmp_path."""
    shutil.copytree(GOLDEN_REPO, tmp_path / ".memedit")
    return tmp_path


# -- (a) the golden files validate ----------------------------------------------------


def test_golden_has_both_ops():
    assert [r["op"] for r in golden_records()] == ["apply", "forget"]


@pytest.mark.parametrize("n", range(2))
def test_golden_record_validates(n):
    rec = golden_records()[n]
    assert errors(RECORD, rec) == []


def test_golden_facts_validate_and_parse():
    raw = GOLDEN.joinpath("facts.jsonl").read_bytes()
    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    assert lines
    for item in lines:
        assert errors(FACT, item) == []
    # and memedit reads them into exactly the facts the apply record stored
    stored = golden_records()[0]["facts"]
    assert [f.to_json() for f in parse_facts(raw, "facts.jsonl")] == stored


def _rules(schema):
    """A schema without its annotations (description, $comment)."""
    if isinstance(schema, dict):
        return {k: _rules(v) for k, v in schema.items() if k not in ("description", "$comment")}
    return [_rules(v) for v in schema] if isinstance(schema, list) else schema


def test_fact_id_pattern_is_the_parsers():
    fact = json.loads(FORMATS.joinpath("fact.schema.json").read_text())["$defs"]
    record = json.loads(FORMATS.joinpath("record.schema.json").read_text())["$defs"]
    assert fact["fact_id"]["pattern"] == ID_PATTERN.pattern
    # the two schemas spell fact ids and texts the same way
    assert _rules(record["fact_id"]) == _rules(fact["fact_id"])
    assert _rules(record["text"]) == _rules(fact["text"])


# -- (b) the golden repository reads ------------------------------------------------------


def test_golden_passes_fsck(golden_copy):
    result = run("-C", str(golden_copy), "fsck")
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "ok"
    assert lines[:-1] == [line for line in lines[:-1] if "base model folder" in line]  # the model is a placeholder


def test_golden_log_json(golden_copy):
    recs = json.loads(run("-C", str(golden_copy), "log", "--json").stdout)
    assert recs == golden_records()[::-1]


def test_golden_status_json(golden_copy):
    info = json.loads(run("-C", str(golden_copy), "status", "--json").stdout)
    apply_rec, forget_rec = golden_records()
    assert info["head"] == forget_rec["id"] == GOLDEN_REPO.joinpath("HEAD").read_text().strip()
    assert info["records"] == 2 and info["head_is_newest"]
    assert info["facts"] == [f["id"] for f in apply_rec["facts"] if f["id"] not in forget_rec["forgot"]]
    assert info["by_method"] == {"ft": len(info["facts"])}


def test_golden_state_and_objects():
    """segments_at follows keep + rebuilt; objects are named by the sha256 of their bytes."""
    from safetensors.torch import load

    repo = Repo(GOLDEN_REPO)
    apply_rec, forget_rec = golden_records()
    assert repo.segments_at(apply_rec["id"]) == apply_rec["segments"]
    assert repo.segments_at(forget_rec["id"]) == apply_rec["segments"][: forget_rec["keep"]] + forget_rec["rebuilt"]
    names = {h for rec in (apply_rec, forget_rec) for seg in rec.get("segments", []) + rec.get("rebuilt", [])
             for h in seg["objects"].values()}
    on_disk = {p.parent.name + p.name.removesuffix(".safetensors") for p in (GOLDEN_REPO / "objects").glob("*/*")}
    assert names == on_disk
    for h in names:
        data = (GOLDEN_REPO / "objects" / h[:2] / f"{h[2:]}.safetensors").read_bytes()
        assert hashlib.sha256(data).hexdigest() == h
        tensors = load(data)
        assert list(tensors) == ["model.layers.1.mlp.down_proj.weight"]  # ft: ΔW of the edited layer


def test_golden_reflog():
    entries = [json.loads(line) for line in GOLDEN_REPO.joinpath("reflog.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in golden_records()]
    assert [(e["from"], e["to"]) for e in entries] == [("base", ids[0]), (ids[0], ids[1])]
    assert all(set(e) == {"time", "from", "to", "reason"} for e in entries)


# -- (c) ids recompute from content -----------------------------------------------------------


@pytest.mark.parametrize("n", range(2))
def test_golden_record_id_recomputes(n):
    line = GOLDEN_REPO.joinpath("log.jsonl").read_bytes().split(b"\n")[n]
    rec = json.loads(line)
    assert make_record(rec)["id"] == rec["id"]
    # the spec in formats/README.md, independently of memedit's code
    body = {k: v for k, v in rec.items() if k != "id"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert hashlib.sha256(blob).hexdigest() == rec["id"]
    # each line is the canonical JSON of the whole record
    assert line == canonical(rec)


def test_golden_parents_chain():
    apply_rec, forget_rec = golden_records()
    assert apply_rec["parent"] is None and forget_rec["parent"] == apply_rec["id"]


# -- (d) live records validate ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_live_records_validate(tmp_path, monkeypatch, arch):
    monkeypatch.setenv("MEMEDIT_DEVICE", "cpu")
    monkeypatch.delenv("MEMEDIT_DIR", raising=False)
    model = build_tiny(tmp_path / "model", arch)
    work = tmp_path / "work"
    work.mkdir()
    facts = tmp_path / "facts.jsonl"
    shutil.copyfile(GOLDEN / "facts.jsonl", facts)
    run("-q", "-C", str(work), "init", "--model", str(model))
    run("-q", "-C", str(work), "apply", str(facts), "--method", "ft", "--batch-size", "1", "--set", "steps=2",
        "--set", "lr=0.05", "--set", "norm_constraint=0.05")
    run("-q", "-C", str(work), "forget", "eiffel")
    recs = Repo(work / ".memedit").records
    assert [r["op"] for r in recs] == ["apply", "forget"]
    for rec in recs:
        assert errors(RECORD, rec) == []
    assert run("-C", str(work), "fsck").stdout.strip() == "ok"


# -- (e) the schemas reject bad records -------------------------------------------------------


def test_rejects_record_without_id():
    rec = dict(golden_records()[0])
    del rec["id"]
    assert errors(RECORD, rec)


@pytest.mark.parametrize("bad", ["not-hex", "A" * 64, "0" * 63, "0" * 64 + "\n", 42])
def test_rejects_object_name_not_hex(bad):
    rec = json.loads(json.dumps(golden_records()[0]))
    rec["segments"][0]["objects"]["tensors"] = bad
    assert errors(RECORD, rec)


def test_rejects_forget_object_name_not_hex():
    rec = json.loads(json.dumps(golden_records()[1]))
    rec["rebuilt"][0]["objects"]["tensors"] = "xyz"
    assert errors(RECORD, rec)


@pytest.mark.parametrize("change", [
    {"op": "merge"},
    {"parent": "HEAD"},
    {"unknown_field": 1},
    {"facts": [{"id": "x", "prompt": "p", "subject": "s"}]},  # no target_new
    {"facts": [{"id": "a..b", "prompt": "p", "subject": "s", "target_new": "t"}]},
    {"facts": [{"id": "x", "prompt": "p", "subject": "s", "target_new": "t", "ground_truth": None}]},
])
def test_rejects_bad_apply_fields(change):
    rec = {**golden_records()[0], **change}
    assert errors(RECORD, rec)


def test_forget_needs_keep_and_rebuilt():
    rec = dict(golden_records()[1])
    assert errors(RECORD, {k: v for k, v in rec.items() if k != "keep"})
    assert errors(RECORD, {k: v for k, v in rec.items() if k != "rebuilt"})
    assert errors(RECORD, {**rec, "segments": rec["rebuilt"]})


@pytest.mark.parametrize("item", [
    {"prompt": "p", "subject": "s"},
    {"prompt": "", "subject": "s", "target_new": "t"},
    {"prompt": "   ", "subject": "s", "target_new": "t"},
    {"prompt": "p", "subject": "s", "target_new": 3},
    {"prompt": "p", "subject": "s", "target_new": "t", "id": "../x"},
    {"prompt": "p", "subject": "s", "target_new": "t", "id": "a..b"},
    {"prompt": "p", "subject": "s", "target_new": "t", "id": "x\n"},
    {"prompt": "p", "subject": "s", "target_new": "t", "id": "x" * 65},
    {"prompt": "p", "subject": "s", "target_new": "t", "ground_truth": ""},
    {"prompt": "p", "subject": "s", "target_new": "t", "locality_ground_truth": [3]},
    {"prompt": "a\x00b", "subject": "s", "target_new": "t"},
    {"prompt": "p", "subject": "s", "target_new": "t", "portability": [{"prompt": "q"}]},
    {"prompt": "p", "subject": "s", "target_new": "t", "subject_locality": [{"prompt": "", "ground_truth": "a"}]},
    {"prompt": "p", "subject": "s", "target_new": "t", "rephrase_prompt": ["r", 3]},
    ["not", "an", "object"],
])
def test_fact_schema_rejects(item):
    assert errors(FACT, item)
    with pytest.raises(Exception):  # and memedit's parser agrees
        parse_facts((json.dumps(item) + "\n").encode(), "f.jsonl")


@pytest.mark.parametrize("item", [
    {"prompt": "p", "subject": "s", "target_new": "t"},
    {"prompt": "p", "subject": "s", "target_new": "t", "id": "case_1.v2", "ground_truth": None},
    {"prompt": "p", "subject": "s", "target_new": "t", "locality_prompt": "q", "locality_ground_truth": ["a", "b"]},
    {"prompt": "p", "subject": "s", "target_new": "t", "locality_ground_truth": []},
    {"prompt": "p", "subject": "s", "target_new": "t", "comment": "extra keys are allowed"},
    {"prompt": "p", "subject": "s", "target_new": "t", "rephrase_prompt": ["r1", "r2"],
     "locality_prompt": ["q1", "q2"], "locality_ground_truth": ["a", ["b", "b2"]],
     "subject_locality": [{"prompt": "s is", "ground_truth": "x"}],
     "portability": {"Reasoning": [{"prompt": "r", "ground_truth": [["y", "y2"]]}]},
     "locality": {"Relation_Specificity": [{"prompt": "s was", "ground_truth": ["z"]}],
                  "Forgetfulness": [{"prompt": ["f1", "f2"], "ground_truth": ["u", "v"]}]}},
])
def test_fact_schema_accepts(item):
    assert errors(FACT, item) == []
    fact = parse_facts((json.dumps(item) + "\n").encode(), "f.jsonl")[0]
    # what the log stores of it is a valid stored fact
    stored = jsonschema.Draft202012Validator({"$ref": "#/$defs/stored_fact", "$defs": RECORD.schema["$defs"]})
    assert errors(stored, fact.to_json()) == []
