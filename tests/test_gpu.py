"""GPU paths: run only where CUDA is visible (marker `gpu`)."""

from __future__ import annotations

import pytest
import torch
from conftest import FACTS, FAST, Memedit, logits, write_facts

pytestmark = pytest.mark.gpu


def test_edit_on_cuda_matches_cpu(tiny, tmp_path, monkeypatch):
    """The same facts and seed edited on the GPU give the CPU's state up to float error."""
    states = {}
    for device in ("cpu", "cuda"):
        m = Memedit(tmp_path / device)
        m.dir.mkdir()
        m("init", "--model", tiny, "--device", device)
        m("apply", write_facts(tmp_path / "f.jsonl", FACTS), "--seed", 1, *FAST)
        model, tok = m.state()
        assert next(model.parameters()).device.type == device
        states[device] = logits(model, tok).float().cpu()
    assert torch.allclose(states["cpu"], states["cuda"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", ["ft", "memit", "wise", "larimar"])
def test_each_method_on_a_model_spread_over_two_gpus_matches_one_device(tmp_path, monkeypatch, method):
    """device_map="auto" (a model bigger than one GPU, here forced): accelerate puts the blocks on two GPUs,
    and every tensor an edit makes must meet its module on that module's GPU. The edited state equals the
    single-device one, and forget gives a fresh repository without the fact."""
    from test_architectures import METHODS
    from tiny import build_tiny

    from memedit_cli.lm import models

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    model = build_tiny(tmp_path / "model", "llama", num_hidden_layers=6)
    facts = write_facts(tmp_path / "f.jsonl", FACTS[:2])
    states = {}
    for spread in (False, True):
        monkeypatch.setattr(models, "_too_big_for_one_gpu", lambda folder, s=spread: s)
        m = Memedit(tmp_path / f"spread-{spread}")
        m.dir.mkdir()
        m("init", "--model", model, "--device", "cuda")
        m("apply", facts, *METHODS[method], "--batch-size", "1")
        state, tok = m.state()
        used = {p.device for p in state.parameters()}
        assert len(used) == (2 if spread else 1), used
        states[spread] = logits(state, tok).float().cpu()
        if spread:
            m("forget", FACTS[0]["id"])
            fresh = Memedit(tmp_path / "fresh")
            fresh.dir.mkdir()
            fresh("init", "--model", model, "--device", "cuda")
            fresh("apply", write_facts(tmp_path / "g.jsonl", FACTS[1:2]), *METHODS[method], "--batch-size", "1")
            assert torch.allclose(logits(*m.state()).float().cpu(), logits(*fresh.state()).float().cpu(),
                                  rtol=1e-3, atol=1e-3)
    assert torch.allclose(states[False], states[True], rtol=1e-3, atol=1e-3)
