"""upper.Upper: running only the blocks above L (and, with start=c, only positions
>= c over a cached prefix) gives the full model's hidden states."""

import pytest
import torch

from memedit_cli.lm import models
from memedit_cli.lm.arch import arch_for
from memedit_cli.lm.nethook import capture, edit_output
from memedit_cli.lm.upper import Upper


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("start", [0, 3])
def test_upper_blocks_give_the_full_models_output(tiny_models, arch, start):
    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models[arch])},
                              "dtype": "float32", "device": "cpu"})
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


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rows_cut_at_their_own_position_give_the_full_models_output(tiny_models, arch):
    """rows.left_cut: each row left-padded so that its edited position sits in one
    column c, the prefix cached; one row's cut is at 0 (an all-padding prefix)."""
    from memedit_cli.methods.memit.rows import Rows, left_cut

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models[arch])},
                              "dtype": "float32", "device": "cpu"})
    batch = tok(["The Eiffel Tower is in Paris.", "Danielle Darrieux speaks", "Toko Yasuda plays"],
                return_tensors="pt", padding=True)
    ids, attn = batch["input_ids"], batch["attention_mask"]
    lookup = torch.tensor([4, 0, 2])  # the edited position of each row
    rows = Rows(ids, attn, torch.arange(3), lookup, torch.full_like(ids, -100), torch.zeros(3, dtype=torch.bool))
    cut_ids, cut_attn, pos, _, c = left_cut(rows, torch.arange(3))
    assert c == 4 and cut_attn[1, :c].sum() == 0
    layer = 0
    block = model.get_submodule(arch_for(model.config).layer(layer))
    upper = Upper(model, layer, cut_ids, cut_attn, start=c, position_ids=pos)
    assert upper.start == c
    add = torch.randn(3, model.config.hidden_size)  # one edit vector per row, at its own position
    full_add = torch.zeros(ids.shape[0], ids.shape[1], model.config.hidden_size)
    full_add[torch.arange(3), lookup] = add
    final = arch_for(model.config).final_norm
    with torch.no_grad(), capture(model, outputs=[final]) as seen, edit_output(block, lambda h: h + full_add):
        model(input_ids=ids, attention_mask=attn, use_cache=False)
    want = seen[f"out:{final}"]
    cut_add = torch.zeros_like(upper.h)
    cut_add[:, 0] = add  # column c is column 0 of what a step runs
    for _ in range(2):
        got = upper.final_hidden(upper.h + cut_add)
        assert not got.isnan().any(), "an all-padding prefix must not poison the other rows"
        for r in range(3):
            n = int(attn[r].sum()) - int(lookup[r])  # the row's tokens from its edited position on
            assert torch.allclose(got[r, :n], want[r, lookup[r]:lookup[r] + n], atol=1e-5)
