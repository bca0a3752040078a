"""benchmarks/memit_eval.py's saved z: read back instead of recomputed, and named by what z depends on."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from conftest import FACTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def memit_eval():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import memit_eval

    return memit_eval


def test_a_saved_z_is_read_back_and_a_changed_setting_computes_anew(memit_eval, tiny_models, tmp_path,
                                                                    monkeypatch):
    from memedit_cli.facts import Fact
    from memedit_cli.lm import models
    from memedit_cli.methods.memit import MEMIT

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models["llama"])},
                              "dtype": "float32", "device": "cpu"})
    hp = dataclasses.replace(MEMIT().default_hparams(model), v_num_grad_steps=2, context_templates=("{}",))
    facts = [Fact(**f) for f in FACTS[:2]]
    z = memit_eval.base_z(model, tok, facts, hp, tmp_path)
    assert z.shape == (2, model.config.hidden_size) and len(list(tmp_path.glob("z-*.safetensors"))) == 1

    calls = []
    real = memit_eval.compute_z
    monkeypatch.setattr(memit_eval, "compute_z", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(memit_eval.base_z(model, tok, facts, hp, tmp_path), z) and not calls  # read, not computed
    # the solve's settings do not name z; the steps, the facts and the band's top block do
    memit_eval.base_z(model, tok, facts, dataclasses.replace(hp, mom2_update_weight=5.0, update="sequential"),
                      tmp_path)
    assert not calls
    memit_eval.base_z(model, tok, facts, dataclasses.replace(hp, v_num_grad_steps=3), tmp_path)
    memit_eval.base_z(model, tok, facts[:1], hp, tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("z-*.safetensors"))) == 3
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed


def test_one_batch_reads_the_z_of_its_chunks(memit_eval, tiny_models, tmp_path, monkeypatch):
    """--z-chunk: a batch of 3 solved from the files `zs --batch 2` saved, in fact order, nothing recomputed."""
    import argparse

    from memedit_cli.facts import Fact
    from memedit_cli.lm import models
    from memedit_cli.methods.memit import MEMIT

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models["llama"])},
                              "dtype": "float32", "device": "cpu"})
    hp = dataclasses.replace(MEMIT().default_hparams(model), v_num_grad_steps=2, context_templates=("{}",))
    facts = [Fact(**f) for f in FACTS[:3]]
    halves = [memit_eval.base_z(model, tok, facts[i:i + 2], hp, tmp_path) for i in (0, 2)]  # 2 facts, then 1
    calls = []
    real = memit_eval.compute_z
    monkeypatch.setattr(memit_eval, "compute_z", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    args = argparse.Namespace(z_chunk=2, z_dir=tmp_path)
    z = memit_eval._chunked_z(model, tok, facts, hp, args)
    assert torch.equal(z, torch.cat(halves)) and not calls  # read back, in fact order
    args.z_chunk = 0  # the batch is its own file: computed anew, all three facts, under its own name
    assert memit_eval._chunked_z(model, tok, facts, hp, args).shape == z.shape == (3, model.config.hidden_size)
    assert calls == [3] and len(list(tmp_path.glob("z-*.safetensors"))) == 3


@pytest.mark.parametrize("argv, says", [
    (["zs", "--z-dir", "Z", "--z-chunk", "100"], "--z-chunk is read only by quality, not by zs"),
    (["quality", "--z-dir", "Z", "--z-chunk", "-5"], "--z-chunk must be a number of facts >= 1"),
])
def test_z_chunk_is_refused_where_it_means_nothing(argv, says):
    """A one-line argparse error before any model is loaded."""
    import subprocess

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memit_eval.py"), *argv],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and says in out.stderr
