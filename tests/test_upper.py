"""upper.Upper: running only the blocks above L (and, with start=c, only positions
>= c over a cached prefix) gives the full model's hidden states."""

import pytest
import torch

from memedit_cli import models
from memedit_cli.arch import arch_for
from memedit_cli.nethook import capture, edit_output
from memedit_cli.upper import Upper


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("start", [0, 3])
def test_upper_blocks_give_the_full_models_output(tiny_models, arch, start):
    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models[arch])}, "dtype": "float32", "device": "cpu"})
    batch = tok(["The Eiffel Tower is in Paris.", "Danielle Darrieux speaks"], return_tensors="pt", padding=True)
    ids, attn = batch["input_ids"], batch["attention_mask"]  # right-padded; the shorter row has >= 3 real tokens
    assert tok.padding_side == "right" and attn.sum(1).min() > start
    layer = 0
    block = model.get_submodule(arch_for(model.config).layer(layer))
    upper = Upper(model, layer, ids, attn, start=start)
    assert upper.start == start, "the tiny models' caches must take the prefix path"
    add = torch.randn(ids.shape[0], ids.shape[1], model.config.hidden_size)
    add[:, :start] = 0  # an edit at positions >= start only
    final = arch_for(model.config).final_norm
    with torch.no_grad(), capture(model, outputs=[final]) as seen, edit_output(block, lambda h: h + add):
        model(input_ids=ids, attention_mask=attn, use_cache=False)
    want = seen[f"out:{final}"][:, start:]
    for _ in range(2):  # the cached prefix must come back unchanged after a step
        got = upper.final_hidden(upper.h + add[:, start:])
        real = attn[:, start:].bool()
        assert torch.allclose(got[real], want[real], atol=1e-5), "padding aside, the outputs must agree"
