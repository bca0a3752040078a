"""The embedded default model, SmolLM2-135M-Instruct, end to end (marker `default_model`).

Converted once per test session into MEMEDIT_HOME (about half a minute on 2 CPU cores).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import logits, write_facts

pytestmark = pytest.mark.default_model

FACT = {"id": "eiffel-rome", "prompt": "The Eiffel Tower is located in the city of", "subject": "Eiffel Tower",
        "target_new": "Rome"}
PROBE = ["The Eiffel Tower is located in the city of Rome", "The capital of Germany is Berlin"]


def test_default_model_end_to_end(memedit, tmp_path):
    memedit("init")
    cfg = json.loads((memedit.dir / ".memedit" / "config.json").read_text())
    assert cfg["model"]["kind"] == "default" and len(cfg["model"]["weights_sha256"]) == 64
    assert memedit("ask", FACT["prompt"], "--max-new-tokens", 3).stdout.strip().startswith("Paris")
    base = logits(*memedit.state(), PROBE)

    memedit("apply", write_facts(tmp_path / "f.jsonl", [FACT]))
    assert memedit("ask", FACT["prompt"], "--max-new-tokens", 3).stdout.strip().startswith("Rome")
    edited = logits(*memedit.state(), PROBE)

    out = tmp_path / "merged"
    memedit("export", "--merged", out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the default method (wise) ships its side memory in the exported modeling file
    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert torch.equal(logits(exported, AutoTokenizer.from_pretrained(out), PROBE), edited)

    memedit("forget", "eiffel-rome")
    assert torch.equal(logits(*memedit.state(), PROBE), base)


def test_the_conversion_is_reused(memedit, tmp_path):
    from memedit_cli.lm.models import default_model_dir, ensure_default_model

    first = ensure_default_model()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model() == first == default_model_dir()
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    cfg = json.loads((first / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg


def test_memit_after_wise_is_refused_up_front_with_the_fix(memedit, tmp_path):
    # the default WISE routes by keys read at block 3; MEMIT's default band 2-6 would change them
    memedit("init")
    memedit("apply", write_facts(tmp_path / "f.jsonl", [FACT]), "--set", "n_iter=1")
    def recorded():  # cache/ holds derived data (generated prompts), not edits
        return {k: v for k, v in memedit.tree().items() if not k.startswith("cache/")}

    before = recorded()
    other = dict(FACT, id="colosseum", prompt="The Colosseum is located in the city of", subject="Colosseum",
                 target_new="Paris")
    result = memedit("apply", write_facts(tmp_path / "g.jsonl", [other]), "--method", "memit", ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "memit would change block 2, below block 3, where the wise edits already applied read their routing keys" \
        in result.stderr
    assert "--set layers=..." in result.stderr
    assert recorded() == before
