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


def test_every_solve_after_the_first_aims_at_the_first_ones_z(memit_eval, monkeypatch):
    """--solves 3: each batch computed three times; its first compute makes z (none given), the two after
    it re-solve toward that z; the next batch makes its own (no --z-dir: z on the state, as apply does)."""
    import argparse

    made = {}  # segment -> the z its compute made

    class Build:
        repo = None

        def __init__(self):
            self.calls = []

        def compute(self, method, hp, batch, seed, reuse):
            self.calls.append(([f.id for f in batch], None if reuse is None else reuse["tensors"]["z"]))
            seg = {"n": len(self.calls)}
            made["z made"] = made.get("z made", 0) + (reuse is None)  # each made z a new value: 1, 2, ...
            made[seg["n"]] = torch.full((len(batch), 2), float(made["z made"])) if reuse is None else None
            return seg

    monkeypatch.setattr(memit_eval, "load_segment_tensors", lambda repo, seg: {"z": made[seg["n"]]})
    a, b, c = (argparse.Namespace(id=x) for x in "abc")  # a fact's id is all the loop reads of it
    build, batches, zs = Build(), [[a, b], [c]], {}
    args = argparse.Namespace(solves=3, reuse_z=False, z_dir=None)
    segs = memit_eval.edit_batches(build, None, None, batches, zs, args)
    assert len(segs) == 6 and [c[0] for c in build.calls] == [["a", "b"]] * 3 + [["c"]] * 3
    given = [c[1] for c in build.calls]
    assert given[0] is None and given[1] is given[2] is zs[0] and torch.equal(zs[0], torch.full((2, 2), 1.0))
    assert given[3] is None and given[4] is given[5] is zs[1] and torch.equal(zs[1], torch.full((1, 2), 2.0))
    first = dict(zs)
    build = Build()  # a second variant over the same zs: the later batch computes z on its own state again,
    memit_eval.edit_batches(build, None, None, batches, zs, args)  # and its further solves aim at that z
    given = [c[1] for c in build.calls]
    assert given[3] is None and given[4] is given[5] and torch.equal(given[4], torch.full((1, 2), 4.0))
    assert zs[1] is first[1]  # what a later variant with --reuse-z reads stays the first variant's z
    args.solves = 1  # the default: one compute per batch, z made by each (the z saved above are not read)
    build, zs = Build(), {}
    assert len(memit_eval.edit_batches(build, None, None, batches, zs, args)) == 2
    assert [c[1] for c in build.calls] == [None, None]


@pytest.mark.parametrize("argv, says", [
    (["zs", "--z-dir", "Z", "--z-chunk", "100"], "--z-chunk is read only by quality, not by zs"),
    (["quality", "--z-dir", "Z", "--z-chunk", "-5"], "--z-chunk must be a number of facts >= 1"),
    (["quality", "--solves", "0"], "--solves must be >= 1"),
    (["zs", "--z-dir", "Z", "--solves", "2"], "--solves is read only by quality, not by zs"),
])
def test_quality_options_are_refused_where_they_mean_nothing(argv, says):
    """A one-line argparse error before any model is loaded."""
    import subprocess

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memit_eval.py"), *argv],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and says in out.stderr
