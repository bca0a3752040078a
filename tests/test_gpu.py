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
